"""MONAI transforms for medmamba: loading scans, CT windows, MR normalisation, stride padding, presets.

Spatial work (orientation, spacing, foreground crop) re-uses MONAI's ``Orientationd``,
``Spacingd`` and ``CropForegroundd``; see :func:`scan_preprocessing`.
"""

from __future__ import annotations

from medmamba.transforms.anti_aliasing import AntiAliasedSpacingd, anti_aliasing_sigma
from medmamba.transforms.bias_field import RandBiasField, RandBiasFieldd, legendre_coefficients
from medmamba.transforms.brain_mask import BrainMask, BrainMaskd, KeepBrainComponent, KeepBrainComponentd, close_brain, detach_brain
from medmamba.transforms.brain_gaps import CloseBrainGaps, CloseBrainGapsd
from medmamba.transforms.brain_normalize import BrainNormalize, BrainNormalized
from medmamba.transforms.ct_window import CT_WINDOWS, CTWindow, CTWindowd, resolve_window
from medmamba.transforms.label_map import LabelMap, LabelMapd, argmax_in, channel_argmax
from medmamba.transforms.lesion_insertion import RandLesionInsertd, RandStackLesionInsertd, intensity_white_matter
from medmamba.transforms.lesion_labels import (
    AMBIGUOUS,
    LesionTissueLabeld,
    SampleLesionLabeld,
    SliceLesionLabelsd,
    slice_lesion_labels,
)
from medmamba.transforms.loading import LoadScan, LoadScand
from medmamba.transforms.mr_weighting import CheckMRWeighting, CheckMRWeightingd
from medmamba.transforms.mr_normalize import MRNormalize, MRNormalized, foreground_mask, foreground_threshold, quantiles
from medmamba.transforms.padding import NETWORK_STRIDE, PadToMultiple, PadToMultipled
from medmamba.transforms.presets import ForegroundSelector, scan_preprocessing
from medmamba.transforms.scan_checks import CheckScan, CheckScand, scan_plausibility, voxel_spacing
from medmamba.transforms.slice_stack import SliceStackd, neighbour_slice_indices, stack_slices
from medmamba.transforms.slice_view import SLICE_VIEWS, RandSliceViewd, check_views, from_view, to_view
from medmamba.transforms.stack_flip import RandStackFlipd
from medmamba.transforms.stripped_input import StrippedInputBrain, StrippedInputBraind, skull_stripped_support
from medmamba.transforms.synthesis import RandDomainSynthesisd
from medmamba.transforms.tissue_refinement import (
    ScanGuidedd,
    TissueIntensityRefine,
    TissueIntensityRefined,
    refine_tissue_probabilities,
)

__all__ = [
    "BrainNormalize",
    "BrainNormalized",
    "AntiAliasedSpacingd",
    "anti_aliasing_sigma",
    "AMBIGUOUS",
    "CT_WINDOWS",
    "NETWORK_STRIDE",
    "BrainMask",
    "BrainMaskd",
    "CloseBrainGaps",
    "CloseBrainGapsd",
    "KeepBrainComponent",
    "KeepBrainComponentd",
    "close_brain",
    "detach_brain",
    "CTWindow",
    "CTWindowd",
    "CheckMRWeighting",
    "CheckMRWeightingd",
    "CheckScan",
    "CheckScand",
    "ForegroundSelector",
    "LabelMap",
    "LabelMapd",
    "LesionTissueLabeld",
    "LoadScan",
    "LoadScand",
    "MRNormalize",
    "MRNormalized",
    "PadToMultiple",
    "PadToMultipled",
    "RandBiasField",
    "RandBiasFieldd",
    "RandDomainSynthesisd",
    "RandLesionInsertd",
    "RandStackLesionInsertd",
    "SampleLesionLabeld",
    "ScanGuidedd",
    "SliceLesionLabelsd",
    "StrippedInputBrain",
    "StrippedInputBraind",
    "TissueIntensityRefine",
    "TissueIntensityRefined",
    "argmax_in",
    "channel_argmax",
    "foreground_mask",
    "foreground_threshold",
    "intensity_white_matter",
    "legendre_coefficients",
    "quantiles",
    "refine_tissue_probabilities",
    "resolve_window",
    "scan_plausibility",
    "scan_preprocessing",
    "slice_lesion_labels",
    "SliceStackd",
    "SLICE_VIEWS",
    "RandSliceViewd",
    "RandStackFlipd",
    "check_views",
    "from_view",
    "to_view",
    "neighbour_slice_indices",
    "stack_slices",
    "voxel_spacing",
    "skull_stripped_support",
]
