"""Tissue probabilities refined by the scan's own intensities: the network as a spatial prior.

The segmentation network sees the scan resampled to its training spacing (2 mm) and its class
probabilities are interpolated back to the input's grid. On a finer input (a 1 mm T1) that
prediction cannot be sharper than 2 mm, while the scan itself shows every sulcus. This transform
combines the two the way unified segmentation does (Ashburner and Friston, "Unified segmentation",
NeuroImage 2005; FSL FAST, Atropos with prior probability maps): inside the brain, the network's
probabilities of the tissue classes are the *prior* of a Gaussian mixture over the scan's
intensities, with one mean per tissue that varies smoothly in space (absorbing the bias field) and
one variance per tissue, fitted to the scan by a few EM iterations. The posterior replaces the
tissue probabilities; what is brain and what is not stays the network's decision: a voxel whose most
probable class the network says is background is not changed, and in one it gives to a tissue the
background probability is held below the refined most probable tissue's, so the brain mask and its
volume do not change (``keep_brain_decision``; without it, on a real 1 mm head, voxels the network
called background became tissue and joined tissue it had labelled in the neck to the brain: 1.16x
the reference brain volume instead of 0.92x).

The mixture is fitted to every scan on its own (no contrast is assumed: the means come from the
voxels the network assigns to each tissue), so it works for any contrast in which the tissues differ
in intensity, and falls back to the prior where they do not (equal likelihoods).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform, Transform

from medmamba.transforms.label_map import argmax_in
from medmamba.transforms.scan_checks import voxel_spacing

__all__ = ["ScanGuidedd", "TissueIntensityRefine", "TissueIntensityRefined", "refine_tissue_probabilities"]


def _gaussian_kernel(sigma: float) -> torch.Tensor:
    radius = max(1, int(math.ceil(3.0 * sigma)))
    x = torch.arange(-radius, radius + 1, dtype=torch.float32)
    k = torch.exp(-0.5 * (x / max(sigma, 1e-6)) ** 2)
    return k / k.sum()


def _smooth_coarse(x: torch.Tensor, factors: Sequence[int], sigmas: Sequence[float]) -> torch.Tensor:
    """Low-pass of ``(C, *spatial)``: block means over ``factors``, a Gaussian there, back to full size.

    Only ratios of two such smoothings are used, so the operator's overall scale does not matter.
    A torch convolution, not ``scipy.ndimage``/``skimage.filters.gaussian``: it stays on the tensors'
    device, and scipy's float64 filtering differs from it by float rounding (about 2e-7).
    """
    nd = x.dim() - 1
    pool = F.avg_pool3d if nd == 3 else F.avg_pool2d
    coarse = pool(x[None], kernel_size=tuple(factors), stride=tuple(factors), ceil_mode=True)[0]
    for axis, sigma in enumerate(sigmas):
        if sigma <= 0:
            continue
        k = _gaussian_kernel(sigma)
        r = (k.numel() - 1) // 2
        moved = coarse.movedim(axis + 1, -1)
        shape = moved.shape
        flat = moved.reshape(-1, 1, shape[-1])
        flat = F.conv1d(F.pad(flat, (r, r), mode="replicate"), k.view(1, 1, -1))
        coarse = flat.reshape(shape).movedim(-1, axis + 1)
    mode = "trilinear" if nd == 3 else "bilinear"
    return F.interpolate(coarse[None], size=tuple(x.shape[1:]), mode=mode, align_corners=False)[0]


def refine_tissue_probabilities(
    prob: torch.Tensor,
    image: torch.Tensor,
    spacing: Sequence[float],
    tissue_channels: Sequence[int] = (1, 2, 3),
    prior_weight: float = 1.0,
    bias_fwhm_mm: float = 40.0,
    iterations: int = 2,
    brain_threshold: float = 0.5,
    keep_brain_decision: bool = True,
    mean_weight_power: float = 1.0,
) -> torch.Tensor:
    """Posterior tissue probabilities of a Gaussian mixture whose prior is the network's prediction.

    Args:
        prob: Class probabilities ``(K, *spatial)`` (2 or 3 spatial dims), summing to 1 over K.
        image: The scan on the same grid, ``(1, *spatial)`` or ``(*spatial)``, any intensity scale.
        spacing: Voxel size in mm per spatial axis.
        tissue_channels: Channels of ``prob`` that are brain tissues (CSF, grey and white matter);
            the others (background) are left unchanged.
        prior_weight: Exponent of the prior in the posterior (1: Bayes' rule; 0: intensities only).
        bias_fwhm_mm: Smoothness of the per-tissue mean (the bias field it absorbs), FWHM in mm.
        iterations: EM iterations (each re-estimates means and variances from the posterior).
        brain_threshold: Voxels whose tissue probabilities sum to less than this are not refined.
        keep_brain_decision: Keep the network's brain/background decision (the arg-max over all
            channels being a tissue or not): voxels it gives to another class are left unchanged,
            and in voxels it gives to a tissue every other channel is capped just below the refined
            most probable tissue and the voxel renormalised. ``False``: the refined tissue channels
            compete with the unchanged background, which can move the brain's border either way.
        mean_weight_power: Exponent of the posterior probabilities that weight each tissue's local
            mean (1: the plain EM update). Larger values take the means from the voxels classified
            with confidence, so partial-volume voxels at tissue borders (a 1 mm voxel half sulcal
            CSF, half cortex) pull the CSF and grey-matter means towards each other less; the
            variances keep the plain weights.

    Returns:
        float32 probabilities of the same shape: in refined voxels the tissue channels are the
        brain probability times the mixture's posterior (with ``keep_brain_decision``, voxels of
        the network's brain then renormalised after the cap), elsewhere ``prob`` unchanged.

    Raises:
        ValueError: For mismatched shapes, a channel out of range or invalid numbers.
    """
    prob_t = torch.as_tensor(prob).float()
    img = torch.as_tensor(image).float()
    if img.dim() == prob_t.dim():
        if int(img.shape[0]) != 1:
            raise ValueError(f"image must be (1, *spatial) or (*spatial), got shape {tuple(img.shape)}.")
        img = img[0]
    nd = prob_t.dim() - 1
    if nd not in (2, 3):
        raise ValueError(f"prob must be (K, *spatial) with 2 or 3 spatial dims, got shape {tuple(prob_t.shape)}.")
    if tuple(img.shape) != tuple(prob_t.shape[1:]):
        raise ValueError(f"image spatial shape {tuple(img.shape)} != prob spatial shape {tuple(prob_t.shape[1:])}.")
    channels = [int(c) for c in tissue_channels]
    if len(channels) < 2 or any(not 0 <= c < prob_t.shape[0] for c in channels) or len(set(channels)) != len(channels):
        raise ValueError(f"tissue_channels must be two or more distinct channels of the {prob_t.shape[0]} in prob, "
                         f"got {tissue_channels!r}.")
    spacing = [float(s) for s in spacing]
    if len(spacing) != nd or any(not s > 0 for s in spacing):
        raise ValueError(f"spacing must hold {nd} positive voxel sizes in mm, got {spacing!r}.")
    if not prior_weight >= 0 or not bias_fwhm_mm > 0 or int(iterations) < 1 or not 0 < brain_threshold < 1:
        raise ValueError(
            f"expected prior_weight >= 0, bias_fwhm_mm > 0, iterations >= 1 and 0 < brain_threshold < 1, got "
            f"{prior_weight!r}, {bias_fwhm_mm!r}, {iterations!r}, {brain_threshold!r}.")
    if not mean_weight_power >= 1:
        raise ValueError(f"mean_weight_power must be a number >= 1, got {mean_weight_power!r}.")

    tissue = prob_t[channels]
    brain = tissue.sum(0)
    region = brain >= brain_threshold
    if int(region.sum()) < 27 * len(channels):
        return prob_t.clone()
    eps = 1e-4
    prior = tissue / brain.clamp_min(eps)
    log_prior = prior_weight * torch.log(prior.clamp_min(eps))
    # block means of about 4 mm, then a Gaussian of the requested FWHM at that spacing
    factors = [max(1, int(round(4.0 / s))) for s in spacing]
    sigmas = [bias_fwhm_mm / 2.3548 / (f * s) for f, s in zip(factors, spacing)]
    values = img[region]
    scale = float(values.abs().max()) or 1.0
    img_n = img / scale
    mask = region.to(torch.float32)
    resp = prior * mask
    for _ in range(int(iterations)):
        weight_sum = resp.flatten(1).sum(1).clamp_min(eps)
        global_mean = (resp * img_n).flatten(1).sum(1) / weight_sum
        view = (-1,) + (1,) * nd
        # a local mean per tissue; where a tissue is rare it is pulled to its global mean
        weights = resp if mean_weight_power == 1 else resp ** mean_weight_power
        local_w = _smooth_coarse(weights, factors, sigmas)
        local_wi = _smooth_coarse(weights * img_n, factors, sigmas)
        ridge = 0.05
        mean = (local_wi + ridge * global_mean.view(view)) / (local_w + ridge)
        resid2 = (img_n - mean) ** 2
        var = (resp * resid2).flatten(1).sum(1) / weight_sum
        var = var.clamp_min(1e-6).view(view)
        log_lik = -0.5 * resid2 / var - 0.5 * torch.log(var)
        post = torch.softmax(log_prior + log_lik, dim=0)
        resp = post * mask
    out = prob_t.clone()
    refined = brain * post
    change = region
    if keep_brain_decision:
        change = region & argmax_in(prob_t, channels)  # the network's brain
    out[channels] = torch.where(change, refined, tissue)
    others = [c for c in range(prob_t.shape[0]) if c not in channels]
    if keep_brain_decision and others:
        cap = refined.amax(0) * (1.0 - 1e-4)
        out[others] = torch.where(change, torch.minimum(prob_t[others], cap), prob_t[others])
        out = torch.where(change, out / out.sum(0, keepdim=True), out)
    return out


class TissueIntensityRefine(Transform):
    """Refine tissue probabilities on the input's grid with the scan's intensities (a Gaussian mixture
    with the network's probabilities as its spatial prior; see :func:`refine_tissue_probabilities`).

    Args:
        tissue_channels: Channels that are brain tissues (CSF, grey and white matter).
        prior_weight: Exponent of the network prior (1: Bayes' rule).
        bias_fwhm_mm: Smoothness of the per-tissue mean in mm (FWHM).
        iterations: EM iterations.
        brain_threshold: Minimum brain probability of a refined voxel.
        keep_brain_decision: Leave the brain/background decision to the network (see
            :func:`refine_tissue_probabilities`).
        spacing: Voxel size in mm; ``None`` reads it from the probabilities' affine (``MetaTensor``).
        max_voxel_mm: Leave the probabilities unchanged when a voxel is larger than this along any
            axis (thick slices mix tissues in every voxel, so intensities no longer separate them;
            on 2 x 2 x 5 mm inputs the refinement lowered Dice); ``None``: refine every input.
        mean_weight_power: Exponent of the posterior weights of the tissue means (see
            :func:`refine_tissue_probabilities`; 1: the plain EM update).

    Raises:
        ValueError: For a ``max_voxel_mm`` that is not positive or a ``mean_weight_power`` below 1.
    """

    def __init__(
        self,
        tissue_channels: Sequence[int] = (1, 2, 3),
        prior_weight: float = 1.0,
        bias_fwhm_mm: float = 40.0,
        iterations: int = 2,
        brain_threshold: float = 0.5,
        keep_brain_decision: bool = True,
        spacing: Sequence[float] | None = None,
        max_voxel_mm: float | None = None,
        mean_weight_power: float = 1.0,
    ) -> None:
        if max_voxel_mm is not None and not float(max_voxel_mm) > 0:
            raise ValueError(f"max_voxel_mm must be a voxel size in mm > 0 or None, got {max_voxel_mm!r}.")
        if not float(mean_weight_power) >= 1:
            raise ValueError(f"mean_weight_power must be a number >= 1, got {mean_weight_power!r}.")
        self.mean_weight_power = float(mean_weight_power)
        self.max_voxel_mm = None if max_voxel_mm is None else float(max_voxel_mm)
        self.tissue_channels = tuple(int(c) for c in tissue_channels)
        self.prior_weight = float(prior_weight)
        self.bias_fwhm_mm = float(bias_fwhm_mm)
        self.iterations = int(iterations)
        self.brain_threshold = float(brain_threshold)
        self.keep_brain_decision = bool(keep_brain_decision)
        self.spacing = None if spacing is None else [float(s) for s in spacing]

    def __call__(self, img: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        """Args:
            img: Class probabilities ``(K, *spatial)``.
            image: The scan on the same grid, ``(1, *spatial)``.

        Returns:
            The refined probabilities, a ``MetaTensor`` with ``img``'s metadata when ``img`` is one.
        """
        if self.spacing is not None:
            spacing = self.spacing
        elif isinstance(img, MetaTensor):
            spacing = list(voxel_spacing(img, img.dim() - 1))
        else:
            raise ValueError("spacing is None and the probabilities carry no affine: pass spacing (mm per spatial axis).")
        if self.max_voxel_mm is not None and max(float(v) for v in spacing) > self.max_voxel_mm:
            return img
        out = refine_tissue_probabilities(
            torch.as_tensor(img), torch.as_tensor(image), spacing, self.tissue_channels, self.prior_weight,
            self.bias_fwhm_mm, self.iterations, self.brain_threshold, self.keep_brain_decision,
            self.mean_weight_power)
        if isinstance(img, MetaTensor):
            return MetaTensor(out, affine=img.affine, meta=dict(img.meta))
        return out


class ScanGuidedd(MapTransform):
    """Dictionary version of a transform called as ``transform(prob, scan)``: the probabilities under
    ``keys``, the scan on the same grid under ``image_key``.

    Args:
        keys: Keys of the probabilities.
        transform: Called as ``transform(data[key], data[image_key])``; its result replaces ``data[key]``.
        image_key: Key of the scan on the same grid as the probabilities.
        allow_missing_keys: Skip missing keys.
    """

    def __init__(self, keys: KeysCollection, transform: Callable[[Any, Any], Any], image_key: str = "image",
                 allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.transform = transform
        self.image_key = image_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        if self.image_key not in d:
            raise KeyError(f"image_key={self.image_key!r} is not in the data; it has {sorted(map(str, d))}.")
        for key in self.key_iterator(d):
            d[key] = self.transform(d[key], d[self.image_key])
        return d


class TissueIntensityRefined(ScanGuidedd):
    """Dictionary version of :class:`TissueIntensityRefine`.

    Args:
        keys: Keys of the probabilities to refine.
        image_key: Key of the scan on the same grid as the probabilities.
        allow_missing_keys: Skip missing keys.
        kwargs: :class:`TissueIntensityRefine`'s arguments.
    """

    def __init__(self, keys: KeysCollection, image_key: str = "image", allow_missing_keys: bool = False,
                 **kwargs: Any) -> None:
        super().__init__(keys, TissueIntensityRefine(**kwargs), image_key, allow_missing_keys)

    @property
    def refiner(self) -> TissueIntensityRefine:
        """The wrapped :class:`TissueIntensityRefine`."""
        return self.transform
