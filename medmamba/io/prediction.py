"""Predictions back to the input's geometry, written as NIfTI.

A network sees the image after the preprocessing pipeline (orientation, spacing, crop, padding).
:func:`invert_prediction` undoes every recorded spatial transform with MONAI's ``Invertd``, so
the prediction lands on the voxel grid of the loaded scan; :func:`write_mask_nifti` and
:func:`write_probabilities_nifti` then write it with that grid's affine (for a DICOM input, the
RAS affine of the series as loaded). Only the array and the affine are written: no metadata.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.data import MetaTensor
from monai.transforms import Invertd, Transform

from medmamba.io.nifti import write_nifti

__all__ = ["invert_prediction", "write_mask_nifti", "write_probabilities_nifti"]


def invert_prediction(
    data: Mapping[str, Any],
    preprocessing: Transform,
    pred_key: str = "pred",
    image_key: str = "image",
    nearest: bool = True,
) -> MetaTensor:
    """Map a prediction from the preprocessed space back to the loaded scan's grid.

    Args:
        data: The preprocessed data dict: ``image_key`` holds the transformed image (a
            ``MetaTensor`` with its ``applied_operations``), ``pred_key`` the prediction, channel-first,
            on the same grid (a plain tensor gets the image's metadata).
        preprocessing: The (invertible) transform that produced ``data[image_key]``.
        pred_key: Key of the prediction.
        image_key: Key of the transformed image.
        nearest: Nearest-neighbour interpolation (labels); ``False`` for probabilities.

    Returns:
        The prediction on the original grid, with the original affine.

    Raises:
        KeyError: If a key is missing.
        ValueError: If the prediction's spatial shape differs from the image's.
    """
    if image_key not in data or pred_key not in data:
        raise KeyError(f"data must hold {image_key!r} and {pred_key!r}; it has {sorted(map(str, data))}")
    img = data[image_key]
    pred = data[pred_key]
    if tuple(pred.shape[1:]) != tuple(img.shape[1:]):
        raise ValueError(f"prediction spatial shape {tuple(pred.shape[1:])} != image spatial shape {tuple(img.shape[1:])}")
    if not isinstance(pred, MetaTensor):
        pred = MetaTensor(torch.as_tensor(pred), affine=img.affine, meta=dict(img.meta))
    d = dict(data)
    d[pred_key] = pred
    out = Invertd(keys=pred_key, transform=preprocessing, orig_keys=image_key, nearest_interp=nearest)(d)
    return out[pred_key]


def _spatial(arr: torch.Tensor | np.ndarray) -> np.ndarray:
    a = arr.detach().cpu().numpy() if isinstance(arr, torch.Tensor) else np.asarray(arr)
    return a


def _affine_of(img: Any, affine: np.ndarray | None) -> np.ndarray:
    if affine is not None:
        return np.asarray(affine, dtype=float)
    if isinstance(img, MetaTensor):
        return img.affine.detach().cpu().numpy().astype(float)
    raise ValueError("affine is required when the prediction is not a MetaTensor")


def write_mask_nifti(
    path: str | os.PathLike[str], mask: torch.Tensor | np.ndarray, affine: np.ndarray | None = None
) -> Path:
    """Write a label map as an integer NIfTI (uint8, or uint16 above 255), atomically.

    Args:
        path: ``.nii.gz`` or ``.nii`` destination.
        mask: ``(1, X, Y, Z)`` channel-first or ``(X, Y, Z)`` labels (a ``MetaTensor`` brings its affine).
        affine: RAS affine (default: the ``MetaTensor``'s).

    Returns:
        The destination path.

    Raises:
        ValueError: For a multi-channel mask, negative or non-integer labels, or no affine.
    """
    aff = _affine_of(mask, affine)
    a = _spatial(mask)
    if a.ndim == 4:
        if a.shape[0] != 1:
            raise ValueError(f"mask must have one channel, got shape {a.shape}; argmax the probabilities first")
        a = a[0]
    if a.size and (a.min() < 0 or not np.all(np.equal(np.mod(a, 1), 0))):
        raise ValueError("mask must hold non-negative integer labels")
    dtype = np.uint8 if (a.size == 0 or a.max() <= 255) else np.uint16
    return write_nifti(path, a.astype(dtype), aff, dtype=dtype)


def write_probabilities_nifti(
    path: str | os.PathLike[str], probs: torch.Tensor | np.ndarray, affine: np.ndarray | None = None
) -> Path:
    """Write class probabilities ``(C, X, Y, Z)`` as a 4D float32 NIfTI ``(X, Y, Z, C)``, atomically.

    Args:
        path: ``.nii.gz`` or ``.nii`` destination.
        probs: Channel-first probabilities (a ``MetaTensor`` brings its affine).
        affine: RAS affine (default: the ``MetaTensor``'s).

    Returns:
        The destination path.

    Raises:
        ValueError: If ``probs`` is not 3D/4D channel-first or has no affine.
    """
    aff = _affine_of(probs, affine)
    a = _spatial(probs).astype(np.float32)
    if a.ndim not in (3, 4):
        raise ValueError(f"probs must be channel-first (C, X, Y[, Z]), got shape {a.shape}")
    return write_nifti(path, np.moveaxis(a, 0, -1), aff, dtype=np.float32)
