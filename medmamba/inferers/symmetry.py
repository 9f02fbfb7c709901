"""The brain's mid-sagittal plane: found by symmetry, and reflections about it.

A head is rarely upright in its grid: turned or tilted by a few degrees, its left-right mirror is a
plane oblique to the grid. :func:`symmetry_plane` finds the plane whose reflection maps a map of the
brain (the brain extraction's white-matter probability) onto itself best; :func:`white_matter_plane`
does so for the brain extraction's records of one volume; :func:`mirrored_mask` (numpy) and
:func:`reflected` (torch, on the map's device) reflect a volume about it, to the nearest voxel.
The classification bundle's ``aligned_mirror`` read-out
(:class:`medmamba.inferers.MirrorContrastInferer`) and its dark-asymmetry rule
(:class:`medmamba.inferers.DarkAsymmetryRule`) use one plane per volume.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from medmamba.inferers.argument_checks import check_count

__all__ = ["mirrored_mask", "reflected", "symmetry_plane", "white_matter_plane"]


def symmetry_plane(
    image: np.ndarray,
    brain: np.ndarray,
    axis: int = 0,
    coarse_degrees: Sequence[float] = (-12.0, -8.0, -4.0, 0.0, 4.0, 8.0, 12.0),
    fine_degrees: Sequence[float] = (-2.0, -1.0, 0.0, 1.0, 2.0),
) -> tuple[np.ndarray, np.ndarray]:
    """The brain's mid-sagittal plane: the reflection that best maps ``image`` inside ``brain`` onto itself.

    The plane passes through the brain's centre of mass; its normal is the left-right ``axis`` turned by
    two angles (towards each of the other two axes: a head turned and tilted in the grid). The angles
    are searched for the largest normalised correlation between the image (smoothed by one voxel) and its
    reflection: every pair of ``coarse_degrees`` on every second voxel, then each angle in turn by
    ``fine_degrees`` around the best, on every voxel.

    Args:
        image: ``(H, W, D)`` map whose symmetry is sought (the tissue pass's white-matter probability).
        brain: boolean ``(H, W, D)`` brain mask; ``image`` outside it is not used.
        axis: the left-right axis.
        coarse_degrees: the first search's angles.
        fine_degrees: the second search's steps around the first's best.

    Returns:
        ``(point, normal)``: a point of the plane and its unit normal, in voxel coordinates of the grid.
        The search is in voxel coordinates: a mirror plane for grids of equal spacing on every axis (the
        bundles' 2 mm grids).

    Raises:
        ValueError: shapes differ, not 3D, an empty ``brain`` or ``axis`` out of range.
    """
    from scipy import ndimage

    if image.shape != brain.shape or image.ndim != 3:
        raise ValueError(f"image {image.shape} and brain {brain.shape} must be the same 3D grid.")
    if not -image.ndim <= axis < image.ndim:
        raise ValueError(f"axis={axis} is out of range for a {image.ndim}D image.")
    if not brain.any():
        raise ValueError("brain is empty: no plane to fit.")
    axis = axis % image.ndim
    others = [d for d in range(3) if d != axis]
    where = np.argwhere(brain)
    centre = where.mean(axis=0)
    low, high = where.min(axis=0), where.max(axis=0) + 1
    box = tuple(slice(a, b) for a, b in zip(low, high))
    masked = ndimage.gaussian_filter(np.where(brain, image, 0.0).astype(np.float32)[box], 1.0)
    grids = {1: (masked, centre - low), 2: (masked[::2, ::2, ::2], (centre - low) / 2.0)}

    def normal_of(first: float, second: float) -> np.ndarray:
        normal = np.zeros(3)
        normal[axis] = 1.0
        normal[others[0]], normal[others[1]] = np.tan(np.radians(first)), np.tan(np.radians(second))
        return normal / np.linalg.norm(normal)

    def similarity(first: float, second: float, step: int) -> float:
        values, point = grids[step]
        normal = normal_of(first, second)
        reflected = ndimage.affine_transform(values, *_reflection(point, normal), order=1)
        return float((values * reflected).sum() / (np.sqrt((values**2).sum() * (reflected**2).sum()) + 1e-12))

    _, first, second = max((similarity(a, b, 2), a, b) for a in coarse_degrees for b in coarse_degrees)
    _, first = max((similarity(first + a, second, 1), first + a) for a in fine_degrees)  # then at full resolution,
    _, second = max((similarity(first, second + b, 1), second + b) for b in fine_degrees)  # one angle at a time
    return centre, normal_of(first, second)


def mirrored_mask(mask: np.ndarray, point: np.ndarray, normal: np.ndarray) -> np.ndarray:
    """A boolean mask reflected about the plane through ``point`` with unit ``normal`` (nearest voxel).

    Args:
        mask: boolean ``(H, W, D)``.
        point, normal: the plane in voxel coordinates (:func:`symmetry_plane`).

    Returns:
        The reflection, ``False`` where it falls outside the grid.

    Raises:
        ValueError: ``point`` or ``normal`` not of the mask's dimension, or a zero ``normal``.
    """
    from scipy import ndimage

    point, normal = np.asarray(point, dtype=np.float64), np.asarray(normal, dtype=np.float64)
    if point.shape != (mask.ndim,) or normal.shape != (mask.ndim,) or not np.linalg.norm(normal) > 0:
        raise ValueError(f"point {point.shape} and normal {normal.shape} must be {mask.ndim} coordinates, the normal not zero.")
    matrix, offset = _reflection(point, normal / np.linalg.norm(normal))
    return ndimage.affine_transform(mask.astype(np.uint8), matrix, offset=offset, order=0, mode="constant", cval=0) > 0


def _reflection(point: np.ndarray, normal: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(matrix, offset)`` of scipy's ``affine_transform`` for the reflection about the plane through ``point``
    with unit ``normal``: ``x -> x - 2 (n . x) n + 2 (n . p) n`` (a reflection is its own inverse)."""
    return np.eye(normal.size) - 2.0 * np.outer(normal, normal), 2.0 * float(normal @ point) * normal


def reflected(volume: torch.Tensor, point: np.ndarray, normal: np.ndarray, fill: float = 0.0) -> torch.Tensor:
    """A volume reflected about the plane through ``point`` with unit ``normal``, to the nearest voxel.

    ``out[x] = volume[round(x - 2 (n . (x - p)) n)]``, ``fill`` where ``x - 2 (n . (x - p)) n`` lies outside
    the grid: the same reflection as :func:`mirrored_mask` (scipy), computed with torch on the volume's device.

    Args:
        volume: ``(H, W, D)`` tensor.
        point, normal: the plane in voxel coordinates (:func:`symmetry_plane`).
        fill: the value where the reflection falls outside the grid.

    Returns:
        The reflection, same shape, dtype and device.

    Raises:
        ValueError: ``volume`` not 3D, ``point`` or ``normal`` not 3 coordinates, or a zero ``normal``.
    """
    point, normal = np.asarray(point, dtype=np.float64), np.asarray(normal, dtype=np.float64)
    if volume.ndim != 3 or point.shape != (3,) or normal.shape != (3,) or not np.linalg.norm(normal) > 0:
        raise ValueError(f"volume {tuple(volume.shape)} must be 3D and point {point.shape}, normal {normal.shape} "
                         f"3 coordinates, the normal not zero.")
    normal = normal / np.linalg.norm(normal)
    device = volume.device
    n = torch.as_tensor(normal, dtype=torch.float64, device=device)
    axes = [torch.arange(size, dtype=torch.float64, device=device) for size in volume.shape]
    grid = torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1)  # (H, W, D, 3)
    distance = grid @ n - float(normal @ point)
    exact = grid - 2.0 * distance[..., None] * n
    last = torch.as_tensor(volume.shape, dtype=torch.float64, device=device) - 1
    inside = ((exact >= 0) & (exact <= last)).all(dim=-1)  # as scipy's mode="constant": outside before rounding
    source = torch.round(exact).long()
    out = torch.full_like(volume, fill)
    index = source[inside]
    out[inside] = volume[index[:, 0], index[:, 1], index[:, 2]]
    return out


def white_matter_plane(
    brain: np.ndarray, white_matter_probability: np.ndarray, core: int = 2, axis: int = 0
) -> tuple[np.ndarray, np.ndarray] | None:
    """The mid-sagittal plane of one extracted brain: :func:`symmetry_plane` of its white-matter map.

    Args:
        brain: boolean ``(H, W, D)`` extracted brain.
        white_matter_probability: ``(H, W, D)`` the tissue pass's white-matter probability.
        core: voxels next to the brain's edge left out of the fit (an erosion by this many voxels).
        axis: the left-right axis.

    Returns:
        ``(point, normal)``, or ``None`` where the brain's core is empty or holds no white matter
        (``p > 0.5``): nothing to fit.

    Raises:
        ValueError: shapes differ, or ``core`` is not an int >= 0.
    """
    from scipy import ndimage

    if brain.shape != white_matter_probability.shape or brain.ndim != 3:
        raise ValueError(f"brain {brain.shape} and white_matter_probability {white_matter_probability.shape} "
                         f"must be the same 3D grid.")
    core = check_count("core", core)
    brain = brain.astype(bool)
    inner = ndimage.binary_erosion(brain, ndimage.generate_binary_structure(3, 1), iterations=int(core)) if core else brain
    if not (white_matter_probability[inner] > 0.5).any():
        return None
    return symmetry_plane(white_matter_probability, inner, axis)
