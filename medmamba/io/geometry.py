"""Where a preprocessed volume lies relative to the scan as loaded: source grid, slices, voxel volume.

The bundles resample every input to their training spacing (``Spacingd``) and crop/pad it; MONAI's
``Invertd`` maps voxel predictions back (:func:`medmamba.io.invert_prediction`). Per-slice outputs
(the lesion classifier's slice probabilities) are related to the input's own slices here instead:
each input slice gets the values of the network slices whose slabs overlap its slab along the
network's slice normal (:func:`slices_to_source`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from monai.data import MetaTensor

__all__ = ["slices_to_source", "source_geometry", "voxel_volume_ml"]


def _affine(value: Any) -> np.ndarray:
    a = np.asarray(torch.as_tensor(value, dtype=torch.float64).cpu().numpy(), dtype=np.float64)
    if a.shape != (4, 4):
        raise ValueError(f"expected a 4x4 affine of a 3D volume, got shape {a.shape}.")
    return a


def voxel_volume_ml(affine: Any) -> float:
    """Volume of one voxel in ml (mm³ / 1000) of a 4x4 affine in mm."""
    return abs(float(np.linalg.det(_affine(affine)[:3, :3]))) / 1000.0


def source_geometry(img: MetaTensor) -> tuple[np.ndarray, tuple[int, ...]]:
    """The affine and spatial shape of the scan an image was loaded from.

    MONAI's readers record them as ``meta["original_affine"]`` and ``meta["spatial_shape"]``, and
    spatial transforms leave those entries alone; an image without them (or a 2D one) is its own
    source.

    Args:
        img: a (preprocessed) channel-first 3D ``MetaTensor``.

    Returns:
        ``(affine 4x4, (X, Y, Z))`` of the source grid.
    """
    if not isinstance(img, MetaTensor):
        raise TypeError(f"img must be a MetaTensor, got {type(img).__name__}.")
    meta = img.meta
    affine, shape = meta.get("original_affine"), meta.get("spatial_shape")
    if affine is not None and shape is not None:
        try:
            a = _affine(affine)
            s = tuple(int(v) for v in np.asarray(torch.as_tensor(shape).cpu()).ravel())
        except (ValueError, TypeError):
            pass
        else:
            if len(s) == 3:
                return a, s
    return _affine(img.affine), tuple(int(v) for v in img.shape[1:])


def _slab_positions(affine: np.ndarray, shape: Sequence[int], axis: int, normal: np.ndarray) -> np.ndarray:
    """Positions along ``normal`` (mm) of the centres of the slices along ``axis``."""
    centre = np.array([(n - 1) / 2.0 for n in shape], dtype=np.float64)
    idx = np.repeat(centre[None], shape[axis], axis=0)
    idx[:, axis] = np.arange(shape[axis])
    world = idx @ affine[:3, :3].T + affine[:3, 3]
    return world @ normal


def slices_to_source(
    values: Sequence[float] | np.ndarray | torch.Tensor,
    affine: Any,
    shape: Sequence[int],
    source_affine: Any,
    source_shape: Sequence[int],
    axis: int = 2,
) -> dict[str, Any]:
    """Per-slice values of a (resampled, cropped) volume, expressed on the slices of its source scan.

    The network's slices are slabs along ``axis`` of the preprocessed grid; the source slices are the
    slabs along the source axis most parallel to that axis (the input's axial axis for an axial
    network). Each source slice gets the largest value of the network slices whose slabs overlap its
    own along the network's slice normal (a 5 mm input slice: the two or three 2 mm network slices
    inside it; a 1 mm one: the network slice it lies in, or both at a boundary; equal grids: the
    same slice), and ``None`` when no network slice overlaps it (cropped away as background).

    Args:
        values: one value per network slice (along ``axis`` of the preprocessed grid).
        affine: 4x4 affine of the preprocessed grid.
        shape: its spatial shape.
        source_affine: 4x4 affine of the source scan (see :func:`source_geometry`).
        source_shape: its spatial shape.
        axis: the network's slice axis in the preprocessed grid.

    Returns:
        ``{"axis": source slice axis, "positions_mm": [...], "values": [... or None],
        "network_positions_mm": [...]}`` (positions of slice centres along the network's slice
        normal, in RAS world mm).

    Raises:
        ValueError: for mismatched sizes or a degenerate affine.
    """
    v = np.asarray(torch.as_tensor(values, dtype=torch.float64).cpu().numpy(), dtype=np.float64).ravel()
    a, sa = _affine(affine), _affine(source_affine)
    shape, source_shape = [int(s) for s in shape], [int(s) for s in source_shape]
    if len(shape) != 3 or len(source_shape) != 3:
        raise ValueError(f"shape and source_shape must be 3D, got {shape} and {source_shape}.")
    if not 0 <= axis < 3 or v.size != shape[axis]:
        raise ValueError(f"values must hold one value per slice along axis {axis} of shape {shape}, got {v.size}.")
    column = a[:3, axis]
    thickness = float(np.linalg.norm(column))
    if thickness <= 0:
        raise ValueError(f"affine has a zero column {axis}: {a.tolist()}.")
    normal = column / thickness
    source_cols = sa[:3, :3]
    norms = np.linalg.norm(source_cols, axis=0)
    if np.any(norms <= 0):
        raise ValueError(f"source_affine has a zero column: {sa.tolist()}.")
    alignment = np.abs(normal @ source_cols) / norms
    source_axis = int(np.argmax(alignment))
    source_step = abs(float(normal @ source_cols[:, source_axis]))
    net_pos = _slab_positions(a, shape, axis, normal)
    src_pos = _slab_positions(sa, source_shape, source_axis, normal)
    tol = 1e-3 * min(thickness, source_step)
    out_values: list[float | None] = []
    for p in src_pos:
        top = np.minimum(net_pos + thickness / 2, p + source_step / 2)
        overlap = top - np.maximum(net_pos - thickness / 2, p - source_step / 2)
        hit = overlap > tol
        out_values.append(float(v[hit].max()) if hit.any() else None)
    return {
        "axis": source_axis,
        "positions_mm": [round(float(p), 3) for p in src_pos],
        "values": out_values,
        "network_positions_mm": [round(float(p), 3) for p in net_pos],
    }
