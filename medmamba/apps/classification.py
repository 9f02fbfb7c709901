"""Support code of the ``mobilemamba_classification`` bundle (2.5D lesion classification).

The bundle (``bundles/mobilemamba_classification``) classifies axial slices of a brain MR volume as
"lesion present" or not with a 2D MobileMamba fed ``2k + 1`` neighbouring slices as channels, and
classifies the volume by aggregating the per-slice scores. Its configs build everything from MONAI
and medmamba components; this module holds the pieces without a ready-made counterpart:

- labels from a lesion mask: :class:`SliceLesionLabelsd` (a volume's per-slice labels, for
  validation and evaluation) and :class:`SampleLesionLabeld` (the label of one 2.5D training sample);
  a slice is positive with at least ``min_voxels`` lesion voxels (5, the rule of the default data
  set's ``datalist_classification_slice.json``), negative with none, and *ambiguous* in between
  (left out of the slice metrics);
- :func:`lesion_log_odds` / :func:`volume_log_odds`: the per-slice lesion score (log-odds of the two
  logits) and its aggregation into one score per volume
  (:func:`medmamba.inferers.aggregate_slice_logits`, top-k mean by default);
- :class:`LesionMetric`: AUC, accuracy or F1 at slice or volume level, as an ignite metric for
  MONAI evaluators; :class:`ClassificationReport`: the flat ``metrics.json`` and per-case CSV of an
  evaluation run;
- :class:`FusedMobileMamba`: a :class:`medmamba.apps.deploy.FuseOnLoad` around ``MobileMamba``
  (BatchNorms folded as soon as its unfused weights are loaded, so ``python -m monai.bundle
  ckpt_export network_def`` writes the fused network); :func:`load_network` (checkpoint or
  TorchScript) and :func:`export_onnx` (ONNX of the fused network, and both exported files checked
  against the eager fused network) come from :mod:`medmamba.apps.deploy`;
- :class:`VolumeClassifier` and :func:`classify`: NIfTI files or DICOM series in (found by
  :func:`medmamba.data.find_scans`), ``probabilities.csv`` out (per-case lesion probability and
  label; per-slice probabilities in a JSON per case), one failing case never stopping the batch;
- :func:`rank_zero_handlers`: the training handlers a DDP process keeps (only rank 0 saves and logs).
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
import warnings
from collections.abc import Callable, Hashable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from ignite.metrics import Metric
from ignite.metrics.metric import reinit__is_reduced
from monai.config import KeysCollection
from monai.transforms import MapTransform, Randomizable

from medmamba.apps.deploy import FuseOnLoad, VolumePredictor, export_onnx, load_network
from medmamba.data.discovery import find_scans, scan_stem
from medmamba.inferers.volume_classification import AGGREGATIONS, aggregate_slice_logits
from medmamba.io.geometry import slices_to_source, source_geometry

if TYPE_CHECKING:
    from ignite.engine import Engine

__all__ = [
    "AMBIGUOUS",
    "CLASS_NAMES",
    "ClassificationReport",
    "FuseOnLoad",
    "FusedLesionMapClassifier",
    "FusedMobileMamba",
    "LesionMetric",
    "LesionTissueLabeld",
    "RandLesionInsertd",
    "RandStackLesionInsertd",
    "SampleLesionLabeld",
    "SliceLesionLabelsd",
    "VolumeClassifier",
    "classify",
    "export_onnx",
    "find_scans",
    "lesion_log_odds",
    "load_network",
    "rank_zero_handlers",
    "slice_lesion_labels",
    "volume_log_odds",
]

logger = logging.getLogger(__name__)

#: When this module was imported: a bundle imports it while parsing its config, so the time since
#: then is the run's wall time up to the moment it is read (model loading included).
_IMPORTED_AT = time.perf_counter()

#: Slice label of slices with some lesion voxels but fewer than ``min_voxels`` (left out of metrics).
AMBIGUOUS = -1
#: Class index -> name.
CLASS_NAMES: tuple[str, str] = ("no lesion", "lesion present")

_METRICS = ("auc", "accuracy", "f1")
_LEVELS = ("slice", "volume")


def _check_positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}.")
    return int(value)


def _check_axis(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not -3 <= value <= 2:
        raise ValueError(f"spatial_axis must be an int in [-3, 2] (one of the 3 spatial axes), got {value!r}.")
    return int(value) % 3


# ------------------------------------------------------------------------------------------------ labels
def slice_lesion_labels(mask: Any, spatial_axis: int = 2, min_voxels: int = 5) -> torch.Tensor:
    """Per-slice lesion labels of a channel-first mask ``(C, H, W, D)``.

    Args:
        mask: lesion mask (any channel count; a voxel is lesion where any channel is > 0).
        spatial_axis: the slice axis (0, 1 or 2; 2 = axial for RAS volumes).
        min_voxels: lesion voxels that make a slice positive.

    Returns:
        ``int64`` tensor ``(S,)``: 1 with at least ``min_voxels`` lesion voxels, 0 with none,
        :data:`AMBIGUOUS` (-1) in between.

    Raises:
        ValueError: if ``mask`` is not 4D or the arguments are invalid.
    """
    axis = _check_axis(spatial_axis)
    min_voxels = _check_positive_int("min_voxels", min_voxels)
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
        self.min_voxels = _check_positive_int("min_voxels", min_voxels)
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
    which :class:`LesionMetric` derives itself.

    Args:
        keys: the mask key (one).
        label_key: where to write the labels (default ``"label"``, what MONAI's evaluators read).
        spatial_axis: the slice axis (2: axial).
        min_voxels: lesion voxels that make a slice positive.
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
        min_voxels: lesion voxels that make the slice positive.
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
        lesion_value: the lesion class index (default 4: after background, CSF, GM, WM).
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
        self.lesion_value = _check_positive_int("lesion_value", lesion_value)

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
            d[key] = _like(d[key], merged.cpu().numpy())
        return d


class RandLesionInsertd(Randomizable, MapTransform):
    """Insert random synthetic lesions into the white matter of a training volume (augmentation).

    With probability ``prob`` a volume receives 1 .. ``max_lesions`` lesions. Each one is an
    irregular blob (a sphere of radius ``radius`` voxels, stretched per axis and distorted by smooth
    noise) centred on a white-matter voxel (``tissue == wm_label``) and clipped to the white matter
    and its one-voxel rim (:func:`medmamba.data.synthetic.white_matter_rim`: a dark blob running into
    grey matter or CSF is invisible there, and labelling it lesion teaches false positives on normal
    cortex); its voxels take ``ref + factor * (wm - ref)``, where ``wm`` is the volume's
    white-matter median, ``ref`` the volume's lowest intensity (the air after MR normalisation, so
    ``factor`` acts as an intensity ratio) and ``factor`` is drawn from ``dark_factor``
    (hypointense, probability ``dark_prob``) or ``bright_factor`` (hyperintense), with a soft edge,
    a 5 % texture and noise of the image's own level. The result is clipped to the input's own value
    range (``clip=True``). The lesion mask is updated, so the slice labels (and
    :class:`medmamba.transforms.SliceStackd`'s foreground sampling) follow.

    When to clip: the insertion runs after intensity normalisation, so a synthetic lesion should look
    like a real one after that normalisation. If the scans are clipped at an upper percentile
    (:class:`medmamba.transforms.MRNormalize` with ``upper`` set, the slice-label recipe), a real
    hyperintense lesion is never brighter than the scan's clip value, and unclipped synthetic lesions
    would reach values no real voxel has: a network then learns that shortcut ("the brightest voxels
    are lesions"); in a measured run it put confident outputs on clip-level voxels of lesion-free
    scans (see the classification bundle's README). Keep ``clip=True`` there. If the scans are not
    clipped at the top (``upper=None``, the lesion-map recipe), a real hyperintense lesion keeps its
    1.3-1.6x white-matter intensity; use ``clip=False`` so the synthetic ones do too (clipping them
    to the stack's maximum would flatten them to the brightest white matter).

    Seventeen lesions in 14 training subjects are too few to learn "abnormal blob in white matter"
    rather than those lesions; inserting new ones every epoch is the copy-paste / synthetic-lesion
    augmentation used for lesion detection with small training sets. It needs tissue labels (the
    default data set's ``tissue.nii.gz``); it is only used for training.

    Args:
        keys: the image key (one).
        mask_key: the lesion mask key (updated).
        tissue_key: the tissue label key (read); ``None`` disables the transform (no tissue labels).
        wm_label: white-matter label value.
        prob: probability of inserting lesions into a volume.
        max_lesions: most lesions per volume (at least 1 when inserting).
        radius: range of the lesion radius in voxels.
        dark_factor: range of the intensity ratio of hypointense lesions.
        bright_factor: range of the intensity ratio of hyperintense lesions.
        dark_prob: probability that a lesion is hypointense.
        clip: clip the result to the input's ``[min, max]`` (per channel of a volume, over the whole
            stack for :class:`RandStackLesionInsertd`).
        allow_missing_keys: leave volumes without the tissue or mask key unchanged.
    """

    def __init__(
        self,
        keys: KeysCollection,
        mask_key: str = "lesion",
        tissue_key: str | None = "tissue",
        wm_label: int = 3,
        prob: float = 0.5,
        max_lesions: int = 3,
        radius: Sequence[float] = (2.0, 4.5),
        dark_factor: Sequence[float] = (0.35, 0.6),
        bright_factor: Sequence[float] = (1.3, 1.6),
        dark_prob: float = 0.5,
        clip: bool = True,
        allow_missing_keys: bool = False,
    ) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        if len(self.keys) != 1:
            raise ValueError(f"keys must name one image, got {list(self.keys)}.")
        for name, value in (("prob", prob), ("dark_prob", dark_prob)):
            if not 0.0 <= float(value) <= 1.0:
                raise ValueError(f"{name} must be a probability in [0, 1], got {value!r}.")
        for name, rng_ in (("radius", radius), ("dark_factor", dark_factor), ("bright_factor", bright_factor)):
            if len(rng_) != 2 or not 0 < float(rng_[0]) <= float(rng_[1]):
                raise ValueError(f"{name} must be a (low, high) pair with 0 < low <= high, got {rng_!r}.")
        self.mask_key = mask_key
        self.tissue_key = tissue_key
        self.wm_label = int(wm_label)
        self.prob = float(prob)
        self.max_lesions = _check_positive_int("max_lesions", max_lesions)
        self.radius = (float(radius[0]), float(radius[1]))
        self.dark_factor = (float(dark_factor[0]), float(dark_factor[1]))
        self.bright_factor = (float(bright_factor[0]), float(bright_factor[1]))
        self.dark_prob = float(dark_prob)
        self.clip = bool(clip)

    def randomize(self, data: Any = None) -> int:  # type: ignore[override]
        """The number of lesions to insert this time (0: none)."""
        if self.R.rand() >= self.prob:
            return 0
        return int(self.R.randint(1, self.max_lesions + 1))

    def _lesion_region(self, tissue: np.ndarray) -> np.ndarray:
        """Where an inserted lesion may lie: the white matter and its one-voxel rim in the brain."""
        from medmamba.data.synthetic import white_matter_rim

        return white_matter_rim(tissue, self.wm_label)

    def _blob(self, wm: np.ndarray, brain: np.ndarray) -> tuple[tuple[slice, ...], np.ndarray] | None:
        from scipy import ndimage

        centres = np.argwhere(wm)
        if len(centres) == 0:
            return None
        centre = centres[self.R.randint(len(centres))]
        r = float(self.R.uniform(*self.radius))
        half = int(np.ceil(r * 1.8)) + 1
        lo = np.maximum(centre - half, 0)
        hi = np.minimum(centre + half + 1, wm.shape)
        box = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))
        idx = np.indices(tuple(int(b - a) for a, b in zip(lo, hi)), dtype=np.float32)
        anis = self.R.uniform(0.7, 1.3, 3)
        dist = np.sqrt(sum(((idx[d] + lo[d] - centre[d]) * anis[d]) ** 2 for d in range(3))) / r
        noise = ndimage.gaussian_filter(self.R.normal(size=dist.shape), sigma=max(r / 2.5, 0.8))
        noise /= noise.std() + 1e-6
        blob = ((dist + 0.3 * noise) < 1.0) & brain[box]
        return (box, blob) if blob.any() else None

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        """Insert lesions into the volumes under ``keys`` (see the class description)."""
        return self._insert(dict(data), self.randomize())

    def _insert(self, d: dict[Hashable, Any], n: int) -> dict[Hashable, Any]:
        """Insert ``n`` lesions (drawn by :meth:`randomize`) into ``d`` in place of its volumes."""
        from scipy import ndimage

        if n == 0 or self.tissue_key is None:
            return d
        for key in self.key_iterator(d):
            if self.mask_key not in d or self.tissue_key not in d:
                if self.allow_missing_keys:
                    continue
                raise KeyError(f"RandLesionInsertd needs {self.mask_key!r} and {self.tissue_key!r} in the data.")
            img = d[key]
            x = torch.as_tensor(img).detach().cpu().float().numpy()
            if x.ndim != 4:
                raise ValueError(f"data[{key!r}] must be a channel-first volume (C, H, W, D), got shape {x.shape}.")
            tissue = torch.as_tensor(d[self.tissue_key]).detach().cpu().numpy()[0]
            wm = tissue == self.wm_label
            if not wm.any():
                continue
            brain = self._lesion_region(tissue)
            out = x.copy()
            ref = float(np.percentile(x[0], 0.1))
            wm_level = float(np.median(x[0][wm]))
            pairs = np.diff(x[0], axis=0)[wm[1:] & wm[:-1]]  # noise level from neighbouring white-matter voxels
            sigma = float(np.std(pairs) / np.sqrt(2.0)) if pairs.size > 1 else 0.0
            mask = torch.as_tensor(d[self.mask_key]).detach().cpu().numpy().copy()
            for _ in range(n):
                found = self._blob(wm, brain)
                if found is None:
                    continue
                box, blob = found
                if self.R.rand() < self.dark_prob:
                    factor = float(self.R.uniform(*self.dark_factor))
                else:
                    factor = float(self.R.uniform(*self.bright_factor))
                value = ref + factor * (wm_level - ref)
                soft = ndimage.gaussian_filter(blob.astype(np.float32), sigma=0.6)
                soft = np.maximum(soft, blob.astype(np.float32) * 0.9)
                texture = value * (1.0 + 0.05 * self.R.normal(size=blob.shape)) + sigma * self.R.normal(size=blob.shape)
                for c in range(out.shape[0]):
                    region = out[(c, *box)]
                    out[(c, *box)] = region * (1.0 - soft) + texture.astype(np.float32) * soft
                mask[(slice(None), *box)] = np.maximum(mask[(slice(None), *box)], blob[None].astype(mask.dtype))
            if self.clip:
                lo = x.reshape(x.shape[0], -1).min(axis=1).reshape(-1, 1, 1, 1)
                hi = x.reshape(x.shape[0], -1).max(axis=1).reshape(-1, 1, 1, 1)
                out = np.clip(out, lo, hi)
            d[key] = _like(img, out)
            d[self.mask_key] = _like(d[self.mask_key], mask)
        return d


class RandStackLesionInsertd(RandLesionInsertd):
    """Insert a random synthetic lesion into a 2.5D slice stack, centred on its middle slice.

    The stack-level form of :class:`RandLesionInsertd`, applied after
    :class:`medmamba.transforms.SliceStackd`: the image is a stack ``(2k+1, H, W)`` of neighbouring
    slices, the lesion mask and the tissue labels are the middle slice ``(1, H, W)``. With
    probability ``prob`` one lesion (up to ``max_lesions``) is placed on a white-matter voxel of the
    middle slice, extends into the neighbouring slices as a 3D blob would (clipped to the middle
    slice's brain), and the middle slice's lesion mask is updated.

    Why at the stack level: a volume-level insertion makes the mid-brain slices (where white matter
    is) positive far more often than the others, and a network can reach a low loss by learning
    *where* a slice is instead of *what* a lesion looks like. Inserting into a sampled stack with
    probability 0.5 gives every white-matter slice the same chance to be positive, so only the lesion
    itself separates the classes.

    Args:
        keys: the image key (one).
        mask_key: the lesion mask key (middle slice, ``(1, H, W)``; updated).
        tissue_key: the tissue label key (middle slice, ``(1, H, W)``; read).
        kwargs: the other arguments of :class:`RandLesionInsertd` (``prob``, ``max_lesions`` (default
            1 here), ``radius``, ``dark_factor``, ``bright_factor``, ``dark_prob``, ``wm_label``...).
    """

    def __init__(self, keys: KeysCollection, mask_key: str = "lesion", tissue_key: str | None = "tissue", **kwargs: Any) -> None:
        kwargs.setdefault("max_lesions", 1)
        super().__init__(keys, mask_key=mask_key, tissue_key=tissue_key, **kwargs)
        #: the label the side slices' white matter gets, so that lesion centres lie on the middle slice
        self._side_label = self.wm_label + 1 if self.wm_label != 1 else 2

    def _lesion_region(self, tissue: np.ndarray) -> np.ndarray:
        """The white matter (side slices' included) and its one-voxel rim."""
        return super()._lesion_region(np.where(tissue == self._side_label, self.wm_label, tissue))

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        if self.tissue_key is None:
            return d
        key = self.keys[0]
        if key not in d or self.mask_key not in d or self.tissue_key not in d:
            if self.allow_missing_keys:
                return d
            raise KeyError(f"RandStackLesionInsertd needs {key!r}, {self.mask_key!r} and {self.tissue_key!r} in the data.")
        img, mask, tissue = (torch.as_tensor(d[k]).detach().cpu() for k in (key, self.mask_key, self.tissue_key))
        if img.ndim != 3:
            raise ValueError(f"data[{key!r}] must be a slice stack (2k+1, H, W), got shape {tuple(img.shape)}.")
        depth = img.shape[0]
        if depth % 2 != 1:
            raise ValueError(f"data[{key!r}] must hold an odd number of slices (2k+1), got {depth}.")
        for name, t in ((self.mask_key, mask), (self.tissue_key, tissue)):
            if tuple(t.shape) != (1, *img.shape[1:]):
                raise ValueError(f"data[{name!r}] must be the middle slice (1, H, W) = {(1, *img.shape[1:])}, got {tuple(t.shape)}.")
        n = self.randomize()  # the same first draw as the volume form's
        if n == 0:
            return d
        mid = depth // 2
        # as a (1, H, W, 2k+1) volume; white matter only on the middle slice (lesion centres), brain on all
        tissue_vol = tissue[..., None].repeat(1, 1, 1, depth).clone()
        others = [i for i in range(depth) if i != mid]
        side = tissue_vol[..., others]
        side[side == self.wm_label] = self._side_label
        tissue_vol[..., others] = side
        mask_vol = torch.zeros(1, *img.shape[1:], depth, dtype=mask.dtype)
        mask_vol[..., mid] = mask
        vol = {key: img.permute(1, 2, 0)[None], self.mask_key: mask_vol, self.tissue_key: tissue_vol}
        out = self._insert(vol, n)
        d[key] = _like(d[key], torch.as_tensor(out[key])[0].permute(2, 0, 1).numpy())
        d[self.mask_key] = _like(d[self.mask_key], torch.as_tensor(out[self.mask_key])[..., mid].numpy())
        return d


def _probability(log_odds: float) -> float:
    """The sigmoid of ``log_odds`` in float64 (a float32 sigmoid is exactly 1.0 from about 17)."""
    return float(torch.sigmoid(torch.tensor(log_odds, dtype=torch.float64)))


def _like(template: Any, array: np.ndarray) -> Any:
    """``array`` as the type (and meta data) of ``template``."""
    from monai.utils import convert_to_dst_type

    return convert_to_dst_type(array, template, dtype=getattr(template, "dtype", None))[0]


# ------------------------------------------------------------------------------------------------ scores
def lesion_log_odds(logits: torch.Tensor, class_dim: int = 1) -> torch.Tensor:
    """The lesion log-odds ``logit[1] - logit[0]`` (or the single logit of a one-output network).

    Args:
        logits: e.g. ``(N, 2)`` slice logits or ``(B, 2, S)`` per-slice logits of volumes.
        class_dim: the class axis.

    Returns:
        ``logits`` with ``class_dim`` removed, float32.
    """
    x = torch.as_tensor(logits).float()
    k = x.shape[class_dim]
    if k == 2:
        return x.select(class_dim, 1) - x.select(class_dim, 0)
    if k == 1:
        return x.select(class_dim, 0)
    raise ValueError(f"logits must have 1 or 2 classes along dim {class_dim}, got shape {tuple(x.shape)}.")


def volume_log_odds(
    slice_log_odds: torch.Tensor, aggregation: str = "topk", top_k: int | float = 2, dim: int = -1
) -> torch.Tensor:
    """Aggregate per-slice lesion log-odds into one per volume.

    Args:
        slice_log_odds: per-slice log-odds with the slices along ``dim``, e.g. ``(B, S)``.
        aggregation: one of :data:`medmamba.inferers.AGGREGATIONS` (``"topk"``: mean of the
            ``top_k`` highest slices; ``"max"``; ``"mean"``; ``"logsumexp"``).
        top_k: slices (int) or fraction of slices (float) for ``"topk"``.
        dim: the slice axis.

    Returns:
        The volume log-odds (``dim`` removed); ``sigmoid`` of it is the lesion probability.
    """
    return aggregate_slice_logits(slice_log_odds, aggregation, top_k, dim=dim)


def _binary_metric(metric: str, scores: np.ndarray, labels: np.ndarray, threshold: float) -> float:
    if labels.size == 0:
        return float("nan")
    if metric == "auc":
        if np.unique(labels).size < 2:
            warnings.warn("AUC is undefined with a single class among the labels; returning nan.", stacklevel=3)
            return float("nan")
        from sklearn.metrics import roc_auc_score

        return float(roc_auc_score(labels, scores))
    predicted = (scores >= threshold).astype(np.int64)
    if metric == "accuracy":
        return float((predicted == labels).mean())
    from sklearn.metrics import f1_score

    return float(f1_score(labels, predicted, zero_division=0))


def _output_pairs(output: Any) -> tuple[Any, Any]:
    """``(pred, label)`` of an engine output: a dict, or a decollated list of dicts."""
    if isinstance(output, Mapping):
        return output["pred"], output["label"]
    if isinstance(output, (list, tuple)) and output and isinstance(output[0], Mapping):
        return [o["pred"] for o in output], [o["label"] for o in output]
    if isinstance(output, (list, tuple)) and len(output) == 2:
        return output[0], output[1]
    raise TypeError(f"engine output must be a dict with 'pred' and 'label' or a list of them, got {type(output).__name__}.")


def _as_cases(pred: Any, label: Any) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per-volume ``(slice_log_odds (S,), slice_labels (S,))`` pairs of a batch."""
    if isinstance(pred, (list, tuple)):
        cases = []
        for p, y in zip(pred, label):
            cases.extend(_as_cases(torch.as_tensor(p)[None], torch.as_tensor(y)[None]))
        return cases
    p = torch.as_tensor(pred).detach().float().cpu()
    y = torch.as_tensor(label).detach().cpu()
    if p.ndim == 2:  # (K, S): one volume
        p, y = p[None], y.reshape(1, -1)
    if p.ndim != 3:
        raise ValueError(f"pred must hold per-slice logits (B, K, S), got shape {tuple(p.shape)}.")
    z = lesion_log_odds(p, class_dim=1)
    y = y.reshape(z.shape[0], -1).long()
    if y.shape != z.shape:
        raise ValueError(f"label must hold one label per slice, shape {tuple(z.shape)}, got {tuple(y.shape)}.")
    return [(z[b], y[b]) for b in range(z.shape[0])]


class _CaseStore:
    """Per-volume slice scores and labels, and the slice / volume arrays the metrics need."""

    def __init__(self, aggregation: str, top_k: int | float) -> None:
        self.aggregation = aggregation
        self.top_k = top_k
        self.cases: list[tuple[torch.Tensor, torch.Tensor]] = []

    def add(self, pred: Any, label: Any) -> list[tuple[torch.Tensor, torch.Tensor]]:
        new = _as_cases(pred, label)
        self.cases.extend(new)
        return new

    def slice_arrays(self) -> tuple[np.ndarray, np.ndarray]:
        if not self.cases:
            return np.zeros(0), np.zeros(0, dtype=np.int64)
        z = torch.cat([c[0] for c in self.cases])
        y = torch.cat([c[1] for c in self.cases])
        keep = y >= 0
        return torch.sigmoid(z[keep].double()).numpy(), y[keep].numpy()

    def volume_log_odds(self, z: torch.Tensor) -> float:
        """The case's volume log-odds (its ranking score: a float32 probability is 1.0 from about 17)."""
        return float(volume_log_odds(z, self.aggregation, self.top_k))

    def volume_score(self, z: torch.Tensor) -> float:
        """The case's volume probability, in float64 (distinct up to about 36 log-odds)."""
        return _probability(self.volume_log_odds(z))

    def volume_arrays(self) -> tuple[np.ndarray, np.ndarray]:
        scores = np.array([self.volume_score(z) for z, _ in self.cases], dtype=np.float64)
        labels = np.array([int(bool((y != 0).any())) for _, y in self.cases], dtype=np.int64)
        return scores, labels


def _check_aggregation(aggregation: str, top_k: Any) -> None:
    if aggregation not in AGGREGATIONS:
        raise ValueError(f"aggregation must be one of {AGGREGATIONS}, got {aggregation!r}.")
    aggregate_slice_logits(torch.zeros(1, 1), aggregation, top_k)  # validates top_k


class LesionMetric(Metric):
    """AUC, accuracy or F1 of lesion classification at slice or volume level (an ignite metric).

    Reads ``pred`` (per-slice logits ``(B, K, S)``, as :class:`medmamba.inferers.SliceStackInferer`
    returns for a slice classifier) and ``label`` (per-slice labels ``(B, S)`` from
    :class:`SliceLesionLabelsd`) from the engine output (a dict, or decollated dicts).

    * ``level="slice"``: every slice whose label is not :data:`AMBIGUOUS`; score ``sigmoid(log-odds)``.
    * ``level="volume"``: one score per volume, ``sigmoid`` of :func:`volume_log_odds`; label 1 when
      any slice holds lesion voxels.

    Accuracy and F1 (of the lesion class) threshold the probability at ``threshold``; AUC is the
    ROC AUC (scikit-learn), ``nan`` with a warning when only one class is present.

    By default each process computes on what it saw (no all-gather): run validation un-split (every
    DDP rank sees every validation volume), as the bundle's ``multi_gpu_train.json`` does. With
    ``gather=True`` (evaluation split over the ranks, ``multi_gpu_evaluate.json``) the volumes of
    all ranks are gathered first (:func:`medmamba.data.distributed_batch.all_gather_in_order`).

    Args:
        metric: ``"auc"``, ``"accuracy"`` or ``"f1"``.
        level: ``"slice"`` or ``"volume"``.
        aggregation: volume aggregation of the slice log-odds (see :func:`volume_log_odds`).
        top_k: for ``"topk"``.
        threshold: probability threshold for accuracy and F1.
        output_transform: maps the engine output to ``(pred, label)``; default reads the keys.
        device: ignite's metric device (unused: the values are kept on the CPU).
        gather: compute on the volumes of all ranks of an initialised process group.
    """

    def __init__(
        self,
        metric: str = "auc",
        level: str = "volume",
        aggregation: str = "topk",
        top_k: int | float = 2,
        threshold: float = 0.5,
        output_transform: Callable[[Any], Any] = _output_pairs,
        device: str | torch.device = "cpu",
        gather: bool = False,
    ) -> None:
        if metric not in _METRICS:
            raise ValueError(f"metric must be one of {_METRICS}, got {metric!r}.")
        if level not in _LEVELS:
            raise ValueError(f"level must be one of {_LEVELS}, got {level!r}.")
        _check_aggregation(aggregation, top_k)
        if not 0.0 < float(threshold) < 1.0:
            raise ValueError(f"threshold must be a probability in (0, 1), got {threshold!r}.")
        self.metric = metric
        self.level = level
        self.threshold = float(threshold)
        self.gather = bool(gather)
        self._store = _CaseStore(aggregation, top_k)
        super().__init__(output_transform=output_transform, device=device)

    @reinit__is_reduced
    def reset(self) -> None:
        self._store = _CaseStore(self._store.aggregation, self._store.top_k)

    @reinit__is_reduced
    def update(self, output: Any) -> None:
        pred, label = output
        self._store.add(pred, label)

    def compute(self) -> float:
        store = self._store
        if self.gather:
            from medmamba.data.distributed_batch import all_gather_in_order

            store = _CaseStore(store.aggregation, store.top_k)
            store.cases = all_gather_in_order(self._store.cases)
        scores, labels = store.slice_arrays() if self.level == "slice" else store.volume_arrays()
        return _binary_metric(self.metric, scores, labels, self.threshold)


def _case_ids(batch: Any, n: int) -> list[str]:
    """Case ids of a batch: its ``id`` entry, else the image file names."""
    if isinstance(batch, Mapping):
        ids = batch.get("id")
        if ids is not None:
            ids = [ids] if isinstance(ids, str) else list(ids)
            if len(ids) == n:
                return [str(i) for i in ids]
        meta = getattr(batch.get("image"), "meta", None) or {}
        names = meta.get("filename_or_obj")
        if names is not None:
            names = [names] if isinstance(names, str) else list(names)
            if len(names) == n:
                return [scan_stem(str(p)) for p in names]
    if isinstance(batch, (list, tuple)) and len(batch) == n and all(isinstance(b, Mapping) for b in batch):
        return [_case_ids(b, 1)[0] for b in batch]
    return [f"case-{i:04d}" for i in range(n)]


class ClassificationReport:
    """Ignite handler writing an evaluation's flat ``metrics.json`` and per-case ``predictions.csv``.

    Attach it to the evaluator (a MONAI ``val_handlers`` entry). It records every volume's slice
    scores; on completion it writes

    * ``<output_dir>/<metrics_file>``: a flat JSON of ``engine.state.metrics`` (floats), the volume
      and slice counts, the aggregation, ``checkpoint``, ``wall_time_s`` (from the import of this
      module, i.e. the bundle's config parsing, to the end of the evaluation: model loading and data
      preprocessing included) and ``evaluation_time_s`` (the evaluator's run);
    * ``<output_dir>/predictions.csv``: per case ``id``, ``label`` (lesion present), ``lesion_probability``,
      ``lesion_log_odds`` (the same score before the sigmoid: it still ranks cases whose rounded
      probabilities are all 1.0), ``predicted``, ``n_slices``, ``n_positive_slices``, and the slice-level AUC inside the case
      (through :func:`medmamba.io.write_results_csv`: no identifying DICOM values).

    Args:
        output_dir: output folder.
        checkpoint: the evaluated checkpoint (recorded as given).
        aggregation, top_k: the volume aggregation (as in :class:`LesionMetric`).
        threshold: probability threshold of ``predicted``.
        metrics_file: the JSON's file name.
        extra: more entries for the JSON (simple values).
        gather: under an initialised process group, gather the volumes of all ranks (in input
            order; evaluation split over the ranks) and write on rank 0 only.
    """

    def __init__(
        self,
        output_dir: str | os.PathLike[str],
        checkpoint: str | os.PathLike[str] | None = None,
        aggregation: str = "topk",
        top_k: int | float = 2,
        threshold: float = 0.5,
        metrics_file: str = "metrics.json",
        extra: Mapping[str, Any] | None = None,
        gather: bool = False,
    ) -> None:
        _check_aggregation(aggregation, top_k)
        self.gather = bool(gather)
        self.output_dir = Path(output_dir)
        self.checkpoint = None if checkpoint is None else os.fspath(checkpoint)
        self.threshold = float(threshold)
        self.metrics_file = metrics_file
        self.extra = dict(extra or {})
        self._store = _CaseStore(aggregation, top_k)
        self._ids: list[str] = []
        self._started = time.perf_counter()
        self.metrics: dict[str, Any] = {}

    def attach(self, engine: Engine) -> None:
        from ignite.engine import Events

        engine.add_event_handler(Events.STARTED, self._on_started)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._on_iteration)
        engine.add_event_handler(Events.COMPLETED, self._on_completed)

    def _on_started(self, engine: Engine) -> None:
        self._store = _CaseStore(self._store.aggregation, self._store.top_k)
        self._ids = []
        self._started = time.perf_counter()

    def _on_iteration(self, engine: Engine) -> None:
        pred, label = _output_pairs(engine.state.output)
        new = self._store.add(pred, label)
        self._ids.extend(_case_ids(engine.state.batch, len(new)))

    def _on_completed(self, engine: Engine) -> None:
        now = time.perf_counter()
        if self.gather:
            from medmamba.data.distributed_batch import all_gather_in_order

            pairs = all_gather_in_order(list(zip(self._ids, self._store.cases)))
            self._ids, self._store.cases = [i for i, _ in pairs], [c for _, c in pairs]
        rows = []
        for case_id, (z, y) in zip(self._ids, self._store.cases):
            log_odds = self._store.volume_log_odds(z)
            prob = _probability(log_odds)
            keep = y >= 0
            inner = _binary_metric("auc", z[keep].double().numpy(), y[keep].numpy(), 0.0) if (
                keep.any() and y[keep].unique().numel() == 2) else None
            rows.append({
                "id": case_id,
                "label": int(bool((y != 0).any())),
                "lesion_probability": round(prob, 6),
                "lesion_log_odds": round(log_odds, 4),
                "predicted": int(prob >= self.threshold),
                "n_slices": int(y.numel()),
                "n_positive_slices": int((y == 1).sum()),
                "slice_auc_in_case": None if inner is None else round(inner, 6),
            })
        slice_scores, _ = self._store.slice_arrays()
        metrics = {k: _plain(v) for k, v in engine.state.metrics.items()}
        doc = {
            **metrics,
            "n_volumes": len(self._store.cases),
            "n_volumes_positive": int(sum(r["label"] for r in rows)),
            "n_slices": int(slice_scores.size),
            "aggregation": self._store.aggregation,
            "top_k": self._store.top_k,
            "threshold": self.threshold,
            "checkpoint": self.checkpoint,
            "evaluation_time_s": round(now - self._started, 2),
            "wall_time_s": round(now - _IMPORTED_AT, 2),
            **{k: _plain(v) for k, v in self.extra.items()},
        }
        if self.gather and torch.distributed.is_available() and torch.distributed.is_initialized() and (
                torch.distributed.get_rank() != 0):
            self.metrics = doc  # rank 0 writes the gathered report
            return
        from medmamba.io.atomic import atomic_write_text
        from medmamba.io.results import write_results_csv

        self.output_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.output_dir / self.metrics_file, json.dumps(doc, indent=1) + "\n")
        write_results_csv(self.output_dir / "predictions.csv", rows)
        self.metrics = doc
        logger.info("evaluation: %s -> %s", {k: doc[k] for k in metrics}, self.output_dir / self.metrics_file)


def _plain(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        value = value.item() if value.numel() == 1 else value.tolist()
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


# ---------------------------------------------------------------------------------------------- networks
class FusedMobileMamba(FuseOnLoad):
    """:class:`FuseOnLoad` around ``MobileMamba(variant, **kwargs)``.

    Takes ``MobileMamba``'s own arguments, so ``--network_def#variant s6`` works in
    ``inference.json`` / ``evaluate.json`` as in ``train.json``.
    """

    def __init__(self, variant: str = "t2", strict: bool = True, **kwargs: Any) -> None:
        from medmamba.networks import MobileMamba

        super().__init__(MobileMamba(variant, **kwargs), strict=strict)


class FusedLesionMapClassifier(FuseOnLoad):
    """:class:`FuseOnLoad` around ``LesionMapClassifier(MobileMambaSeg(variant, **kwargs))``.

    The deployable form of the bundle's lesion-map classifier: it takes ``MobileMambaSeg``'s own
    arguments (so ``--network_def#variant t4`` works in ``inference.json`` / ``evaluate.json`` as in
    ``train.json``) plus the pooling of :class:`medmamba.networks.LesionMapClassifier`, loads the
    unfused checkpoint the training saves (the classifier's state dict) and folds every BatchNorm.
    With ``ensemble_size`` > 1 it is a :class:`medmamba.networks.MeanEnsemble` of that many such
    classifiers (a seed ensemble: the mean of their pooled lesion log-odds), loaded from the
    checkpoint :func:`medmamba.training.save_ensemble_checkpoint` writes.

    Args:
        variant: MobileMamba variant of the encoder.
        lesion_channel: index of the lesion class in the segmentation output.
        pooling: ``"max"``, ``"topk"`` or ``"mean"`` (see ``LesionMapClassifier``).
        top_k: pixels averaged by ``"topk"``.
        strict: ``strict`` of ``fuse_norms``.
        ensemble_size: number of ensemble members (1: a single classifier).
        kwargs: the other ``MobileMambaSeg`` arguments (``in_channels``, ``out_channels``, ...).

    Raises:
        ValueError: ``ensemble_size`` is not a positive integer.
    """

    def __init__(
        self,
        variant: str = "t2",
        lesion_channel: int = -1,
        pooling: str = "max",
        top_k: int = 16,
        strict: bool = True,
        ensemble_size: int = 1,
        **kwargs: Any,
    ) -> None:
        from medmamba.networks import LesionMapClassifier, MeanEnsemble, MobileMambaSeg

        if isinstance(ensemble_size, bool) or not isinstance(ensemble_size, int) or ensemble_size < 1:
            raise ValueError(f"ensemble_size must be a positive integer, got {ensemble_size!r}.")
        members = [
            LesionMapClassifier(MobileMambaSeg(variant, **kwargs), lesion_channel, pooling, top_k)
            for _ in range(ensemble_size)
        ]
        super().__init__(members[0] if ensemble_size == 1 else MeanEnsemble(members), strict=strict)


def rank_zero_handlers(handlers: Sequence[Any]) -> list[Any]:
    """The handlers a process keeps under DDP: all on rank 0; no saving or logging on other ranks.

    Drops ``CheckpointSaver``, ``StatsHandler``, ``TensorBoardStatsHandler``, ignite's ``ProgressBar``
    and :class:`ClassificationReport` on ranks other than 0 (or everything is kept without an
    initialised process group).
    """
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0:
        return list(handlers)
    from ignite.handlers import ProgressBar
    from monai.handlers import CheckpointSaver, StatsHandler, TensorBoardStatsHandler

    drop = (CheckpointSaver, StatsHandler, TensorBoardStatsHandler, ProgressBar, ClassificationReport)
    return [h for h in handlers if not isinstance(h, drop)]


# --------------------------------------------------------------------------------------------- inference
class VolumeClassifier(VolumePredictor):
    """Volume in, per-slice logits and volume lesion probability out.

    Args:
        network: a 2D slice classifier taking ``2k + 1``-slice stacks (eager or TorchScript).
        inferer: e.g. :class:`medmamba.inferers.SliceStackInferer` (returns ``(B, K, S)``).
        aggregation, top_k: volume aggregation of the slice log-odds (:func:`volume_log_odds`).
        device: where the network runs.
    """

    def __init__(
        self,
        network: Callable[..., Any],
        inferer: Callable[..., Any],
        aggregation: str = "topk",
        top_k: int | float = 2,
        device: str | torch.device = "cpu",
    ) -> None:
        super().__init__(network, inferer, device)
        _check_aggregation(aggregation, top_k)
        self.aggregation = aggregation
        self.top_k = top_k

    def slice_logits(self, volume: torch.Tensor) -> torch.Tensor:
        """Per-slice logits ``(B, K, S)`` of volumes ``(B, C, H, W, D)``."""
        out = torch.as_tensor(self.predict(volume)).float()
        if out.ndim != 3:
            raise ValueError(f"the inferer must return per-slice logits (B, K, S), got shape {tuple(out.shape)}.")
        return out

    def __call__(self, volume: torch.Tensor) -> dict[str, torch.Tensor]:
        """``{"slice_probabilities": (B, S), "lesion_probability": (B,), "lesion_log_odds": (B,)}`` of
        volumes ``(B, C, H, W, D)``; the volume probability in float64 (a float32 sigmoid is 1.0 from
        about 17 log-odds, and the log-odds still rank such cases)."""
        z = lesion_log_odds(self.slice_logits(volume), class_dim=1)
        volume_z = volume_log_odds(z, self.aggregation, self.top_k)
        return {
            "slice_probabilities": torch.sigmoid(z),
            "lesion_probability": torch.sigmoid(volume_z.double()),
            "lesion_log_odds": volume_z,
        }


def _slice_positions_mm(img: Any, n_slices: int, axis: int = 2) -> list[float] | None:
    """World (RAS) coordinate along the slice normal of each slice centre of a preprocessed volume."""
    affine = getattr(img, "affine", None)
    if affine is None:
        return None
    a = torch.as_tensor(affine, dtype=torch.float64)
    if a.shape != (4, 4):
        return None
    column = a[:3, axis]
    normal = column / column.norm().clamp_min(1e-12)
    origin = a[:3, 3]
    return [round(float(torch.dot(origin + column * s, normal)), 3) for s in range(n_slices)]


def classify(
    input_path: str | os.PathLike[str],
    output_dir: str | os.PathLike[str],
    predictor: VolumeClassifier,
    preprocessing: Callable[[Any], Any],
    threshold: float = 0.5,
    write_slice_probabilities: bool = True,
    report_name: str = "probabilities",
    warnings_key: str = "scan_warnings",
) -> dict[str, Any]:
    """Classify every scan under ``input_path``; write ``<output_dir>/probabilities.csv``.

    Per case the report row holds ``lesion_probability`` (volume level), ``label`` (1 = lesion
    present, at ``threshold``), ``class_name``, ``n_slices`` (slices of the input), ``top_slice``
    (index of the input's most suspicious slice), ``slice_axis`` (the input's array axis those
    slices are taken along) and ``warnings`` (scan plausibility flags left by the preprocessing
    under ``warnings_key``, joined by "; "); failed cases are recorded with their reason and the
    batch goes on (:func:`medmamba.data.run_batch`, which also keeps identifying DICOM values out of
    the report). Case ids are those of :func:`find_scans` (``sub-018_dicom`` for the single series
    folder ``sub-018/dicom``).

    The network classifies the axial slices of the preprocessed volume (RAS, resampled to the
    training spacing, foreground-cropped); the per-slice results refer to the *input's* slices along
    its array axis closest to the network's slice normal (:func:`medmamba.io.geometry.slices_to_source`):
    each input slice gets the largest probability of the network slices overlapping it, ``None``
    where it was cropped away as background. With ``write_slice_probabilities`` each case also gets
    ``<output_dir>/<case>/slice_probabilities.json``: per input slice its index, position along the
    network's slice normal in mm (RAS world coordinates) and lesion probability, and the network's
    own slices (``network_slices``) likewise.

    Args:
        input_path: see :func:`find_scans`.
        output_dir: output folder.
        predictor: a :class:`VolumeClassifier`.
        preprocessing: the preprocessing, starting by loading ``"image"`` (a path: NIfTI or DICOM).
        threshold: probability threshold of the label.
        write_slice_probabilities: write the per-case slice JSON.
        report_name: base name of the report (``probabilities.csv`` / ``.json``).
        warnings_key: key of the list of scan warnings in the preprocessed data
            (:class:`medmamba.transforms.CheckScand`).

    Returns:
        ``{"n_ok", "n_failed", "report", "failed", "seconds"}``.
    """
    from monai.data import MetaTensor

    from medmamba.data.batch import BatchCase
    from medmamba.data.distributed_batch import run_batch_distributed
    from medmamba.io.atomic import atomic_write_text

    if input_path is None:
        raise ValueError("input_path is required: a NIfTI file, a DICOM series folder or a folder of them "
                         "(bundle override --input_path <path>).")
    if not 0.0 < float(threshold) < 1.0:
        raise ValueError(f"threshold must be a probability in (0, 1), got {threshold!r}.")
    start = time.perf_counter()
    cases = find_scans(input_path)
    logger.info("classifying %d case(s) from %s into %s", len(cases), os.fspath(input_path), os.fspath(output_dir))

    def process(case: BatchCase) -> dict[str, Any]:
        data = preprocessing({"image": os.fspath(case.input)})
        if not isinstance(data, Mapping) or "image" not in data:
            raise TypeError("preprocessing must return a dict holding 'image'")
        img = data["image"]
        warnings = [str(w) for w in (data.get(warnings_key) or [])]
        volume = img.as_tensor() if isinstance(img, MetaTensor) else torch.as_tensor(img)
        out = predictor(volume[None])
        prob = float(out["lesion_probability"][0])
        log_odds = float(out["lesion_log_odds"][0]) if "lesion_log_odds" in out else None
        slices = out["slice_probabilities"][0].cpu()
        label = int(prob >= threshold)
        if isinstance(img, MetaTensor) and img.ndim == 4:
            source_affine, source_shape = source_geometry(img)
            mapped = slices_to_source(slices, img.affine, img.shape[1:], source_affine, source_shape, axis=2)
        else:  # no geometry: the network's slices are the input's
            positions = _slice_positions_mm(img, int(slices.numel()), axis=2)
            mapped = {"axis": 2, "positions_mm": positions or [None] * int(slices.numel()),
                      "values": [float(p) for p in slices.tolist()], "network_positions_mm": positions}
        scored = [(p, -i) for i, p in enumerate(mapped["values"]) if p is not None]  # ties: the first slice
        for w in warnings:
            logger.warning("case %s: %s", case.case_id, case.redact(w))
        result: dict[str, Any] = {
            "lesion_probability": round(prob, 6),
            "lesion_log_odds": None if log_odds is None else round(log_odds, 4),
            "label": label,
            "class_name": CLASS_NAMES[label],
            "n_slices": len(mapped["values"]),
            "top_slice": -max(scored)[1] if scored else None,
            "slice_axis": int(mapped["axis"]),
            "warnings": "; ".join(warnings),
        }
        if write_slice_probabilities:
            net_positions = mapped["network_positions_mm"]
            rows = [
                {"slice_index": i, "position_mm": pos, "lesion_probability": None if p is None else round(float(p), 6)}
                for i, (pos, p) in enumerate(zip(mapped["positions_mm"], mapped["values"]))
            ]
            network_rows = [
                {"slice_index": i, "position_mm": None if net_positions is None else net_positions[i],
                 "lesion_probability": round(float(p), 6)}
                for i, p in enumerate(slices.tolist())
            ]
            doc = {
                "case_id": case.case_id,
                "lesion_probability": round(prob, 6),
                "label": label,
                "slice_axis": int(mapped["axis"]),
                "slice_axis_note": ("slices: the input's slices along its array axis slice_axis (as loaded; for DICOM "
                                    "the instance order), each with the largest probability of the network slices "
                                    "overlapping it (null: cropped away as background); network_slices: the "
                                    "network's axial slices of the RAS-oriented, resampled, foreground-cropped "
                                    "volume; position_mm: slice centre along the network's slice normal (RAS mm)"),
                "slices": rows,
                "network_slices": network_rows,
                "warnings": warnings,
            }
            atomic_write_text(case.out_dir / "slice_probabilities.json", json.dumps(doc, indent=1) + "\n")
            result["slice_file"] = f"{case.case_id}/slice_probabilities.json"
        return result

    report = run_batch_distributed(cases, process, output_dir, input_key="image", id_key="id", report_name=report_name)
    summary = report.summary(time.perf_counter() - start)
    logger.info("classification: %d ok, %d failed (%.1f s); report %s", report.n_ok, report.n_failed,
                summary["seconds"], report.csv_path)
    return summary
