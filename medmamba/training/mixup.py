"""Batch-level Mixup / CutMix with label smoothing (classification) and CutMix for segmentation.

The paper trains with mixup α = 0.8, cutmix α = 1.0 and label smoothing 0.1 (timm's ``Mixup`` in
"batch" mode): one mixing coefficient λ per batch, every sample mixed with the batch reversed
(``x.flip(0)``), the targets becoming smoothed one-hot vectors mixed with the same λ (their mass
sums to 1); the loss is then a soft-target cross-entropy
(:class:`~medmamba.training.distillation.SoftTargetCrossEntropy`). CutMix pastes a box whose
volume is ``1 − λ`` of the image; with ``correct_lam`` λ is recomputed from the clipped box.

:class:`SegmentationCutMix` pastes the same box into the images and the masks, so the masks
follow the images. Both work for 2D and 3D (any number of spatial dims) and are callables
``(images, labels) -> (images, labels)`` that the
:class:`~medmamba.training.iteration.DistillationIteration` applies to every batch.

Randomness comes from a private ``numpy.random.Generator`` (``seed``), or, when ``seed`` is
``None``, from one seeded by ``torch``'s global generator at construction, so
``monai.utils.set_determinism`` makes runs reproducible.
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["MixupCutmix", "SegmentationCutMix", "smooth_one_hot", "rand_box"]


def _make_rng(seed: int | None) -> np.random.Generator:
    if seed is None:
        seed = int(torch.randint(0, 2**31 - 1, (1,)).item())
    return np.random.default_rng(seed)


def smooth_one_hot(labels: torch.Tensor, num_classes: int, smoothing: float = 0.0) -> torch.Tensor:
    """One-hot targets with label smoothing: ``1 − s + s/C`` on the class, ``s/C`` elsewhere.

    Args:
        labels: class indices ``(B,)`` or ``(B, 1)`` (any numeric dtype), or already soft targets
            ``(B, C)`` (returned as float, smoothing not re-applied).
        num_classes: C.
        smoothing: s in ``[0, 1)``.
    """
    if labels.ndim == 2 and labels.shape[1] == num_classes and num_classes > 1:
        return labels.float()
    if labels.ndim == 2 and labels.shape[1] == 1:
        labels = labels[:, 0]
    if labels.ndim != 1:
        raise ValueError(f"labels must be (B,), (B, 1) or (B, {num_classes}), got shape {tuple(labels.shape)}.")
    off = smoothing / num_classes
    out = torch.full((labels.shape[0], num_classes), off, dtype=torch.float32, device=labels.device)
    return out.scatter_(1, labels.long().view(-1, 1), 1.0 - smoothing + off)


def rand_box(
    spatial_shape: tuple[int, ...], lam: float, rng: np.random.Generator, correct_lam: bool = True
) -> tuple[tuple[slice, ...], float]:
    """A CutMix box of volume ≈ ``(1 − lam)`` of ``spatial_shape``, uniformly centred, clipped.

    Each side is ``size_d · (1 − lam)^(1/n)`` for ``n`` spatial dims (``sqrt`` in 2D, as CutMix).

    Returns:
        ``(slices, lam)`` where ``lam`` is ``1 − box volume / image volume`` when ``correct_lam``
        (the box may be clipped at the border), else the input ``lam``.
    """
    n = len(spatial_shape)
    ratio = (1.0 - lam) ** (1.0 / n)
    slices = []
    volume = 1
    for size in spatial_shape:
        cut = int(size * ratio)
        centre = int(rng.integers(0, size))
        lo, hi = int(np.clip(centre - cut // 2, 0, size)), int(np.clip(centre + cut // 2, 0, size))
        slices.append(slice(lo, hi))
        volume *= hi - lo
    if correct_lam:
        lam = 1.0 - volume / float(np.prod(spatial_shape))
    return tuple(slices), float(lam)


class MixupCutmix:
    """Mixup / CutMix on a batch with label-smoothed soft targets (timm ``Mixup``, batch mode).

    Args:
        mixup_alpha: Beta(α, α) parameter of mixup; 0 disables mixup (paper: 0.8).
        cutmix_alpha: Beta(α, α) parameter of CutMix; 0 disables CutMix (paper: 1.0).
        prob: probability of mixing a batch at all (otherwise only label smoothing).
        switch_prob: probability of CutMix instead of mixup when both are enabled.
        label_smoothing: label smoothing s (paper: 0.1).
        num_classes: number of classes C.
        correct_lam: recompute λ from the clipped CutMix box.
        seed: seed of the private random generator (see module doc).

    Call ``mixer(images, labels) -> (mixed_images, soft_targets)`` with ``images (B, C, *spatial)``
    and ``labels`` class indices ``(B,)``/``(B, 1)``. The inputs are not modified. The ``lam`` of
    the last call is available as :attr:`last_lam`.
    """

    def __init__(
        self,
        mixup_alpha: float = 0.8,
        cutmix_alpha: float = 1.0,
        prob: float = 1.0,
        switch_prob: float = 0.5,
        label_smoothing: float = 0.1,
        num_classes: int = 1000,
        correct_lam: bool = True,
        seed: int | None = None,
    ) -> None:
        for name, value in (("mixup_alpha", mixup_alpha), ("cutmix_alpha", cutmix_alpha)):
            if float(value) < 0:
                raise ValueError(f"{name} must be >= 0, got {value}.")
        for name, value in (("prob", prob), ("switch_prob", switch_prob)):
            if not 0.0 <= float(value) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {value}.")
        if not 0.0 <= float(label_smoothing) < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}.")
        if int(num_classes) < 2:
            raise ValueError(f"num_classes must be >= 2, got {num_classes}.")
        self.mixup_alpha = float(mixup_alpha)
        self.cutmix_alpha = float(cutmix_alpha)
        self.prob = float(prob)
        self.switch_prob = float(switch_prob)
        self.label_smoothing = float(label_smoothing)
        self.num_classes = int(num_classes)
        self.correct_lam = bool(correct_lam)
        self.rng = _make_rng(seed)
        self.last_lam: float = 1.0

    def sample(self) -> tuple[float, bool]:
        """Draw ``(lam, use_cutmix)`` for one batch."""
        lam, use_cutmix = 1.0, False
        if self.rng.random() < self.prob and (self.mixup_alpha > 0 or self.cutmix_alpha > 0):
            if self.mixup_alpha > 0 and self.cutmix_alpha > 0:
                use_cutmix = bool(self.rng.random() < self.switch_prob)
            else:
                use_cutmix = self.cutmix_alpha > 0
            alpha = self.cutmix_alpha if use_cutmix else self.mixup_alpha
            lam = float(self.rng.beta(alpha, alpha))
        return lam, use_cutmix

    def __call__(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if images.ndim < 3:
            raise ValueError(f"images must be (B, C, *spatial), got shape {tuple(images.shape)}.")
        targets = smooth_one_hot(labels, self.num_classes, self.label_smoothing).to(images.device)
        lam, use_cutmix = self.sample()
        if lam == 1.0:
            self.last_lam = 1.0
            return images, targets
        if use_cutmix:
            box, lam = rand_box(tuple(images.shape[2:]), lam, self.rng, self.correct_lam)
            mixed = images.clone()
            index = (slice(None), slice(None)) + box
            mixed[index] = images.flip(0)[index]
        else:
            mixed = images * lam + images.flip(0) * (1.0 - lam)
        self.last_lam = lam
        return mixed, targets * lam + targets.flip(0) * (1.0 - lam)


class SegmentationCutMix:
    """CutMix for segmentation: the same box is pasted into the images and the masks.

    Each sample ``i`` receives, inside one random box per batch, the content of sample
    ``B − 1 − i`` (the batch reversed), in the image *and* in the mask, so the masks stay the
    labels of the mixed images.

    Args:
        alpha: Beta(α, α) parameter of the kept fraction λ; the box has volume ≈ ``1 − λ``.
        prob: probability of mixing a batch.
        seed: seed of the private random generator.

    Call ``cutmix(images, masks) -> (images, masks)``: ``images (B, C, *spatial)``, ``masks``
    ``(B, K, *spatial)`` (indices with K = 1 or one-hot/probabilities), same spatial size. The box
    of the last call is :attr:`last_box` (``None`` when the batch was not mixed).
    """

    def __init__(self, alpha: float = 1.0, prob: float = 0.5, seed: int | None = None) -> None:
        if not float(alpha) > 0:
            raise ValueError(f"alpha must be > 0, got {alpha}.")
        if not 0.0 <= float(prob) <= 1.0:
            raise ValueError(f"prob must be in [0, 1], got {prob}.")
        self.alpha = float(alpha)
        self.prob = float(prob)
        self.rng = _make_rng(seed)
        self.last_box: tuple[slice, ...] | None = None

    @staticmethod
    def mix(
        images: torch.Tensor, masks: torch.Tensor, box: tuple[slice, ...]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Paste ``box`` of the reversed batch into ``images`` and ``masks`` (copies)."""
        index = (slice(None), slice(None)) + tuple(box)
        images_out, masks_out = images.clone(), masks.clone()
        images_out[index] = images.flip(0)[index]
        masks_out[index] = masks.flip(0)[index]
        return images_out, masks_out

    def __call__(self, images: torch.Tensor, masks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if images.ndim < 3 or masks.ndim != images.ndim:
            raise ValueError(
                f"images and masks must both be (B, C, *spatial), got {tuple(images.shape)} and {tuple(masks.shape)}."
            )
        if images.shape[0] != masks.shape[0] or images.shape[2:] != masks.shape[2:]:
            raise ValueError(
                f"images {tuple(images.shape)} and masks {tuple(masks.shape)} differ in batch or spatial size."
            )
        self.last_box = None
        if self.rng.random() >= self.prob:
            return images, masks
        lam = float(self.rng.beta(self.alpha, self.alpha))
        box, _ = rand_box(tuple(images.shape[2:]), lam, self.rng, correct_lam=True)
        self.last_box = box
        return self.mix(images, masks, box)

