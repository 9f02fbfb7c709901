"""Checks of an input scan before a bundle analyses it: refuse what cannot work, flag what looks wrong.

Both bundles take one 3D MR volume of a head (or a skull-stripped brain). Inputs that are not such
a volume fail with a clear :class:`~medmamba.io.errors.ScanLoadError` (a ``ValueError``) naming
the input, the shape and voxel spacing found and what is expected (:class:`CheckScan`):

- a 4D series or a multi-channel image (more than one volume, e.g. fMRI/DWI or ``example4d.nii.gz``);
- a 2D image, a single slice or a thin slab (fewer than ``min_size`` voxels along an axis, e.g. a
  single-slice DICOM file);
- a voxel spacing that is not positive and finite, or coarser than ``max_spacing_mm``.

Inputs that load as a volume but look unlike a head MR are *flagged*, not refused
(:func:`scan_plausibility`): the heuristics below can be wrong for unusual but valid scans (a tight
field of view, partial coverage), so the case is analysed and the warnings go into its report row.
The foreground is the bundles' own (voxels above 10 % of the 99th intensity percentile, as their
foreground crop and MR normalisation use):

- CT-like intensities: more than ``max_negative_fraction`` of the voxels below -500 (air in
  Hounsfield units; MR magnitudes are not negative);
- a foreground volume outside ``foreground_ml`` (default 500-8000 ml: from a skull-stripped brain to
  a whole head with neck);
- a foreground that fills more than ``max_foreground_fraction`` of the field of view (default 0.75;
  random noise fills ~0.8-0.9, a head scan ~0.1-0.5, a tightly cropped brain ~0.55);
- a foreground bounding box longer than ``max_extent_mm`` (default 320 mm) along an axis: larger
  than a head (a chest, abdomen or whole-body scan).
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform, Transform

from medmamba.io.errors import ScanLoadError
from medmamba.transforms.mr_normalize import foreground_mask

__all__ = ["CheckScan", "CheckScand", "scan_plausibility", "scan_source", "voxel_spacing"]


def voxel_spacing(img: Any, ndim: int | None = None) -> tuple[float, ...]:
    """Voxel spacing in mm of a channel-first image, from its affine's column norms.

    Args:
        img: a ``MetaTensor`` (its ``affine``) or a ``(N+1, N+1)`` affine matrix.
        ndim: number of spatial dimensions (default: those of the image, or of the affine).

    Returns:
        One spacing per spatial axis (1.0 for axes the affine does not cover).
    """
    affine = img.affine if isinstance(img, MetaTensor) else img
    a = np.asarray(torch.as_tensor(affine, dtype=torch.float64).cpu().numpy(), dtype=np.float64)
    if ndim is None:
        ndim = img.ndim - 1 if isinstance(img, MetaTensor) else a.shape[0] - 1
    cover = min(ndim, a.shape[0] - 1)
    spacing = [float(v) for v in np.linalg.norm(a[:cover, :cover], axis=0)]
    return tuple(spacing + [1.0] * (ndim - cover))


def scan_source(img: Any) -> str:
    """The file or folder an image was loaded from (``meta["filename_or_obj"]``), or ``"<image>"``."""
    meta = getattr(img, "meta", None) or {}
    source = meta.get("filename_or_obj")
    if isinstance(source, (list, tuple)):
        source = source[0] if source else None
    return str(source) if source else "<image>"


def _fmt(values: Sequence[float]) -> str:
    return "(" + ", ".join(f"{v:.3g}" for v in values) + ")"


class CheckScan(Transform):
    """Refuse images that are not one 3D volume with a usable voxel spacing; pass the others through.

    Args:
        min_size: fewer voxels than this along any spatial axis is refused (a 2D image, a single
            slice or a thin slab); the bundles' 2.5D networks read 3 or 5 neighbouring slices.
        max_spacing_mm: coarser voxels than this along any axis are refused (``None``: no limit).

    Raises:
        ValueError: for invalid arguments.
    """

    def __init__(self, min_size: int = 5, max_spacing_mm: float | None = 10.0) -> None:
        if isinstance(min_size, bool) or not isinstance(min_size, (int, np.integer)) or min_size < 1:
            raise ValueError(f"min_size must be a positive int, got {min_size!r}.")
        if max_spacing_mm is not None and not (math.isfinite(float(max_spacing_mm)) and float(max_spacing_mm) > 0):
            raise ValueError(f"max_spacing_mm must be a positive number or None, got {max_spacing_mm!r}.")
        self.min_size = int(min_size)
        self.max_spacing_mm = None if max_spacing_mm is None else float(max_spacing_mm)

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        """Check ``img`` (channel-first, e.g. from :class:`medmamba.transforms.LoadScan`) and return it.

        Raises:
            ScanLoadError: naming the input, the shape and spacing found, and what is expected.
            TypeError: if ``img`` is not a channel-first tensor or array.
        """
        if not hasattr(img, "shape") or len(img.shape) < 2:
            raise TypeError(f"img must be a channel-first image (C, *spatial), got {type(img).__name__}.")
        where = scan_source(img)
        channels, spatial = int(img.shape[0]), tuple(int(s) for s in img.shape[1:])
        spacing = voxel_spacing(img, len(spatial)) if isinstance(img, MetaTensor) else (1.0,) * len(spatial)
        found = f"image shape {spatial}, voxel spacing {_fmt(spacing)} mm"
        if channels != 1:
            raise ScanLoadError(
                f"path={where!r}: holds {channels} volumes or channels, a 4D series or a multi-channel image "
                f"({found}); expected one 3D volume: pass a single volume of the series"
            )
        if len(spatial) != 3:
            raise ScanLoadError(
                f"path={where!r}: is a {len(spatial)}D image ({found}); expected a 3D volume with at least "
                f"{self.min_size} voxels along each axis"
            )
        thin = [axis for axis, n in enumerate(spatial) if n < self.min_size]
        if thin:
            axis = thin[0]
            raise ScanLoadError(
                f"path={where!r}: has {spatial[axis]} voxel(s) along axis {axis} ({found}), a 2D image or a thin "
                f"slab; expected a 3D volume with at least {self.min_size} voxels along each axis"
            )
        bad = [s for s in spacing if not (math.isfinite(s) and s > 0)]
        if bad:
            raise ScanLoadError(f"path={where!r}: invalid voxel spacing ({found}); expected positive, finite spacings")
        if self.max_spacing_mm is not None and max(spacing) > self.max_spacing_mm:
            raise ScanLoadError(
                f"path={where!r}: voxels of {max(spacing):.3g} mm ({found}); expected a spacing of at most "
                f"{self.max_spacing_mm:g} mm along each axis"
            )
        return img


def scan_plausibility(
    img: torch.Tensor,
    foreground_ml: Sequence[float] | None = (500.0, 8000.0),
    max_foreground_fraction: float | None = 0.75,
    max_extent_mm: float | None = 320.0,
    max_negative_fraction: float | None = 0.01,
    foreground_fraction: float = 0.1,
) -> dict[str, Any]:
    """Measures of a loaded scan and warnings where it looks unlike a head MR (see the module docs).

    Args:
        img: one channel-first 3D volume ``(1, X, Y, Z)`` (a ``MetaTensor`` brings the voxel size;
            a plain tensor counts 1 mm voxels).
        foreground_ml: plausible ``(low, high)`` foreground volume in ml (``None``: not checked).
        max_foreground_fraction: largest plausible foreground fraction of the field of view.
        max_extent_mm: longest plausible foreground bounding box side in mm.
        max_negative_fraction: largest plausible fraction of voxels below -500 (CT air).
        foreground_fraction: foreground threshold as a fraction of the 99th intensity percentile.

    Returns:
        ``{"foreground_ml", "foreground_fraction", "foreground_extent_mm", "warnings"}``
        (``warnings``: a list of sentences, empty when nothing looks wrong).

    Raises:
        ValueError: if ``img`` is not one channel-first 3D volume or ``foreground_ml`` is not a range.
    """
    if not hasattr(img, "shape") or len(img.shape) != 4 or int(img.shape[0]) != 1:
        shape = tuple(getattr(img, "shape", ()))
        raise ValueError(f"img must be one channel-first 3D volume (1, X, Y, Z), got shape {shape}.")
    if foreground_ml is not None and (len(foreground_ml) != 2 or not float(foreground_ml[0]) < float(foreground_ml[1])):
        raise ValueError(f"foreground_ml must be a (low, high) range in ml, got {foreground_ml!r}.")
    x = torch.as_tensor(img.as_tensor() if isinstance(img, MetaTensor) else img)[0].float()
    spacing = voxel_spacing(img, 3) if isinstance(img, MetaTensor) else (1.0, 1.0, 1.0)
    voxel_ml = float(np.prod(spacing)) / 1000.0
    fg = foreground_mask(x, foreground_fraction)
    n_fg = int(fg.sum())
    fraction = n_fg / max(fg.numel(), 1)
    extent = [0.0, 0.0, 0.0]
    if n_fg:
        for axis in range(3):
            present = torch.nonzero(fg.any(dim=tuple(a for a in range(3) if a != axis))).flatten()
            extent[axis] = float(present[-1] - present[0] + 1) * spacing[axis]
    out: dict[str, Any] = {
        "foreground_ml": round(n_fg * voxel_ml, 1),
        "foreground_fraction": round(fraction, 4),
        "foreground_extent_mm": [round(e, 1) for e in extent],
        "warnings": [],
    }
    warnings: list[str] = out["warnings"]
    if max_negative_fraction is not None:
        negative = float((x < -500.0).float().mean())
        if negative > max_negative_fraction:
            warnings.append(f"{100 * negative:.0f} % of the voxels are below -500, like air in a CT (Hounsfield "
                            "units); expected an MR image")
    if foreground_ml is not None and not float(foreground_ml[0]) <= out["foreground_ml"] <= float(foreground_ml[1]):
        warnings.append(f"the foreground measures {out['foreground_ml']:.0f} ml; a brain or head measures "
                        f"{float(foreground_ml[0]):.0f}-{float(foreground_ml[1]):.0f} ml")
    if max_foreground_fraction is not None and fraction > max_foreground_fraction:
        warnings.append(f"the foreground fills {100 * fraction:.0f} % of the field of view (a head scan: at most "
                        f"{100 * max_foreground_fraction:.0f} %); noise, or not a head")
    if max_extent_mm is not None and max(extent) > max_extent_mm:
        warnings.append(f"the foreground extends over {max(extent):.0f} mm (at most {max_extent_mm:.0f} mm for a "
                        "head); a body or chest scan?")
    return out


class CheckScand(MapTransform):
    """Dictionary version of :class:`CheckScan`, optionally recording :func:`scan_plausibility` warnings.

    Place it right after loading (before any resampling or cropping), so that the checks see the
    scan as it is.

    Args:
        keys: keys of the images to check.
        min_size: see :class:`CheckScan`.
        max_spacing_mm: see :class:`CheckScan`.
        warnings_key: where to store the list of plausibility warnings of the checked images
            (prefixed with the key when several keys are checked); ``None`` skips the plausibility
            measures.
        plausibility: keyword arguments of :func:`scan_plausibility` (its thresholds).
        allow_missing_keys: skip absent keys.
    """

    def __init__(
        self,
        keys: KeysCollection,
        min_size: int = 5,
        max_spacing_mm: float | None = 10.0,
        warnings_key: str | None = "scan_warnings",
        plausibility: Mapping[str, Any] | None = None,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.checker = CheckScan(min_size=min_size, max_spacing_mm=max_spacing_mm)
        if warnings_key is not None and not isinstance(warnings_key, str):
            raise TypeError(f"warnings_key must be a str or None, got {type(warnings_key).__name__}.")
        self.warnings_key = warnings_key
        self.plausibility = dict(plausibility or {})
        unknown = set(self.plausibility) - {"foreground_ml", "max_foreground_fraction", "max_extent_mm",
                                            "max_negative_fraction", "foreground_fraction"}
        if unknown:
            raise ValueError(f"plausibility has unknown keys {sorted(unknown)}; expected arguments of "
                             "scan_plausibility.")

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        """Check the images under ``keys`` (raises :class:`ScanLoadError`); record the warnings."""
        d = dict(data)
        keys = list(self.key_iterator(d))
        found: list[str] = []
        for key in keys:
            d[key] = self.checker(d[key])
            if self.warnings_key is not None:
                prefix = f"{key}: " if len(keys) > 1 else ""
                found += [prefix + w for w in scan_plausibility(d[key], **self.plausibility)["warnings"]]
        if self.warnings_key is not None:
            d[self.warnings_key] = found
        return d
