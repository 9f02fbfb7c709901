"""Evaluation metrics with uncertainty: ROC AUC, Dice, bootstrap confidence intervals."""

from __future__ import annotations

from medmamba.metrics.bootstrap import BootstrapInterval, bootstrap_interval, dice_per_class, roc_auc

__all__ = ["BootstrapInterval", "bootstrap_interval", "dice_per_class", "roc_auc"]
