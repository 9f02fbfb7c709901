"""Inferers that run 2D networks on 3D volumes: slice by slice, with slice context, per volume, with flip TTA."""

from __future__ import annotations

from .brain_extraction import BrainExtractor, SkullStrippingInferer
from .bright_outlier import BrightOutlierRule, bright_outlier_score, local_white_matter_ratio
from .chain import find_inferer
from .dark_asymmetry import DarkAsymmetryRule, dark_asymmetry_score
from .symmetry import mirrored_mask, reflected, symmetry_plane, white_matter_plane
from .lesion_rule import LesionRule, VolumeRecord
from .brain_normalization import FINAL_INPUTS, BrainNormalizingInferer, combine_head_and_brain, tissue_network
from .contrast_polarity import (
    POLARITIES,
    ContrastPolarityInferer,
    TissueMapFit,
    analysed_polarity,
    invert_contrast,
    prefers_inverted,
    probe_slices,
    tissue_map_fit,
)
from .flip_tta import FlipTTAInferer, log_mean_softmax
from .mirror_contrast import MIRROR_PLANES, MIRROR_READOUTS, READOUTS, DenseLesionMap, MirrorContrastInferer, mirror_contrast, volume_readout_inferer
from .lesion_scores import lesion_log_odds, lesion_probability, volume_log_odds
from .multi_view import MultiViewInferer
from .slice_stack import SliceStackInferer, expected_in_channels
from .volume_classification import (
    AGGREGATIONS,
    SliceAggregationInferer,
    SliceAggregator,
    aggregate_slice_logits,
)
from .volume_predictor import VolumeClassifier, VolumePredictor, VolumeSegmenter

__all__ = [
    "AGGREGATIONS",
    "BrainExtractor",
    "BrainNormalizingInferer",
    "BrightOutlierRule",
    "DarkAsymmetryRule",
    "LesionRule",
    "VolumeRecord",
    "FINAL_INPUTS",
    "ContrastPolarityInferer",
    "DenseLesionMap",
    "MirrorContrastInferer",
    "READOUTS",
    "MIRROR_PLANES",
    "MIRROR_READOUTS",
    "POLARITIES",
    "TissueMapFit",
    "FlipTTAInferer",
    "SliceAggregationInferer",
    "SliceAggregator",
    "SkullStrippingInferer",
    "SliceStackInferer",
    "MultiViewInferer",
    "log_mean_softmax",
    "mirror_contrast",
    "volume_readout_inferer",
    "VolumeClassifier",
    "VolumePredictor",
    "VolumeSegmenter",
    "aggregate_slice_logits",
    "analysed_polarity",
    "bright_outlier_score",
    "dark_asymmetry_score",
    "mirrored_mask",
    "symmetry_plane",
    "reflected",
    "white_matter_plane",
    "combine_head_and_brain",
    "expected_in_channels",
    "find_inferer",
    "invert_contrast",
    "lesion_log_odds",
    "lesion_probability",
    "local_white_matter_ratio",
    "prefers_inverted",
    "probe_slices",
    "tissue_map_fit",
    "tissue_network",
    "volume_log_odds",
]
