"""Slice views of a 3D volume: axial, coronal or sagittal slices for a 2.5D network.

A 2.5D network sees one plane. Trained on axial slices only, it decides what is brain from axial
cross-sections, and where those are unusual (the skull base of a real head, a lesion beside a
ventricle) it has no second opinion. FastSurferCNN (Henschel et al., NeuroImage 2020) runs 2D
networks on the axial, coronal and sagittal slices of a volume and aggregates their probabilities
("view aggregation"). Here one network learns all three views: :class:`RandSliceViewd` turns each
training volume so that the chosen view's slice axis is the last spatial axis (which the slice
stacks cut along), and :class:`medmamba.inferers.MultiViewInferer` runs the same network on every
view of a volume and averages the class probabilities.

The views of a RAS volume ``(..., X, Y, Z)`` (X left-right, Y posterior-anterior, Z inferior-superior):

- ``axial``: slices along Z, each ``(X, Y)`` (the volume as it is);
- ``coronal``: slices along Y, each ``(X, Z)``;
- ``sagittal``: slices along X, each ``(Y, Z)``.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform, Randomizable

__all__ = ["SLICE_VIEWS", "RandSliceViewd", "check_views", "from_view", "to_view"]

#: view -> order of the spatial axes (X, Y, Z) that puts its slice axis last
SLICE_VIEWS: dict[str, tuple[int, int, int]] = {"axial": (0, 1, 2), "coronal": (0, 2, 1), "sagittal": (1, 2, 0)}


def check_views(views: Sequence[str], name: str = "views") -> tuple[str, ...]:
    """``views`` as a tuple, or ``ValueError`` naming ``name`` for an empty, unknown or repeated view."""
    if isinstance(views, str):
        views = [views]
    out = tuple(str(v) for v in views)
    if not out or any(v not in SLICE_VIEWS for v in out) or len(set(out)) != len(out):
        raise ValueError(f"{name} must be distinct views out of {list(SLICE_VIEWS)}, got {views!r}.")
    return out


def _spatial_permutation(ndim: int, view: str, inverse: bool = False) -> list[int]:
    order = list(SLICE_VIEWS[view])
    if inverse:
        order = [order.index(axis) for axis in range(3)]
    lead = ndim - 3
    return list(range(lead)) + [lead + axis for axis in order]


def to_view(volume: Any, view: str) -> Any:
    """``volume`` (``(..., X, Y, Z)``, tensor or array) with its spatial axes ordered so that ``view``'s
    slice axis is last; a ``MetaTensor``'s affine columns are reordered with them (same world positions)."""
    check_views([view], "view")
    perm = _spatial_permutation(volume.ndim, view)
    if isinstance(volume, MetaTensor):
        out = volume.permute(*perm)
        if out.affine is not None and out.affine.ndim == 2 and view != "axial":
            affine = out.affine.clone()
            affine[:3, :3] = volume.affine[:3, :3][:, list(SLICE_VIEWS[view])]
            out.affine = affine
        return out
    if isinstance(volume, torch.Tensor):
        return volume.permute(*perm)
    return np.transpose(volume, perm)


def from_view(volume: Any, view: str) -> Any:
    """The inverse of :func:`to_view` for a tensor or array (``(..., X', Y', Z')`` back to ``(..., X, Y, Z)``)."""
    check_views([view], "view")
    perm = _spatial_permutation(volume.ndim, view, inverse=True)
    return volume.permute(*perm) if isinstance(volume, torch.Tensor) else np.transpose(volume, perm)


class RandSliceViewd(Randomizable, MapTransform):
    """Turn the volumes under ``keys`` to a randomly drawn slice view (the same view for every key).

    Put before :class:`medmamba.transforms.SliceStackd` (which cuts along the last spatial axis) so
    that one 2.5D network learns axial, coronal and sagittal slices.

    Args:
        keys: keys of channel-first volumes ``(C, X, Y, Z)`` (image and labels alike).
        views: the views to draw from (see the module docstring).
        weights: relative frequency of each view (``None``: equal).
        allow_missing_keys: skip absent keys.

    Raises:
        ValueError: for unknown or repeated views, or weights that do not match them or are not
            non-negative with a positive sum.
    """

    def __init__(self, keys: KeysCollection, views: Sequence[str] = ("axial", "coronal", "sagittal"),
                 weights: Sequence[float] | None = None, allow_missing_keys: bool = False) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        self.views = check_views(views)
        w = np.ones(len(self.views)) if weights is None else np.asarray(weights, dtype=float)
        if w.shape != (len(self.views),) or (w < 0).any() or not w.sum() > 0:
            raise ValueError(f"weights must be {len(self.views)} non-negative numbers with a positive sum "
                             f"(one per view of {list(self.views)}), got {weights!r}.")
        self.weights = w / w.sum()
        self.view = self.views[0]

    def randomize(self, data: Any = None) -> None:
        self.view = self.views[int(self.R.choice(len(self.views), p=self.weights))]

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        self.randomize()
        d = dict(data)
        for key in self.key_iterator(d):
            if d[key].ndim != 4:
                raise ValueError(f"{key!r} must be a channel-first volume (C, X, Y, Z), got shape {tuple(d[key].shape)}.")
            d[key] = to_view(d[key], self.view)
        return d
