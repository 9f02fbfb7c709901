"""Case-level metrics and their bootstrap 95 % intervals.

With a few dozen test cases a single number says little: six subjects give an AUC of 1.000 from
nine lesion/lesion-free pairs. Every figure the shift suite and the bundle docs report therefore
comes with a percentile bootstrap interval over cases (Efron & Tibshirani, *An Introduction to the
Bootstrap*, 1993): cases are resampled with replacement, for a classification metric within each
class (stratified, so every resample holds both classes), and the metric is recomputed.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["BootstrapInterval", "bootstrap_interval", "dice_per_class", "roc_auc"]


def roc_auc(scores: Sequence[float] | np.ndarray, labels: Sequence[int] | np.ndarray) -> float:
    """Area under the ROC curve (the Mann-Whitney probability that a positive outranks a negative).

    In NumPy, not torchmetrics' ``binary_auroc``: that one computes in float32 and sigmoids scores outside [0, 1].

    Args:
        scores: One score per case (higher: more likely positive).
        labels: 0/1 per case.

    Returns:
        The AUC; ties count one half.

    Raises:
        ValueError: If the lengths differ, labels are not 0/1, or a class is missing.
    """
    s = np.asarray(scores, dtype=float).ravel()
    y = np.asarray(labels).ravel()
    if s.shape != y.shape:
        raise ValueError(f"scores and labels must have the same length, got {s.size} and {y.size}")
    if not np.isin(y, (0, 1)).all():
        raise ValueError(f"labels must be 0 or 1, got values {sorted(set(y.tolist()))}")
    pos, neg = s[y == 1], s[y == 0]
    if pos.size == 0 or neg.size == 0:
        raise ValueError(f"roc_auc needs both classes, got {pos.size} positive and {neg.size} negative cases")
    greater = (pos[:, None] > neg[None, :]).sum()
    ties = (pos[:, None] == neg[None, :]).sum()
    return float((greater + 0.5 * ties) / (pos.size * neg.size))


def dice_per_class(pred: np.ndarray, truth: np.ndarray, classes: Sequence[int]) -> dict[int, float]:
    """Dice overlap of each class between two label maps of the same shape.

    Args:
        pred: Predicted labels.
        truth: Reference labels.
        classes: Label values to score.

    Returns:
        ``{class: dice}``; a class absent from both maps scores ``nan``.

    Raises:
        ValueError: If the shapes differ.
    """
    p, t = np.asarray(pred), np.asarray(truth)
    if p.shape != t.shape:
        raise ValueError(f"pred and truth must have the same shape, got {p.shape} and {t.shape}")
    out = {}
    for c in classes:
        a, b = p == c, t == c
        denom = int(a.sum()) + int(b.sum())
        out[int(c)] = float(2.0 * np.logical_and(a, b).sum() / denom) if denom else float("nan")
    return out


@dataclass(frozen=True)
class BootstrapInterval:
    """A point estimate with its percentile bootstrap interval.

    Attributes:
        value: The metric on all cases.
        low: Lower bound of the interval.
        high: Upper bound of the interval.
        level: Confidence level (0.95).
        n_cases: Number of cases.
    """

    value: float
    low: float
    high: float
    level: float
    n_cases: int

    @property
    def half_width(self) -> float:
        """Half the interval's width."""
        return (self.high - self.low) / 2.0

    def __str__(self) -> str:
        return f"{self.value:.3f} [{self.low:.3f}, {self.high:.3f}]"


def bootstrap_interval(
    metric: Callable[..., float],
    *columns: Sequence[float] | np.ndarray,
    strata: Sequence[int] | np.ndarray | None = None,
    n_resamples: int = 2000,
    level: float = 0.95,
    seed: int = 0,
) -> BootstrapInterval:
    """Percentile bootstrap interval of a case-level metric.

    Args:
        metric: Called as ``metric(*resampled_columns)``; returns a float.
        columns: Per-case arrays of equal length (e.g. scores and labels, or per-case Dice values).
        strata: Optional per-case group (e.g. the class label): resampling is done within each group.
        n_resamples: Number of bootstrap resamples.
        level: Confidence level in (0, 1).
        seed: Seed of the resampling (the interval is deterministic for a seed).

    Returns:
        The :class:`BootstrapInterval`.

    Raises:
        ValueError: If no column is given, their lengths differ, or ``level``/``n_resamples`` are invalid.
    """
    if not columns:
        raise ValueError("bootstrap_interval needs at least one per-case column")
    arrays = [np.asarray(c) for c in columns]
    n = len(arrays[0])
    if n == 0 or any(len(a) != n for a in arrays):
        raise ValueError(f"columns must be non-empty and of equal length, got lengths {[len(a) for a in arrays]}")
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level!r}")
    if int(n_resamples) < 1:
        raise ValueError(f"n_resamples must be >= 1, got {n_resamples!r}")
    groups = [np.arange(n)] if strata is None else [np.flatnonzero(np.asarray(strata) == g) for g in np.unique(strata)]
    rng = np.random.default_rng(seed)
    stats = []
    for _ in range(int(n_resamples)):
        idx = np.concatenate([g[rng.integers(0, g.size, g.size)] for g in groups])
        stats.append(metric(*(a[idx] for a in arrays)))
    stats_arr = np.asarray(stats, dtype=float)
    stats_arr = stats_arr[np.isfinite(stats_arr)]
    alpha = (1.0 - level) / 2.0
    low, high = (np.quantile(stats_arr, [alpha, 1.0 - alpha]) if stats_arr.size else (np.nan, np.nan))
    return BootstrapInterval(float(metric(*arrays)), float(low), float(high), float(level), n)
