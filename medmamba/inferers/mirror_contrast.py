"""Mirror contrast: a volume lesion score that discounts what the other hemisphere also shows.

A white-matter lesion is one-sided; the dark structures that a lesion-map classifier mistakes for
hypointense lesions on real scans lie on the midline (the third and fourth ventricles, the basal
cisterns) or in mirror-symmetric pairs (dark spots beside the trigones; ``docs/real-scans.md``,
thirteenth to seventeenth sessions). :class:`MirrorContrastInferer` runs the classifier's dense lesion
map over the whole volume, subtracts from every voxel the part of its mirror voxel's log-odds above a
margin, and returns per slice the largest remaining log-odds as slice logits, which
:class:`medmamba.inferers.VolumeClassifier` pools as before. A lesion whose mirror spot is normal tissue
keeps its log-odds; a structure marked on both sides or on the midline drops to about the margin.

The mirror plane is either upright (``plane="upright"``, the ``mirror`` read-out: through the brain's
centre of mass, across the grid's left-right axis) or the brain's mid-sagittal plane found by symmetry
(``plane="symmetry"``, the ``aligned_mirror`` read-out: :func:`medmamba.inferers.white_matter_plane` of
the brain extraction's white-matter map, which follows a head turned or tilted in the grid), with the
mirror image widened by a maximum filter (``widen``) that absorbs the nearest-voxel reflection's
rounding about an oblique plane.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from monai.inferers import Inferer
from torch import nn

from medmamba.inferers.argument_checks import check_count
from medmamba.inferers.brain_extraction import SkullStrippingInferer
from medmamba.inferers.chain import find_inferer
from medmamba.inferers.symmetry import reflected, white_matter_plane
from medmamba.networks.nets.lesion_map import lesion_log_odds_map

logger = logging.getLogger(__name__)

__all__ = [
    "MIRROR_PLANES",
    "MIRROR_READOUTS",
    "OUTSIDE_LOG_ODDS",
    "READOUTS",
    "DenseLesionMap",
    "MirrorContrastInferer",
    "mirror_contrast",
    "mirrored",
    "volume_readout_inferer",
]

#: the volume read-outs of the classification bundle (``volume_readout`` in its configs).
READOUTS = ("maximum", "mirror", "aligned_mirror")

#: the read-outs that score the mirror contrast (they have a margin and keep dense maps for the lesion rules).
MIRROR_READOUTS = ("mirror", "aligned_mirror")

#: the mirror planes of :class:`MirrorContrastInferer`.
MIRROR_PLANES = ("upright", "symmetry")

#: log-odds given to mirror voxels that fall outside the grid (never subtracted).
OUTSIDE_LOG_ODDS = -50.0


def mirrored(lesion_map: torch.Tensor, brain: torch.Tensor, axis: int = 0) -> torch.Tensor:
    """A lesion map mirrored about the brain's centre of mass on one axis.

    Args:
        lesion_map: ``(*spatial)`` per-voxel lesion log-odds.
        brain: boolean brain mask of the same shape; its centre of mass on ``axis`` is the mirror plane.
        axis: the left-right axis (0 for the bundles' RAS volumes).

    Returns:
        ``M`` with ``M[i] = lesion_map[round(2c - i)]`` along ``axis`` (``c`` the centre of mass), and
        :data:`OUTSIDE_LOG_ODDS` where ``2c - i`` falls outside the grid. A brain with no voxel
        gives a map of :data:`OUTSIDE_LOG_ODDS` (nothing is subtracted).

    Raises:
        ValueError: shapes differ or ``axis`` is out of range.
    """
    if lesion_map.shape != brain.shape:
        raise ValueError(f"lesion_map {tuple(lesion_map.shape)} and brain {tuple(brain.shape)} must have the same shape.")
    if not -lesion_map.ndim <= axis < lesion_map.ndim:
        raise ValueError(f"axis={axis} is out of range for a {lesion_map.ndim}D map.")
    axis = axis % lesion_map.ndim
    out = torch.full_like(lesion_map, OUTSIDE_LOG_ODDS)
    weights = brain.float().sum(dim=[d for d in range(brain.ndim) if d != axis])
    if float(weights.sum()) == 0.0:
        return out
    n = lesion_map.shape[axis]
    positions = torch.arange(n, dtype=torch.float64, device=lesion_map.device)
    centre = float((weights.double() * positions).sum() / weights.double().sum())
    # numpy's rounding (half to even), as the benchmark's reference does
    source = torch.round(2 * centre - positions).long()
    inside = (source >= 0) & (source < n)
    target = torch.nonzero(inside).flatten()
    out.index_copy_(axis, target, lesion_map.index_select(axis, source[inside]))
    return out


def mirror_contrast(
    lesion_map: torch.Tensor,
    brain: torch.Tensor,
    margin: float = 4.0,
    axis: int = 0,
    plane: tuple[np.ndarray, np.ndarray] | None = None,
    widen: int = 1,
) -> torch.Tensor:
    """Lesion log-odds minus what the mirror image shows above ``margin``: ``L - max(M - margin, 0)``.

    Args:
        lesion_map: ``(*spatial)`` per-voxel lesion log-odds (``(H, W, D)`` with a ``plane`` or ``widen`` > 1).
        brain: boolean brain mask of the same shape (the upright mirror plane, :func:`mirrored`).
        margin: log-odds of the mirror image that are not subtracted (a one-sided lesion's mirror spot in
            normal tissue stays below it).
        axis: the left-right axis.
        plane: the mirror plane ``(point, normal)`` in voxel coordinates
            (:func:`medmamba.inferers.white_matter_plane`); ``None``: upright through the brain's centre of mass.
        widen: the width in voxels (odd) of a maximum filter over the mirror image (1: none).

    Returns:
        The contrast map, same shape and dtype as ``lesion_map``.

    Raises:
        ValueError: shapes differ, ``axis`` out of range, or ``widen`` not an odd int >= 1.
    """
    _check_widen(widen)
    if plane is None:
        mirror = mirrored(lesion_map, brain, axis)
    else:
        if lesion_map.shape != brain.shape:
            raise ValueError(f"lesion_map {tuple(lesion_map.shape)} and brain {tuple(brain.shape)} must have the same shape.")
        mirror = reflected(lesion_map, *plane, fill=OUTSIDE_LOG_ODDS)
    if widen > 1:
        mirror = torch.nn.functional.max_pool3d(mirror[None, None], widen, stride=1, padding=widen // 2)[0, 0]
    return lesion_map - torch.clamp(mirror - float(margin), min=0.0)


def _check_widen(widen: int) -> None:
    if isinstance(widen, bool) or not isinstance(widen, int) or widen < 1 or widen % 2 == 0:
        raise ValueError(f"widen must be an odd int >= 1, got {widen!r}.")


class DenseLesionMap(nn.Module):
    """A lesion-map classifier's dense output per slice stack: lesion log-odds and brain, ``(N, 2, H, W)``.

    Channel 0 is the lesion log-odds of every pixel (:func:`medmamba.networks.nets.lesion_map.lesion_log_odds_map`
    of the segmentation network inside the classifier; for a seed ensemble the mean over its members,
    as the ensemble's pooled score is a mean), channel 1 is 1 where the (first member's) network's
    strongest class is not background (the brain the mirror plane is taken from), else 0.

    Args:
        classifier: a :class:`medmamba.networks.LesionMapClassifier`, a
            :class:`medmamba.networks.MeanEnsemble` of them, a :class:`FuseOnLoad` around either (the
            bundle's ``network``) or their TorchScript export.
        background_channel: index of the background class.

    Raises:
        TypeError: ``classifier`` holds no lesion-map classifier (a network without ``lesion_channel``).
        ValueError: a classifier pools otherwise than by the maximum over the whole image (``pooling``
            other than ``"max"``, ``readout`` other than ``"image"``), which the contrast would silently replace.
    """

    def __init__(self, classifier: Any, background_channel: int = 0) -> None:
        super().__init__()
        found = _lesion_map_classifiers(classifier)
        for member in found:  # the contrast replaces the classifier's own pooling: the per-slice maximum
            pooling, readout = getattr(member, "pooling", "max"), getattr(member, "readout", "image")
            if pooling != "max" or readout != "image":
                raise ValueError(f"the mirror read-out takes each slice's maximum over the whole image; the classifier "
                                 f"has pooling={pooling!r}, readout={readout!r} (expected 'max' and 'image'): use "
                                 f"volume_readout 'maximum' with it.")
        self.members = [(m.network, int(m.lesion_channel)) for m in found]
        self.background_channel = int(background_channel)
        self.in_channels = int(getattr(classifier, "in_channels", -1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, 2, H, W)``: lesion log-odds and the brain indicator of slice stacks ``(N, C, H, W)``."""
        lesion, brain = None, None
        for segmenter, lesion_channel in self.members:
            logits = segmenter(x)
            if isinstance(logits, (list, tuple)):
                logits = logits[0]
            logits = logits.float()
            z = lesion_log_odds_map(logits, lesion_channel)
            lesion = z if lesion is None else lesion + z
            if brain is None:
                brain = (logits.argmax(dim=1) != self.background_channel).float()
        return torch.stack([lesion / len(self.members), brain], dim=1)


def _lesion_map_classifiers(network: Any) -> list[Any]:
    """The lesion-map classifiers inside ``network`` (itself, a ``FuseOnLoad``'s, an ensemble's members)."""
    if hasattr(network, "lesion_channel") and callable(getattr(network, "network", None)):
        return [network]
    members = getattr(network, "networks", None)
    if members is not None:
        found = [c for m in members for c in _lesion_map_classifiers(m)]
        if found:
            return found
    inner = getattr(network, "network", None)
    if inner is not None and inner is not network:
        return _lesion_map_classifiers(inner)
    raise TypeError(f"the mirror read-out needs a lesion-map classifier (a network with `network` and `lesion_channel`, "
                    f"e.g. medmamba.networks.FusedLesionMapClassifier), got {type(network).__name__}.")


class MirrorContrastInferer(Inferer):
    """Slice logits of a lesion-map classifier read through the mirror contrast of its dense lesion map.

    Runs ``inferer`` (e.g. the bundle's brain extraction around :class:`SliceStackInferer`) with the
    classifier's dense output (:class:`DenseLesionMap`) instead of its pooled slice logits, computes
    :func:`mirror_contrast` per volume, and returns per slice ``[0, max contrast]`` (``(B, 2, S)``):
    the classifier's ``[0, pooled lesion log-odds]`` with the maximum taken over the contrast map.

    With ``plane="symmetry"`` the mirror plane of each volume is its brain's mid-sagittal plane
    (:func:`medmamba.inferers.white_matter_plane` of the records of the
    :class:`medmamba.inferers.SkullStrippingInferer` in ``inferer``'s chain); where the chain has no brain
    extraction (a warning is logged), a brain is too small to strip to or its core holds no white matter,
    the upright plane is used.

    Args:
        inferer: runs a 2D network over a volume and returns its dense output ``(B, K, *spatial)``.
        margin: the mirror log-odds that are not subtracted (:func:`mirror_contrast`).
        slice_axis: the spatial axis of the slices (2: axial, as the bundle slices).
        left_right_axis: the spatial axis of the mirror (0 in RAS).
        background_channel: index of the background class of the classifier's segmentation network.
        plane: ``"upright"`` or ``"symmetry"`` (:data:`MIRROR_PLANES`).
        widen: width (odd) of the maximum filter over the mirror image.
        white_matter_channel: the white-matter class of the brain extraction's tissue network (``"symmetry"``).
        plane_core: voxels next to the brain's edge left out of the plane's fit (``"symmetry"``).

    Attributes:
        last_lesion_maps: the dense lesion log-odds ``(*spatial)`` of each volume of the last call, on
            the inferer's device (empty before the first), for the lesion rules
            (:class:`medmamba.inferers.LesionRule`).
        last_contrast_maps: their mirror contrast (:func:`mirror_contrast`), likewise.
        last_planes: the mirror plane ``(point, normal)`` of each volume (``None``: upright).

    Raises:
        TypeError: ``inferer`` is not callable.
        ValueError: ``slice_axis`` equals ``left_right_axis`` or either is not 0, 1 or 2; ``plane`` not one
            of :data:`MIRROR_PLANES`; ``widen`` not an odd int >= 1; a negative channel or core; with
            ``plane="symmetry"``, when called, a brain extraction in the chain without records of the call.
    """

    def __init__(
        self,
        inferer: Callable[..., Any],
        margin: float = 4.0,
        slice_axis: int = 2,
        left_right_axis: int = 0,
        background_channel: int = 0,
        plane: str = "upright",
        widen: int = 1,
        white_matter_channel: int = 3,
        plane_core: int = 2,
    ) -> None:
        super().__init__()
        if plane not in MIRROR_PLANES:
            raise ValueError(f"plane={plane!r} is not valid; expected one of {MIRROR_PLANES}.")
        _check_widen(widen)
        white_matter_channel = check_count("white_matter_channel", white_matter_channel)
        plane_core = check_count("plane_core", plane_core)
        if not callable(inferer):
            raise TypeError(f"inferer must be callable, got {type(inferer).__name__}.")
        if slice_axis not in (0, 1, 2) or left_right_axis not in (0, 1, 2) or slice_axis == left_right_axis:
            raise ValueError(f"slice_axis={slice_axis} and left_right_axis={left_right_axis} must be two different "
                             f"spatial axes of a 3D volume (0, 1 or 2).")
        self.inferer = inferer
        self.margin = float(margin)
        self.slice_axis = slice_axis
        self.left_right_axis = left_right_axis
        self.background_channel = int(background_channel)
        self.plane, self.widen = plane, widen
        self.white_matter_channel, self.plane_core = white_matter_channel, plane_core
        self.last_lesion_maps: list[torch.Tensor] = []
        self.last_contrast_maps: list[torch.Tensor] = []
        self.last_planes: list[tuple[np.ndarray, np.ndarray] | None] = []

    def __call__(self, inputs: torch.Tensor, network: Any, *args: Any, **kwargs: Any) -> torch.Tensor:  # type: ignore[override]
        """``(B, 2, S)`` slice logits of volumes ``(B, C, H, W, D)``."""
        dense = torch.as_tensor(self.inferer(inputs, DenseLesionMap(network, self.background_channel), *args, **kwargs))
        if dense.ndim != 5 or dense.shape[1] != 2:
            raise ValueError(f"the inferer must return the dense map (B, 2, H, W, D), got shape {tuple(dense.shape)}.")
        self.last_lesion_maps = [volume[0].detach() for volume in dense]
        self.last_contrast_maps = []
        self.last_planes = self._planes(dense) if self.plane == "symmetry" else [None] * len(dense)
        scores = []
        for volume, plane in zip(dense.float(), self.last_planes):
            contrast = mirror_contrast(volume[0], volume[1] > 0.5, self.margin, self.left_right_axis, plane, self.widen)
            self.last_contrast_maps.append(contrast.detach())
            others = [d for d in range(3) if d != self.slice_axis]
            scores.append(contrast.amax(dim=others))
        slice_scores = torch.stack(scores)  # (B, S)
        return torch.stack([torch.zeros_like(slice_scores), slice_scores], dim=1)

    def _planes(self, dense: torch.Tensor) -> list[tuple[np.ndarray, np.ndarray] | None]:
        """The mid-sagittal plane of each volume of the last call, from the brain extraction's records."""
        stripping = find_inferer(self.inferer, SkullStrippingInferer)
        if stripping is None:  # e.g. the bundle run with --brain_extraction false: nothing to fit the plane to
            logger.warning("the aligned mirror read-out has no brain extraction in its chain: the upright mirror plane "
                           "is used (the threshold was set with the fitted plane).")
            return [None] * len(dense)
        logits = getattr(stripping.extractor, "last_tissue_logits", None)
        if logits is None or len(stripping.last_brains) != len(dense) or len(logits) != len(dense):
            raise ValueError(f"the brain extraction in the chain holds no record of the {len(dense)} volume(s) of this call.")
        stripping.extractor.check_tissue_channel(self.white_matter_channel)  # before any volume, as a settings error
        planes: list[tuple[np.ndarray, np.ndarray] | None] = []
        for index, brain in enumerate(stripping.last_brains):
            if brain.shape != dense.shape[2:]:
                raise ValueError(f"the extracted brain {tuple(brain.shape)} and the lesion map {tuple(dense.shape[2:])} "
                                 f"are on different grids.")
            if stripping.last_brain_voxels[index] < stripping.min_voxels:
                planes.append(None)
                continue
            probability = stripping.extractor.white_matter_probability(index, self.white_matter_channel)
            planes.append(white_matter_plane(brain.cpu().numpy().astype(bool), probability, self.plane_core,
                                             self.left_right_axis))
        return planes


def volume_readout_inferer(inferer: Callable[..., Any], readout: str = "maximum", margin: float = 4.0) -> Any:
    """The classification bundle's inferer for a volume read-out (its ``volume_readout``).

    Args:
        inferer: the bundle's inferer (brain extraction, polarity, slice stacks).
        readout: ``"maximum"`` (the classifier's own pooled slice logits: ``inferer`` as it is),
            ``"mirror"`` (:class:`MirrorContrastInferer` around it, the upright plane) or
            ``"aligned_mirror"`` (the same about each brain's mid-sagittal plane, the mirror image widened
            by 3 voxels; needs brain extraction in ``inferer``).
        margin: the mirror margin in log-odds.

    Returns:
        ``inferer``, ``MirrorContrastInferer(inferer, margin)`` or
        ``MirrorContrastInferer(inferer, margin, plane="symmetry", widen=3)``.

    Raises:
        ValueError: ``readout`` is not one of :data:`READOUTS`.
    """
    if readout not in READOUTS:
        raise ValueError(f"volume_readout={readout!r} is not valid; expected one of {READOUTS}.")
    if readout == "maximum":
        return inferer
    if readout == "mirror":
        return MirrorContrastInferer(inferer, margin=margin)
    return MirrorContrastInferer(inferer, margin=margin, plane="symmetry", widen=3)
