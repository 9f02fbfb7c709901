"""Resampling to a coarser voxel spacing with an anti-aliasing blur first.

MONAI's ``Spacing`` interpolates the input at the new voxel centres. Going from a fine grid to a
coarser one (a 1 mm scan to the bundles' 2 mm grid) that samples the fine image instead of averaging
it: from 1 mm to 2 mm with linear interpolation, every second voxel is kept as it is, so the image
keeps the 1 mm noise level and sharp edges that a 2 mm acquisition (and every 2 mm training image)
does not have. :class:`AntiAliasedSpacingd` blurs each axis that is made coarser by a Gaussian
first, with the standard deviation scikit-image's ``resize(anti_aliasing=True)`` uses,
``σ = (factor − 1) / 2`` input voxels for a spacing ratio ``factor > 1``; axes that keep or refine
their spacing are not blurred. For an input already at the target spacing it is ``Spacingd``
itself.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import GaussianSmooth, Spacingd

__all__ = ["AntiAliasedSpacingd", "anti_aliasing_sigma"]


def anti_aliasing_sigma(spacing: Sequence[float], target: Sequence[float]) -> list[float]:
    """Per-axis Gaussian standard deviation (in input voxels) before resampling ``spacing`` → ``target``.

    Args:
        spacing: the input's voxel spacing per spatial axis (mm).
        target: the output's voxel spacing per spatial axis (mm); a value ``<= 0`` keeps that axis's
            spacing (as in ``Spacing``'s ``pixdim``).

    Returns:
        ``max(0, (target / spacing − 1) / 2)`` per axis.

    Raises:
        ValueError: If the lengths differ or a spacing is not positive.
    """
    if len(spacing) != len(target):
        raise ValueError(f"spacing {tuple(spacing)} and target {tuple(target)} must have one value per spatial axis.")
    sigmas = []
    for s, t in zip(spacing, target):
        if not float(s) > 0:
            raise ValueError(f"spacing must be positive on every axis, got {tuple(spacing)}.")
        t = float(s) if float(t) <= 0 else float(t)
        sigmas.append(max(0.0, (t / float(s) - 1.0) / 2.0))
    return sigmas


class AntiAliasedSpacingd(Spacingd):
    """``Spacingd`` that blurs the axes it makes coarser before it resamples them (anti-aliasing).

    Same arguments, outputs and inverse as :class:`monai.transforms.Spacingd` (the inverse resamples
    back; the blur is not undone, as a prediction written back on the input's grid needs no
    un-blurring). The blur is applied to the keys listed in ``smooth_keys`` (images; never label
    maps), with :func:`anti_aliasing_sigma` computed from each image's own spacing.

    Args:
        keys: keys to resample.
        pixdim: output voxel spacing (mm), as for ``Spacingd``.
        smooth_keys: keys to blur first (default: all ``keys``); give only the image when labels
            are resampled too.
        anti_aliasing: blur first (``False``: exactly ``Spacingd``).
        kwargs: the other ``Spacingd`` arguments (``mode``, ``dtype``, ...).
    """

    def __init__(
        self,
        keys: KeysCollection,
        pixdim: Sequence[float] | float | np.ndarray,
        smooth_keys: KeysCollection | None = None,
        anti_aliasing: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(keys, pixdim, **kwargs)
        if not isinstance(anti_aliasing, bool):
            raise TypeError(f"anti_aliasing must be a bool, got {anti_aliasing!r}.")
        chosen = self.keys if smooth_keys is None else ((smooth_keys,) if isinstance(smooth_keys, str) else tuple(smooth_keys))
        unknown = [k for k in chosen if k not in self.keys]
        if unknown:
            raise ValueError(f"smooth_keys {unknown} are not among keys {list(self.keys)}.")
        self.smooth_keys = tuple(chosen)
        self.anti_aliasing = anti_aliasing

    def __call__(self, data: Mapping[Hashable, Any], lazy: bool | None = None) -> dict[Hashable, Any]:
        d = dict(data)
        if self.anti_aliasing:
            for key in self.key_iterator(d):
                if key in self.smooth_keys:
                    d[key] = self._blur(d[key], key)
        return super().__call__(d, lazy=lazy)

    def _blur(self, img: Any, key: Hashable) -> Any:
        if not isinstance(img, MetaTensor):
            raise TypeError(f"data[{key!r}] must be a MetaTensor with an affine (loaded by LoadScand/LoadImaged), got {type(img).__name__}.")
        spatial = img.ndim - 1
        spacing = [float(s) for s in img.pixdim[:spatial]]
        # the output spacing as Spacing reads its pixdim: cut to the spatial rank, padded with the last value
        target = [float(t) for t in self.spacing_transform.pixdim[:spatial]]
        target += [target[-1]] * (spatial - len(target))
        sigma = anti_aliasing_sigma(spacing, target)
        if not any(s > 0 for s in sigma):
            return img
        smoothed = GaussianSmooth(sigma=sigma)(img.as_tensor().float())
        return MetaTensor(torch.as_tensor(smoothed, dtype=img.dtype), meta=img.meta, applied_operations=img.applied_operations)
