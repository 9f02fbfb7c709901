"""Knowledge-distillation losses of the MobileMamba training recipe (the "†" models).

The paper's student carries two classification heads: the *class head* ``head`` learns from the
labels and the *distillation head* ``head_dist`` learns from a stronger teacher's logits; in
training mode ``MobileMamba(distillation=True)`` returns the pair ``(head(x), head_dist(x))``, in
eval mode their mean. The loss is

.. math::

    \\mathcal{L} = \\mathrm{CE}(z_{cls}, y) + \\lambda \\cdot \\mathrm{KD}(z_{dist}, z_{teacher})

with, for *soft* distillation, :math:`\\mathrm{KD} = \\tau^2 \\cdot \\mathrm{KL}(
\\mathrm{softmax}(z_t/\\tau) \\,\\|\\, \\mathrm{softmax}(z_s/\\tau))` (summed over classes, averaged over
the batch, as the reference ``CLSKDLoss``) and, for *hard* distillation, the cross-entropy of the
student against the teacher's arg-max. The paper uses soft, :math:`\\tau = 1`, :math:`\\lambda = 5`.
A student with a single head distils through it.

For segmentation, :class:`SegmentationDistillationLoss` adds a pixel-wise KL term (optionally
restricted to a region) to a base loss, MONAI's ``DiceCELoss`` by default.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "SoftTargetCrossEntropy",
    "DistillationLoss",
    "SegmentationDistillationLoss",
    "soft_distillation",
    "hard_distillation",
    "pixelwise_distillation",
    "split_student_output",
]

_KINDS = ("soft", "hard")
_KL_REDUCTIONS = ("batchmean", "numel")


def split_student_output(output: torch.Tensor | Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Return ``(class_logits, distillation_logits)`` of a student's training-mode output.

    Args:
        output: a tensor (single-head student: both heads are that tensor) or a pair
            ``(cls_logits, dist_logits)`` as returned by ``MobileMamba(distillation=True)`` in training
            mode. A longer sequence (e.g. deep supervision) uses its first element as both heads.

    Raises:
        TypeError: when ``output`` is neither a tensor nor a non-empty sequence of tensors.
    """
    if isinstance(output, torch.Tensor):
        return output, output
    if isinstance(output, Sequence) and not isinstance(output, str) and len(output) > 0:
        if len(output) == 2 and all(isinstance(o, torch.Tensor) for o in output):
            return output[0], output[1]
        if isinstance(output[0], torch.Tensor):
            return output[0], output[0]
    raise TypeError(
        f"student output must be a tensor or a (cls_logits, dist_logits) pair, got {type(output).__name__}."
    )


def _check_positive(name: str, value: float) -> float:
    value = float(value)
    if not value > 0:
        raise ValueError(f"{name} must be > 0, got {value}.")
    return value


def soft_distillation(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, tau: float = 1.0, reduction: str = "batchmean"
) -> torch.Tensor:
    """Soft distillation: :math:`\\tau^2 \\cdot \\mathrm{KL}(p_t^\\tau \\| p_s^\\tau)` over dim 1.

    Args:
        student_logits: ``(B, C)`` student (distillation head) logits.
        teacher_logits: ``(B, C)`` teacher logits (no gradient flows into them).
        tau: temperature :math:`\\tau > 0`.
        reduction: ``"batchmean"`` (sum over classes, mean over the batch: the true KL per sample
            and the reference MobileMamba ``CLSKDLoss``) or ``"numel"`` (sum divided by ``B·C``, as
            DeiT's ``DistillationLoss``; :math:`C` times smaller).

    Returns:
        A scalar tensor in float32.
    """
    tau = _check_positive("tau", tau)
    if reduction not in _KL_REDUCTIONS:
        raise ValueError(f"reduction must be one of {_KL_REDUCTIONS}, got {reduction!r}.")
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(
            f"student_logits shape {tuple(student_logits.shape)} != teacher_logits shape "
            f"{tuple(teacher_logits.shape)}."
        )
    log_s = F.log_softmax(student_logits.float() / tau, dim=1)
    log_t = F.log_softmax(teacher_logits.detach().float() / tau, dim=1)
    kl = F.kl_div(log_s, log_t, reduction="sum", log_target=True)
    denom = student_logits.numel() if reduction == "numel" else student_logits.shape[0]
    return kl * (tau * tau) / max(denom, 1)


def hard_distillation(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """Hard distillation: cross-entropy of the student against the teacher's arg-max (dim 1)."""
    return F.cross_entropy(student_logits.float(), teacher_logits.detach().argmax(dim=1))


def pixelwise_distillation(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    tau: float = 1.0,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Pixel-wise soft distillation for segmentation.

    The KL divergence over the class dim (dim 1) at every pixel/voxel, times :math:`\\tau^2`,
    averaged over all pixels of the batch, or over the pixels where ``mask`` is non-zero (a
    weighted mean when ``mask`` is fractional).

    Args:
        student_logits: ``(B, C, *spatial)``.
        teacher_logits: ``(B, C, *spatial')``; resized (linear interpolation) to the student's
            spatial size if it differs, e.g. when the teacher runs at its own input size.
        tau: temperature.
        mask: optional region, ``(B, 1, *spatial)`` or ``(B, *spatial)``, bool or float. An empty
            region gives a zero loss (still connected to the graph).

    Returns:
        A scalar float32 tensor.
    """
    tau = _check_positive("tau", tau)
    if student_logits.ndim < 3:
        raise ValueError(f"student_logits must be (B, C, *spatial), got shape {tuple(student_logits.shape)}.")
    if teacher_logits.shape[:2] != student_logits.shape[:2]:
        raise ValueError(
            f"teacher_logits (B, C) = {tuple(teacher_logits.shape[:2])} does not match the student's "
            f"{tuple(student_logits.shape[:2])}."
        )
    teacher_logits = teacher_logits.detach().float()
    spatial = student_logits.shape[2:]
    if teacher_logits.shape[2:] != spatial:
        mode = {1: "linear", 2: "bilinear", 3: "trilinear"}[len(spatial)]
        teacher_logits = F.interpolate(teacher_logits, size=spatial, mode=mode, align_corners=False)
    log_s = F.log_softmax(student_logits.float() / tau, dim=1)
    log_t = F.log_softmax(teacher_logits / tau, dim=1)
    kl = (log_t.exp() * (log_t - log_s)).sum(dim=1) * (tau * tau)  # (B, *spatial)
    if mask is None:
        return kl.mean()
    if mask.ndim == student_logits.ndim:
        if mask.shape[1] != 1:
            raise ValueError(f"mask must have one channel, got shape {tuple(mask.shape)}.")
        mask = mask[:, 0]
    if mask.shape != kl.shape:
        raise ValueError(f"mask shape {tuple(mask.shape)} does not match the logits' (B, *spatial) {tuple(kl.shape)}.")
    weight = mask.to(kl.dtype)
    return (kl * weight).sum() / weight.sum().clamp_min(1e-12)


class SoftTargetCrossEntropy(nn.Module):
    """Cross-entropy accepting hard labels or soft targets (mixup / cutmix), computed in float32.

    Args:
        label_smoothing: smoothing applied to *hard* labels only (soft targets from
            :class:`~medmamba.training.mixup.MixupCutmix` are already smoothed).

    Shapes: ``logits (B, C)``; ``target`` either class indices ``(B,)`` / ``(B, 1)`` (any dtype) or
    probabilities ``(B, C)``.
    """

    def __init__(self, label_smoothing: float = 0.0) -> None:
        super().__init__()
        if not 0.0 <= float(label_smoothing) < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}.")
        self.label_smoothing = float(label_smoothing)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        logits = logits.float()
        if target.ndim == logits.ndim and target.shape == logits.shape and target.shape[1] > 1:
            target = target.float()
            return torch.sum(-target * F.log_softmax(logits, dim=1), dim=1).mean()
        if target.ndim == logits.ndim and target.shape[1] == 1:
            target = target[:, 0]
        if target.ndim != logits.ndim - 1:
            raise ValueError(
                f"target must be class indices (B,) or probabilities {tuple(logits.shape)}, "
                f"got shape {tuple(target.shape)}."
            )
        return F.cross_entropy(logits, target.long(), label_smoothing=self.label_smoothing)


class DistillationLoss(nn.Module):
    """Classification loss of the paper's distilled models: ``CE(cls, y) + λ·KD(dist, teacher)``.

    Usable as a MONAI bundle component::

        {"_target_": "medmamba.training.DistillationLoss", "kind": "soft", "tau": 1.0, "weight": 5.0}

    Args:
        base_loss: loss of the class head against the labels, called ``base_loss(cls_logits,
            target)``; default :class:`SoftTargetCrossEntropy` (hard labels or mixup soft targets).
            ``torch.nn.CrossEntropyLoss`` also accepts soft targets.
        kind: ``"soft"`` (KL at temperature ``tau``, scaled by ``tau²``) or ``"hard"`` (CE against
            the teacher's arg-max).
        tau: temperature τ of soft distillation (the paper: 1).
        weight: λ, weight of the distillation term against the base loss (the paper: 5).
        kl_reduction: ``"batchmean"`` (default, the reference implementation) or ``"numel"``
            (DeiT); see :func:`soft_distillation`.
        label_smoothing: for the default base loss only.

    Call ``loss(student_output, target, teacher_logits)``: ``student_output`` is a tensor or the
    pair ``(cls_logits, dist_logits)``; ``teacher_logits`` may be ``None`` (then only the base
    loss on the class head). :meth:`compute` also returns the two terms.
    """

    def __init__(
        self,
        base_loss: nn.Module | None = None,
        kind: str = "soft",
        tau: float = 1.0,
        weight: float = 5.0,
        kl_reduction: str = "batchmean",
        label_smoothing: float = 0.0,
    ) -> None:
        super().__init__()
        if kind not in _KINDS:
            raise ValueError(f"kind must be one of {_KINDS}, got {kind!r}.")
        if kl_reduction not in _KL_REDUCTIONS:
            raise ValueError(f"kl_reduction must be one of {_KL_REDUCTIONS}, got {kl_reduction!r}.")
        if float(weight) < 0:
            raise ValueError(f"weight must be >= 0, got {weight}.")
        self.base_loss = base_loss if base_loss is not None else SoftTargetCrossEntropy(label_smoothing)
        self.kind = kind
        self.tau = _check_positive("tau", tau)
        self.weight = float(weight)
        self.kl_reduction = kl_reduction

    def distillation_term(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
        """The unweighted KD term between the distillation head and the teacher."""
        if self.kind == "soft":
            return soft_distillation(student_logits, teacher_logits, self.tau, self.kl_reduction)
        return hard_distillation(student_logits, teacher_logits)

    def compute(
        self,
        student_output: torch.Tensor | Sequence[torch.Tensor],
        target: torch.Tensor,
        teacher_logits: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """Return ``{"loss": total, "loss_base": CE, "loss_kd": unweighted KD}``."""
        cls_logits, dist_logits = split_student_output(student_output)
        base = self.base_loss(cls_logits.float(), target).mean()
        if teacher_logits is None or self.weight == 0:
            kd = torch.zeros((), dtype=base.dtype, device=base.device)
            return {"loss": base, "loss_base": base, "loss_kd": kd}
        kd = self.distillation_term(dist_logits, teacher_logits.to(dist_logits.device))
        return {"loss": base + self.weight * kd, "loss_base": base, "loss_kd": kd}

    def forward(
        self,
        student_output: torch.Tensor | Sequence[torch.Tensor],
        target: torch.Tensor,
        teacher_logits: torch.Tensor | None = None,
    ) -> torch.Tensor:
        return self.compute(student_output, target, teacher_logits)["loss"]


class SegmentationDistillationLoss(nn.Module):
    """Segmentation loss with pixel-wise distillation: ``base(s, y) + weight·KD_pixel(s, t)``.

    Args:
        base_loss: the supervised loss, called ``base_loss(student_logits, target)``; default MONAI
            ``DiceCELoss(to_onehot_y=True, softmax=True)`` (labels as ``(B, 1, *spatial)`` indices).
        tau: temperature of the pixel-wise KL.
        weight: weight of the distillation term.
        region: ``None`` (every pixel) or ``"foreground"`` (pixels whose label is non-zero; the
            labels must be indices ``(B, 1, *spatial)`` or one-hot ``(B, C, *spatial)`` with channel
            0 the background). An explicit ``mask`` passed to :meth:`forward` takes precedence.
        ignore_classes: classes the teacher is not consulted about (learnt from the labels only),
            e.g. a lesion class the teacher is weaker at than the labels: their pixels are not
            distilled (combined with ``region``) and their channels are left out of the pixel-wise
            KL, which compares the distributions over the other classes (so a teacher that is
            unsure about the lesion class everywhere does not pull the student's lesion channel
            towards its own values on the other pixels).

        base_takes_list: whether ``base_loss`` receives a deep-supervision list of outputs whole;
            ``None`` (default): when it is a MONAI ``DeepSupervisionLoss``.

    Call ``loss(student_output, target, teacher_logits, mask=None)``. A list/tuple
    ``student_output`` (deep supervision: full-resolution logits first, e.g. ``MobileMambaSeg(
    deep_supervision=True)`` in training mode) is distilled through its first element and given
    whole to a ``DeepSupervisionLoss`` base loss (else its first element).
    """

    _REGIONS = (None, "foreground")

    def __init__(
        self,
        base_loss: nn.Module | None = None,
        tau: float = 1.0,
        weight: float = 1.0,
        region: str | None = None,
        base_takes_list: bool | None = None,
        ignore_classes: Sequence[int] = (),
    ) -> None:
        super().__init__()
        if region not in self._REGIONS:
            raise ValueError(f"region must be one of {self._REGIONS}, got {region!r}.")
        if isinstance(ignore_classes, (str, bytes)) or not all(
            isinstance(c, int) and not isinstance(c, bool) and c >= 0 for c in ignore_classes
        ):
            raise ValueError(f"ignore_classes must be a sequence of non-negative class indices, got {ignore_classes!r}.")
        self.ignore_classes = tuple(int(c) for c in ignore_classes)
        if float(weight) < 0:
            raise ValueError(f"weight must be >= 0, got {weight}.")
        if base_loss is None:
            from monai.losses import DiceCELoss

            base_loss = DiceCELoss(to_onehot_y=True, softmax=True)
        self.base_loss = base_loss
        if base_takes_list is None:
            from monai.losses import DeepSupervisionLoss

            base_takes_list = isinstance(base_loss, DeepSupervisionLoss)
        self.base_takes_list = bool(base_takes_list)
        self.tau = _check_positive("tau", tau)
        self.weight = float(weight)
        self.region = region

    def region_mask(self, target: torch.Tensor) -> torch.Tensor | None:
        """The distillation region implied by ``region``, ``ignore_classes`` and the labels (``None``: everywhere)."""
        mask: torch.Tensor | None = None
        if self.region is not None:
            mask = target[:, 0] != 0 if target.shape[1] == 1 else target[:, 1:].sum(dim=1) > 0
        if self.ignore_classes:
            labels = target[:, 0].round().long() if target.shape[1] == 1 else target.argmax(dim=1)
            ignored = torch.tensor(self.ignore_classes, device=labels.device)
            keep = ~torch.isin(labels, ignored)
            mask = keep if mask is None else mask & keep
        return mask

    def compute(
        self,
        student_output: torch.Tensor | Sequence[torch.Tensor],
        target: torch.Tensor,
        teacher_logits: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """Return ``{"loss": total, "loss_base": base, "loss_kd": unweighted pixel-wise KD}``."""
        if isinstance(student_output, torch.Tensor):
            logits = student_output
            base_input: torch.Tensor | list[torch.Tensor] = logits.float()
        elif isinstance(student_output, Sequence) and len(student_output) > 0:
            logits = student_output[0]
            base_input = [o.float() for o in student_output] if self.base_takes_list else logits.float()
        else:
            raise TypeError(f"student output must be a tensor or a list of tensors, got {type(student_output).__name__}.")
        base = self.base_loss(base_input, target).mean()
        if teacher_logits is None or self.weight == 0:
            kd = torch.zeros((), dtype=base.dtype, device=base.device)
            return {"loss": base, "loss_base": base, "loss_kd": kd}
        if mask is None:
            mask = self.region_mask(target)
        teacher_logits = teacher_logits.to(logits.device)
        if self.ignore_classes:
            keep = [c for c in range(logits.shape[1]) if c not in self.ignore_classes]
            logits, teacher_logits = logits[:, keep], teacher_logits[:, keep]
        kd = pixelwise_distillation(logits, teacher_logits, self.tau, mask)
        return {"loss": base + self.weight * kd, "loss_base": base, "loss_kd": kd}

    def forward(
        self,
        student_output: torch.Tensor | Sequence[torch.Tensor],
        target: torch.Tensor,
        teacher_logits: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        return self.compute(student_output, target, teacher_logits, mask)["loss"]
