"""Evaluation metrics: ROC AUC, Dice, bootstrap confidence intervals, lesion classification metrics."""

from __future__ import annotations

from medmamba.metrics.bootstrap import BootstrapInterval, bootstrap_interval, dice_per_class, roc_auc
from medmamba.metrics.lesion import LesionCases, LesionMetric

__all__ = ["BootstrapInterval", "LesionCases", "LesionMetric", "bootstrap_interval", "dice_per_class", "roc_auc"]
