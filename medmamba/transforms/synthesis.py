"""Domain randomisation: training images of random contrast, resolution, bias and noise (SynthSeg).

SynthSeg (Billot et al., "SynthSeg: Segmentation of brain MRI scans of any contrast and resolution
without retraining", Medical Image Analysis 2023) trains only on images synthesised from label maps:
every label gets an intensity drawn from a Gaussian mixture with random means and spreads (so any
contrast, inverted ones included), then random blur and downsampling to a random slice thickness,
a bias field, gamma and noise. A network trained that way cannot key on one generator's intensity
statistics, texture or resolution; it has to rely on shape and relative contrast, and it carries over
to scanners' images.

:class:`RandDomainSynthesisd` is that generative model as a MONAI map transform over a volume and
its generation label map (the default data set's ``generation.nii.gz``, see
:mod:`medmamba.data.head_model`). With probability ``1 - prob`` it keeps the stored image (a
T1-weighted rendering) and applies only the corruptions (resolution, bias, gamma, noise), so the
network also sees the realistic intensity texture of the template.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform, Randomizable

__all__ = ["RandDomainSynthesisd"]

#: Generation labels that are brain (kept by the skull-stripping branch): CSF, GM, WM, lesion.
_BRAIN = (1, 2, 3, 4)
_CSF, _GM, _WM, _LESION = 1, 2, 3, 4


def _pair(name: str, value: Sequence[float], low: float = 0.0) -> tuple[float, float]:
    if len(value) != 2 or not low <= float(value[0]) <= float(value[1]):
        raise ValueError(f"{name} must be a (low, high) pair with {low} <= low <= high, got {value!r}.")
    return float(value[0]), float(value[1])


def _blur(x: torch.Tensor, sigmas: Sequence[float]) -> torch.Tensor:
    """Gaussian blur of a ``(H, W, D)`` volume with one sigma (voxels) per axis (``nearest`` edges)."""
    from scipy import ndimage

    sig = [float(s) if s >= 0.1 else 0.0 for s in sigmas]
    if not any(sig):
        return x
    return torch.from_numpy(ndimage.gaussian_filter(x.numpy(), sigma=sig, mode="nearest", truncate=3.0))


def _linear_weights(size_out: int, size_in: int) -> torch.Tensor:
    """``(size_out, size_in)`` matrix of 1D linear interpolation with ``align_corners=True``.

    The product of one such matrix per axis is ``F.interpolate(mode="trilinear", align_corners=True)``
    (the same weights), evaluated axis by axis: several times cheaper on a volume, because most axes
    keep their size or start from a coarse grid.
    """
    if size_in == 1:
        return torch.ones(size_out, 1)
    pos = torch.linspace(0.0, float(size_in - 1), size_out, dtype=torch.float64) if size_out > 1 else torch.zeros(1, dtype=torch.float64)
    low = pos.floor().clamp(max=size_in - 2).long()
    frac = (pos - low).float()
    weights = torch.zeros(size_out, size_in)
    rows = torch.arange(size_out)
    weights[rows, low] = 1.0 - frac
    weights[rows, low + 1] += frac
    return weights


def _resize_axis(x: torch.Tensor, axis: int, size: int) -> torch.Tensor:
    """Linear (``align_corners=True``) resampling of a ``(H, W, D)`` volume along one axis to ``size``."""
    w = _linear_weights(size, x.shape[axis])
    return torch.tensordot(x.movedim(axis, -1), w, dims=([-1], [1])).movedim(-1, axis).contiguous()


def _smooth_field(coarse: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """A coarse ``(a, b, c)`` grid upsampled trilinearly (``align_corners=True``) to ``shape``, separably."""
    wx, wy, wz = (_linear_weights(int(n), int(m)) for n, m in zip(shape, coarse.shape))
    return torch.einsum("abc,ia,jb,kc->ijk", coarse, wx, wy, wz)


class RandDomainSynthesisd(Randomizable, MapTransform):
    """Synthesise a training image of random contrast and resolution from a generation label map.

    Per call (SynthSeg's generative model, Billot et al. 2023):

    1. skull stripping with probability ``strip_prob`` (every non-brain label becomes air), so that
       skull-stripped and whole-head inputs are both normal;
    2. with probability ``prob``: every label an intensity ``N(mean_l, std_l)`` with ``std_l`` uniform
       in ``[0, max_std]``; ``mean_l`` is, with probability ``random_contrast_prob``, uniform in
       ``[0, 1]`` (any contrast, inverted ones included; grey and white matter at least
       ``min_contrast`` apart), else a reference contrast (``reference_means``, T1 by default) with
       each label's mean scaled by a factor in ``1 ± contrast_jitter`` (the spread of T1 contrasts
       between scanners and sequences); air stays dark with probability ``dark_air_prob``; a lesion
       is brighter or darker than white matter by ``lesion_contrast``. Otherwise the stored image is
       kept;
    3. a random partial-volume blur (``max_blur`` voxels per axis);
    4. with probability ``lowres_prob``, thick slices: along one axis (the last, axial, with
       probability 0.6) a blur matched to a slice thickness of ``thickness`` times the voxel size,
       downsampling to it and linear upsampling back;
    5. a smooth multiplicative bias field ``exp(N(0, bias_std))`` on a coarse grid;
    6. normalisation to [0, 1], gamma ``exp(N(0, gamma_std))`` and Gaussian noise of standard
       deviation up to ``max_noise``.

    Without the label key in the data (a user's own data set), steps 3-6 are applied to the image
    as it is.

    Args:
        keys: The image key (one); replaced by the synthesised image (same meta data).
        label_key: Key of the generation label map (``(1, H, W, D)``, integer labels).
        prob: Probability of an image synthesised from the labels (else the stored image is corrupted).
        random_contrast_prob: Of the synthesised images, the fraction with fully random contrast.
        reference_means: Intensity per generation label of the reference contrast (default: T1,
            :data:`medmamba.data.head_model.T1_MEANS` scaled to a maximum of 1).
        contrast_jitter: Relative spread of the reference means.
        strip_prob: Probability of skull stripping.
        max_std: Largest within-label standard deviation.
        dark_air_prob: Probability that air (label 0) stays in ``[0, 0.08]``.
        min_contrast: Smallest grey/white matter difference of a random contrast.
        lesion_contrast: Range of a lesion's intensity difference to white matter.
        max_blur: Largest partial-volume blur (voxels).
        lowres_prob: Probability of thick slices.
        thickness: Range of the slice thickness in voxels.
        bias_std: Range of the bias field's log standard deviation.
        gamma_std: Standard deviation of the log gamma.
        max_noise: Largest noise standard deviation (image in [0, 1]).
        allow_missing_keys: Skip data without the image key.

    Raises:
        ValueError: If a probability is outside [0, 1] or a range is not a valid pair.
    """

    def __init__(
        self,
        keys: KeysCollection,
        label_key: str = "generation",
        prob: float = 0.6,
        random_contrast_prob: float = 0.25,
        reference_means: Mapping[int, float] | None = None,
        contrast_jitter: float = 0.3,
        strip_prob: float = 0.25,
        max_std: float = 0.1,
        dark_air_prob: float = 0.85,
        min_contrast: float = 0.08,
        lesion_contrast: Sequence[float] = (0.15, 0.45),
        max_blur: float = 0.8,
        lowres_prob: float = 0.4,
        thickness: Sequence[float] = (1.5, 3.5),
        bias_std: Sequence[float] = (0.0, 0.4),
        gamma_std: float = 0.25,
        max_noise: float = 0.05,
        allow_missing_keys: bool = False,
    ) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        if len(self.keys) != 1:
            raise ValueError(f"keys must name one image, got {list(self.keys)}.")
        for name, value in (("prob", prob), ("random_contrast_prob", random_contrast_prob), ("strip_prob", strip_prob), ("dark_air_prob", dark_air_prob), ("lowres_prob", lowres_prob)):
            if not 0.0 <= float(value) <= 1.0:
                raise ValueError(f"{name} must be a probability in [0, 1], got {value!r}.")
        for name, value in (("max_std", max_std), ("min_contrast", min_contrast), ("max_blur", max_blur), ("gamma_std", gamma_std), ("max_noise", max_noise)):
            if float(value) < 0:
                raise ValueError(f"{name} must be >= 0, got {value!r}.")
        if not 0.0 <= float(contrast_jitter) < 1.0:
            raise ValueError(f"contrast_jitter must be in [0, 1), got {contrast_jitter!r}.")
        if reference_means is None:
            from medmamba.data.head_model import T1_MEANS

            top = max(T1_MEANS.values())
            reference_means = {k: v / top for k, v in T1_MEANS.items()}
        self.reference = np.zeros(max(int(k) for k in reference_means) + 1, dtype=np.float64)
        for k, v in reference_means.items():
            self.reference[int(k)] = float(v)
        self.label_key = label_key
        self.prob = float(prob)
        self.random_contrast_prob = float(random_contrast_prob)
        self.contrast_jitter = float(contrast_jitter)
        self.strip_prob = float(strip_prob)
        self.max_std = float(max_std)
        self.dark_air_prob = float(dark_air_prob)
        self.min_contrast = float(min_contrast)
        self.lesion_contrast = _pair("lesion_contrast", lesion_contrast)
        self.max_blur = float(max_blur)
        self.lowres_prob = float(lowres_prob)
        self.thickness = _pair("thickness", thickness, low=1.0)
        self.bias_std = _pair("bias_std", bias_std)
        self.gamma_std = float(gamma_std)
        self.max_noise = float(max_noise)

    def randomize(self, data: Any = None) -> None:  # noqa: D102 - draws happen in __call__, in order
        pass

    def _means(self, n_labels: int) -> tuple[np.ndarray, np.ndarray]:
        if self.R.rand() < self.random_contrast_prob:
            for _ in range(20):
                means = self.R.uniform(0.0, 1.0, n_labels)
                if abs(means[_GM] - means[_WM]) >= self.min_contrast:
                    break
        else:
            ref = np.zeros(n_labels)
            ref[: min(n_labels, self.reference.size)] = self.reference[:n_labels]
            means = ref * self.R.uniform(1.0 - self.contrast_jitter, 1.0 + self.contrast_jitter, n_labels)
        if self.R.rand() < self.dark_air_prob:
            means[0] = self.R.uniform(0.0, 0.08)
        if n_labels > _LESION:
            delta = self.R.uniform(*self.lesion_contrast)
            up = means[_WM] + delta <= 1.0 and (means[_WM] - delta < 0.0 or self.R.rand() < 0.5)
            means[_LESION] = means[_WM] + delta if up else means[_WM] - delta
        stds = self.R.uniform(0.0, self.max_std, n_labels)
        return means.astype(np.float32), stds.astype(np.float32)

    def _randn(self, shape: tuple[int, ...]) -> torch.Tensor:
        """Standard normal noise from a torch generator seeded by this transform's random state."""
        gen = torch.Generator().manual_seed(int(self.R.randint(0, 2**31 - 1)))
        return torch.randn(shape, generator=gen)

    def _corrupt(self, x: torch.Tensor) -> torch.Tensor:
        """Blur, thick slices, bias, normalisation, gamma and noise of a ``(H, W, D)`` volume."""
        x = _blur(x, [float(self.R.uniform(0.0, self.max_blur)) for _ in range(3)])
        if self.R.rand() < self.lowres_prob:
            axis = 2 if self.R.rand() < 0.6 else int(self.R.randint(0, 2))
            factor = float(self.R.uniform(*self.thickness))
            x = _blur(x, [0.42 * factor if a == axis else 0.0 for a in range(3)])
            size = int(x.shape[axis])
            x = _resize_axis(_resize_axis(x, axis, max(2, int(round(size / factor)))), axis, size)
        std = float(self.R.uniform(*self.bias_std))
        if std > 0:
            coarse = torch.from_numpy(self.R.normal(0.0, std, (1, 1, 4, 4, 4)).astype(np.float32))
            x = x * torch.exp(_smooth_field(coarse[0, 0], x.shape))
        x = x.clamp_min(0.0)
        sample = x.reshape(-1)[:: max(1, x.numel() // 200_000)].numpy()
        hi = max(float(np.partition(sample, int(0.999 * (sample.size - 1)))[int(0.999 * (sample.size - 1))]), 1e-6)
        x = (x / hi).clamp(0.0, 1.0)
        x = x ** float(np.exp(self.R.normal(0.0, self.gamma_std)))
        sigma = float(self.R.uniform(0.0, self.max_noise))
        if sigma > 0:
            x = (x + sigma * self._randn(tuple(x.shape))).clamp_min(0.0)
        return x

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            img = d[key]
            x = torch.as_tensor(img).detach().cpu().float()
            if x.ndim != 4 or x.shape[0] != 1:
                raise ValueError(f"data[{key!r}] must be a one-channel volume (1, H, W, D), got shape {tuple(x.shape)}.")
            vol = x[0].clone()
            labels = d.get(self.label_key)
            if labels is not None:
                g = torch.as_tensor(labels).detach().cpu().long()
                if tuple(g.shape) != tuple(x.shape):
                    raise ValueError(
                        f"data[{self.label_key!r}] must have the image's shape {tuple(x.shape)}, got {tuple(g.shape)}."
                    )
                g = g[0].clamp_min(0)
                strip = self.R.rand() < self.strip_prob
                if strip:
                    brain = torch.zeros_like(g, dtype=torch.bool)
                    for k in _BRAIN:
                        brain |= g == k
                    g = torch.where(brain, g, torch.zeros_like(g))
                if self.R.rand() < self.prob:
                    means, stds = self._means(max(int(g.max()) + 1, _LESION + 1))
                    m, s = torch.from_numpy(means), torch.from_numpy(stds)
                    vol = m[g] + s[g] * self._randn(tuple(g.shape))
                elif strip:
                    vol = torch.where(g > 0, vol, torch.zeros_like(vol))
            out = self._corrupt(vol)[None]
            d[key] = MetaTensor(out, meta=img.meta) if isinstance(img, MetaTensor) else out
        return d
