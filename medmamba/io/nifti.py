"""Writing NIfTI files reproducibly and atomically.

nibabel's own ``.nii.gz`` writer puts the current time in the gzip header, so the same volume gives
different bytes on each run. :func:`nifti_bytes` serialises the image and gzips it with a zero
modification time and no file name; :func:`write_nifti` writes that through a temporary file and a
rename.
"""

from __future__ import annotations

import os
from pathlib import Path

import nibabel as nib
import numpy as np

from medmamba.io.atomic import atomic_write_bytes, gzip_bytes

__all__ = ["nifti_bytes", "write_nifti"]


def _is_orthogonal(affine: np.ndarray) -> bool:
    m = affine[:3, :3]
    g = m.T @ m
    return bool(np.allclose(g, np.diag(np.diag(g)), atol=1e-4 * max(1.0, float(np.max(np.abs(g))))))


def nifti_bytes(
    array: np.ndarray,
    affine: np.ndarray,
    *,
    dtype: np.dtype | type | str | None = None,
    scl_slope: float | None = None,
    scl_inter: float | None = None,
    xform_code: int = 1,
    compress: bool = True,
    compresslevel: int = 6,
) -> bytes:
    """Serialise an image as NIfTI-1 bytes (gzipped reproducibly when ``compress``).

    Args:
        array: Spatial-first data ``(X, Y, Z[, ...])`` (NIfTI layout, not channel-first).
        affine: 4x4 voxel-to-RAS affine.
        dtype: On-disk data type (default: the array's).
        scl_slope: NIfTI scaling slope: stored values are ``(array - scl_inter) / scl_slope``
            rounded to ``dtype``. ``None`` stores values unscaled.
        scl_inter: NIfTI scaling intercept (with ``scl_slope``).
        xform_code: sform/qform code (1 scanner, 2 aligned, 3 Talairach, 4 MNI152).
        compress: Gzip the result (for ``.nii.gz``).
        compresslevel: Gzip level.

    Returns:
        The file content.

    Raises:
        ValueError: If ``affine`` is not 4x4 or ``array`` has fewer than 2 dimensions.
    """
    arr = np.asarray(array)
    aff = np.asarray(affine, dtype=float)
    if aff.shape != (4, 4):
        raise ValueError(f"affine must be 4x4, got shape {aff.shape}")
    if arr.ndim < 2:
        raise ValueError(f"array must have at least 2 dimensions, got shape {arr.shape}")
    out_dtype = np.dtype(dtype) if dtype is not None else arr.dtype
    if out_dtype == np.bool_:
        out_dtype = np.dtype(np.uint8)
    if scl_slope is not None:
        inter = 0.0 if scl_inter is None else float(scl_inter)
        stored = np.round((arr.astype(np.float64) - inter) / float(scl_slope))
        info = np.iinfo(out_dtype) if np.issubdtype(out_dtype, np.integer) else None
        if info is not None:
            stored = np.clip(stored, info.min, info.max)
        data = stored.astype(out_dtype)
    else:
        data = arr.astype(out_dtype, copy=False)
    img = nib.Nifti1Image(data, aff)
    hdr = img.header
    hdr.set_data_dtype(out_dtype)
    img.set_sform(aff, code=int(xform_code))
    if _is_orthogonal(aff):
        img.set_qform(aff, code=int(xform_code))
    else:
        img.set_qform(None, code=0)
    hdr.set_xyzt_units("mm", "sec")
    if scl_slope is not None:
        hdr["scl_slope"] = float(scl_slope)
        hdr["scl_inter"] = 0.0 if scl_inter is None else float(scl_inter)
    else:
        hdr["scl_slope"] = np.nan
        hdr["scl_inter"] = np.nan
    raw = img.to_bytes()
    return gzip_bytes(raw, compresslevel) if compress else raw


def write_nifti(
    path: str | os.PathLike[str],
    array: np.ndarray,
    affine: np.ndarray,
    **kwargs: object,
) -> Path:
    """Write a NIfTI file atomically; ``.nii.gz`` paths are gzipped reproducibly.

    Args:
        path: Destination (``.nii`` or ``.nii.gz``).
        array: Spatial-first data.
        affine: 4x4 voxel-to-RAS affine.
        **kwargs: Passed to :func:`nifti_bytes` (``dtype``, ``scl_slope``, ``scl_inter``, ...).

    Returns:
        The destination path.

    Raises:
        ValueError: If ``path`` does not end in ``.nii`` or ``.nii.gz``.
    """
    p = Path(path)
    name = p.name.lower()
    if not (name.endswith(".nii") or name.endswith(".nii.gz")):
        raise ValueError(f"path={str(p)!r} must end in .nii or .nii.gz")
    kwargs = dict(kwargs)
    kwargs["compress"] = name.endswith(".gz")
    return atomic_write_bytes(p, nifti_bytes(array, affine, **kwargs))  # type: ignore[arg-type]
