"""Ignite event handlers for MONAI workflows: evaluation reports, per-case segmentation metrics, DDP filtering."""

from __future__ import annotations

from medmamba.handlers.classification_report import ClassificationReport
from medmamba.handlers.rank_zero import rank_zero_handlers
from medmamba.handlers.segmentation_metrics import SegmentationMetrics

__all__ = ["ClassificationReport", "SegmentationMetrics", "rank_zero_handlers"]
