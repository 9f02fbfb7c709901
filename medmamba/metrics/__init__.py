"""Evaluation metrics: ROC AUC, Dice, bootstrap confidence intervals, lesion classification metrics, threshold calibration."""

from __future__ import annotations

from medmamba.metrics.bootstrap import BootstrapInterval, bootstrap_interval, dice_per_class, roc_auc
from medmamba.metrics.calibration import ThresholdCalibration, calibrate_threshold, clopper_pearson_lower
from medmamba.metrics.lesion import LesionCases, LesionMetric

__all__ = ["BootstrapInterval", "LesionCases", "LesionMetric", "ThresholdCalibration", "bootstrap_interval", "calibrate_threshold",
           "clopper_pearson_lower", "dice_per_class", "roc_auc"]
