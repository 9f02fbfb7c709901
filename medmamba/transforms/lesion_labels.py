"""Lesion labels from lesion masks: per-slice labels of a volume, the label of a 2.5D sample, lesion as a tissue class.

A slice is *positive* with at least ``min_voxels`` lesion voxels, *negative* with none, and
:data:`AMBIGUOUS` in between (left out of slice-level metrics such as
:class:`medmamba.metrics.LesionMetric`). ``min_voxels`` defaults to 5, the rule of the default data
set's ``datalist_classification_slice.json`` (the classification bundle passes it explicitly as
``min_lesion_voxels``; :data:`medmamba.apps.classification.MIN_LESION_VOXELS`).
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform
from monai.utils import convert_to_dst_type

__all__ = [
    "AMBIGUOUS",
    "LesionTissueLabeld",
    "SampleLesionLabeld",
    "SliceLesionLabelsd",
    "slice_lesion_labels",
]

#: Slice label of slices with some lesion voxels but fewer than ``min_voxels`` (left out of metrics).
AMBIGUOUS = -1


def check_positive_int(name: str, value: Any) -> int:
    """``value`` as an int, or a ``ValueError`` naming ``name`` unless it is a positive integer."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}.")
    return int(value)


def _check_axis(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not -3 <= value <= 2:
        raise ValueError(f"spatial_axis must be an int in [-3, 2] (one of the 3 spatial axes), got {value!r}.")
    return int(value) % 3


def as_type_of(template: Any, array: np.ndarray) -> Any:
    """``array`` as the type (and meta data) of ``template``."""
    return convert_to_dst_type(array, template, dtype=getattr(template, "dtype", None))[0]


def slice_lesion_labels(mask: Any, spatial_axis: int = 2, min_voxels: int = 5) -> torch.Tensor:
    """Per-slice lesion labels of a channel-first mask ``(C, H, W, D)``.

    Args:
        mask: lesion mask (any channel count; a voxel is lesion where any channel is > 0).
        spatial_axis: the slice axis (0, 1 or 2; 2 = axial for RAS volumes).
        min_voxels: lesion voxels that make a slice positive (5: the default data set's rule).

    Returns:
        ``int64`` tensor ``(S,)``: 1 with at least ``min_voxels`` lesion voxels, 0 with none,
        :data:`AMBIGUOUS` (-1) in between.

    Raises:
        ValueError: if ``mask`` is not 4D or the arguments are invalid.
    """
    axis = _check_axis(spatial_axis)
    min_voxels = check_positive_int("min_voxels", min_voxels)
    m = torch.as_tensor(mask)
    if m.ndim != 4:
        raise ValueError(f"mask must be a channel-first volume (C, H, W, D), got shape {tuple(m.shape)}.")
    fg = (m > 0).any(dim=0)
    counts = fg.movedim(axis, 0).reshape(fg.shape[axis], -1).sum(dim=1)
    labels = torch.zeros_like(counts, dtype=torch.int64)
    labels[counts >= min_voxels] = 1
    labels[(counts > 0) & (counts < min_voxels)] = AMBIGUOUS
    return labels


class _MaskToLabeld(MapTransform):
    """Replace one lesion mask by the labels derived from it (the shared part of the label transforms).

    Subclasses implement :meth:`labels`; ``label_key``, ``min_voxels`` and ``delete_mask`` are
    handled here.
    """

    def __init__(
        self,
        keys: KeysCollection,
        label_key: str = "label",
        min_voxels: int = 5,
        delete_mask: bool = True,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        if len(self.keys) != 1:
            raise ValueError(f"keys must name one mask, got {list(self.keys)}.")
        self.label_key = label_key
        self.min_voxels = check_positive_int("min_voxels", min_voxels)
        self.delete_mask = bool(delete_mask)

    def labels(self, key: Hashable, mask: Any) -> torch.Tensor:
        """The labels of ``mask`` (found under ``key``)."""
        raise NotImplementedError

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[self.label_key] = self.labels(key, d[key])
            if self.delete_mask and key != self.label_key:
                del d[key]
        return d


class SliceLesionLabelsd(_MaskToLabeld):
    """Replace a volume's lesion mask by its per-slice labels (for validation and evaluation).

    ``data[label_key]`` becomes the ``(S,)`` labels of :func:`slice_lesion_labels` (1 / 0 /
    :data:`AMBIGUOUS`); the volume label ("lesion present": any lesion voxel) is ``(labels != 0).any()``,
    which :class:`medmamba.metrics.LesionMetric` derives itself.

    Args:
        keys: the mask key (one).
        label_key: where to write the labels (default ``"label"``, what MONAI's evaluators read).
        spatial_axis: the slice axis (2: axial).
        min_voxels: lesion voxels that make a slice positive (5: the default data set's rule).
        delete_mask: drop the mask from the dictionary afterwards (when it is not ``label_key``).
        allow_missing_keys: skip absent keys.
    """

    def __init__(
        self,
        keys: KeysCollection,
        label_key: str = "label",
        spatial_axis: int = 2,
        min_voxels: int = 5,
        delete_mask: bool = True,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, label_key, min_voxels, delete_mask, allow_missing_keys)
        self.spatial_axis = _check_axis(spatial_axis)

    def labels(self, key: Hashable, mask: Any) -> torch.Tensor:
        """Per-slice labels of the volume ``mask``."""
        return slice_lesion_labels(mask, self.spatial_axis, self.min_voxels)


class SampleLesionLabeld(_MaskToLabeld):
    """Replace the centre-slice mask of a 2.5D sample by its label (for training).

    Runs after :class:`medmamba.transforms.SliceStackd`, which leaves the centre slice ``(C, H, W)``
    of the lesion mask under its key. The label is 1 with at least ``min_voxels`` lesion voxels,
    else 0 (ambiguous slices count as negatives, or as ``ambiguous_value`` when given).

    Args:
        keys: the (sliced) mask key (one).
        label_key: where to write the label (``int64`` scalar).
        min_voxels: lesion voxels that make the slice positive (5: the default data set's rule).
        ambiguous_value: label of slices with 1 .. ``min_voxels - 1`` lesion voxels.
        delete_mask: drop the mask afterwards (when it is not ``label_key``).
        allow_missing_keys: skip absent keys.
    """

    def __init__(
        self,
        keys: KeysCollection,
        label_key: str = "label",
        min_voxels: int = 5,
        ambiguous_value: int = 0,
        delete_mask: bool = True,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, label_key, min_voxels, delete_mask, allow_missing_keys)
        self.ambiguous_value = int(ambiguous_value)

    def labels(self, key: Hashable, mask: Any) -> torch.Tensor:
        """The ``int64`` scalar label of the slice mask ``mask``."""
        m = torch.as_tensor(mask)
        if m.ndim != 3:
            raise ValueError(f"data[{key!r}] must be a 2D slice mask (C, H, W), got shape {tuple(m.shape)}.")
        n = int((m > 0).any(dim=0).sum())
        value = 1 if n >= self.min_voxels else (0 if n == 0 else self.ambiguous_value)
        return torch.tensor(value, dtype=torch.int64)


class LesionTissueLabeld(MapTransform):
    """Write the lesion mask into a tissue label map as one more class (the dense training target).

    The lesion-map classifier (:class:`medmamba.networks.LesionMapClassifier` on a
    :class:`~medmamba.networks.MobileMambaSeg`) is trained as a segmentation network on tissue *and*
    lesion classes: background, the tissues of the label map, and lesion on top. The tissue classes
    cost nothing (the default data set ships them) and teach the network the anatomy a lesion has
    to stand out from. The result replaces ``keys`` (the tissue map); voxels of the mask become
    ``lesion_value``.

    Args:
        keys: the tissue label map key (one; updated).
        lesion_key: the lesion mask key (read; non-zero voxels are lesion).
        lesion_value: the lesion class index (default 4: after the background and the three
            tissues of the default data set's ``tissue.nii.gz``, CSF, GM and WM; the classification
            bundle passes it as ``lesion_class``, :data:`medmamba.apps.classification.LESION_CLASS`).
        allow_missing_keys: leave data without ``keys`` unchanged.

    Raises:
        ValueError: more than one key, ``lesion_value < 1``, or a mask whose shape differs from the
            label map's.
    """

    def __init__(self, keys: KeysCollection, lesion_key: str = "lesion", lesion_value: int = 4, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        if len(self.keys) != 1:
            raise ValueError(f"keys must name one label map, got {list(self.keys)}.")
        self.lesion_key = lesion_key
        self.lesion_value = check_positive_int("lesion_value", lesion_value)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            if self.lesion_key not in d:
                raise KeyError(f"LesionTissueLabeld needs the lesion mask {self.lesion_key!r} in the data.")
            tissue = torch.as_tensor(d[key])
            lesion = torch.as_tensor(d[self.lesion_key])
            if tuple(tissue.shape) != tuple(lesion.shape):
                raise ValueError(
                    f"data[{self.lesion_key!r}] has shape {tuple(lesion.shape)}, expected the label map's {tuple(tissue.shape)}."
                )
            merged = tissue.clone()
            merged[lesion > 0] = self.lesion_value
            d[key] = as_type_of(d[key], merged.cpu().numpy())
        return d
