"""LesionMILLoss: a dense segmentation loss plus a multiple-instance (MIL) term on the pooled lesion map.

A lesion-map classifier (:class:`medmamba.networks.LesionMapClassifier`) scores a slice by pooling
its per-pixel lesion log-odds (max pooling: the slice is as lesioned as its most lesioned pixel) and
a volume by its highest slice scores. A dense loss such as Dice + cross-entropy averages over the
~16 000 pixels of a slice, so a handful of confident false-positive pixels in a lesion-free slice
cost it almost nothing, yet they set that slice's score, and the volume's. The multiple-instance
term scores the pooled value itself against the slice label (binary cross-entropy), which is the
loss of weakly supervised multiple-instance learning: in a lesion-free slice its gradient falls
on the highest-scoring pixels (hard negatives), in a lesioned slice on the best lesion pixel.

``loss = base_loss(logits, target) + weight · BCE(pool(lesion log-odds), slice label)``, where the
slice label is 1 with at least ``min_voxels`` lesion pixels in ``target``, 0 with none, and slices in
between are left out of the MIL term (as in the slice labels of the default data set).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from medmamba.networks.nets.lesion_map import check_pooling, lesion_log_odds_map, pool_lesion_map

__all__ = ["LesionMILLoss"]


class LesionMILLoss(nn.Module):
    """Dense loss plus a multiple-instance slice loss on the lesion channel.

    Args:
        base_loss: the dense loss, called ``base_loss(logits, target)``; default MONAI
            ``DiceCELoss(to_onehot_y=True, softmax=True)``.
        lesion_class: index of the lesion class in the logits and in ``target``.
        weight: weight of the multiple-instance term (``0`` gives the base loss alone).
        pooling: ``"max"``, ``"topk"`` or ``"mean"`` pooling of the lesion log-odds, as in
            :class:`medmamba.networks.LesionMapClassifier` (use the classifier's own pooling).
        top_k: pixels averaged by ``"topk"``.
        min_voxels: lesion pixels that make a slice positive; slices with ``1 .. min_voxels - 1``
            lesion pixels are ambiguous and left out of the term.

    Call ``loss(logits, target)`` with logits ``(B, C, H, W)`` (or a deep-supervision list, whose
    first element is used for the multiple-instance term and which is given whole to the base loss)
    and class-index labels ``(B, 1, H, W)``. :meth:`compute` also returns the two terms.

    Raises:
        ValueError: ``weight < 0``, unknown ``pooling``, ``top_k`` or ``min_voxels`` below 1, or labels
            that are not class indices ``(B, 1, ...)``.
    """

    def __init__(
        self,
        base_loss: nn.Module | None = None,
        lesion_class: int = -1,
        weight: float = 1.0,
        pooling: str = "max",
        top_k: int = 16,
        min_voxels: int = 1,
    ) -> None:
        super().__init__()
        if float(weight) < 0:
            raise ValueError(f"weight must be >= 0, got {weight}.")
        check_pooling(pooling, top_k)
        if isinstance(min_voxels, bool) or not isinstance(min_voxels, int) or min_voxels < 1:
            raise ValueError(f"min_voxels={min_voxels!r} is not valid; expected a positive integer.")
        if base_loss is None:
            from monai.losses import DiceCELoss

            base_loss = DiceCELoss(to_onehot_y=True, softmax=True)
        self.base_loss = base_loss
        self.lesion_class = int(lesion_class)
        self.weight = float(weight)
        self.pooling = pooling
        self.top_k = top_k
        self.min_voxels = min_voxels

    def slice_labels(self, target: torch.Tensor, channels: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-slice labels ``(B,)`` (float 0/1) and the mask of slices that are not ambiguous."""
        if target.ndim < 3 or target.shape[1] != 1:
            raise ValueError(f"target must hold class indices of shape (B, 1, ...), got {tuple(target.shape)}.")
        lesion = self.lesion_class % channels
        counts = (target[:, 0].round().long() == lesion).flatten(1).sum(dim=1)
        positive = counts >= self.min_voxels
        return positive.float(), positive | (counts == 0)

    def compute(self, output: torch.Tensor | Sequence[torch.Tensor], target: torch.Tensor) -> dict[str, torch.Tensor]:
        """Return ``{"loss": total, "loss_dense": base, "loss_mil": unweighted multiple-instance term}``."""
        logits = output[0] if isinstance(output, (list, tuple)) else output
        labels, keep = self.slice_labels(target, logits.shape[1])
        base = self.base_loss(output, target).mean()
        if self.weight == 0:
            zero = torch.zeros((), dtype=base.dtype, device=base.device)
            return {"loss": base, "loss_dense": base, "loss_mil": zero}
        scores = pool_lesion_map(lesion_log_odds_map(logits.float(), self.lesion_class), self.pooling, self.top_k)
        if bool(keep.any()):
            mil = F.binary_cross_entropy_with_logits(scores[keep], labels[keep].to(scores.dtype))
        else:
            mil = scores.sum() * 0.0
        return {"loss": base + self.weight * mil, "loss_dense": base, "loss_mil": mil}

    def forward(self, output: torch.Tensor | Sequence[torch.Tensor], target: torch.Tensor) -> torch.Tensor:
        return self.compute(output, target)["loss"]
