"""Inferers that run 2D networks on 3D volumes: slice by slice, with slice context, and per volume."""

from __future__ import annotations

from .slice_stack import SliceStackInferer, expected_in_channels
from .volume_classification import (
    AGGREGATIONS,
    SliceAggregationInferer,
    SliceAggregator,
    aggregate_slice_logits,
)

__all__ = [
    "AGGREGATIONS",
    "SliceAggregationInferer",
    "SliceAggregator",
    "SliceStackInferer",
    "aggregate_slice_logits",
    "expected_in_channels",
]
