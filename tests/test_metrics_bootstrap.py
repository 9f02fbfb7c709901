"""ROC AUC, Dice and bootstrap intervals (medmamba.metrics)."""

from __future__ import annotations

import numpy as np
import pytest

from medmamba.metrics import bootstrap_interval, dice_per_class, roc_auc


def test_roc_auc_counts_pairs_and_ties() -> None:
    assert roc_auc([0.9, 0.8, 0.1, 0.2], [1, 1, 0, 0]) == 1.0
    assert roc_auc([0.1, 0.2, 0.9, 0.8], [1, 1, 0, 0]) == 0.0
    # 2 positives x 2 negatives: (0.6 > 0.5), (0.6 > 0.4), (0.3 < 0.5), (0.3 < 0.4) -> 2 of 4; one tie adds 1/2
    assert roc_auc([0.6, 0.3, 0.5, 0.4], [1, 1, 0, 0]) == 0.5
    assert roc_auc([0.5, 0.3, 0.5, 0.4], [1, 1, 0, 0]) == pytest.approx(0.375)


def test_roc_auc_errors_name_the_problem() -> None:
    with pytest.raises(ValueError, match="both classes"):
        roc_auc([0.1, 0.2], [1, 1])
    with pytest.raises(ValueError, match="must be 0 or 1"):
        roc_auc([0.1, 0.2], [1, 2])


def test_dice_per_class() -> None:
    truth = np.array([0, 1, 1, 2, 2, 2])
    pred = np.array([0, 1, 2, 2, 2, 0])
    d = dice_per_class(pred, truth, [1, 2, 3])
    assert d[1] == pytest.approx(2 * 1 / 3)
    assert d[2] == pytest.approx(2 * 2 / 6)
    assert np.isnan(d[3])


def test_bootstrap_interval_is_deterministic_and_brackets_the_estimate() -> None:
    rng = np.random.default_rng(0)
    labels = np.repeat([0, 1], 20)
    scores = labels * 1.0 + rng.normal(0, 0.8, 40)
    a = bootstrap_interval(roc_auc, scores, labels, strata=labels, n_resamples=500, seed=3)
    b = bootstrap_interval(roc_auc, scores, labels, strata=labels, n_resamples=500, seed=3)
    assert a == b and a.n_cases == 40
    assert a.low <= a.value <= a.high and a.high - a.low > 0.05
    # more cases, narrower interval
    big_labels = np.repeat([0, 1], 200)
    big = bootstrap_interval(roc_auc, big_labels + rng.normal(0, 0.8, 400), big_labels, strata=big_labels, n_resamples=300)
    assert big.half_width < a.half_width


def test_perfect_separation_gives_a_degenerate_interval() -> None:
    labels = np.repeat([0, 1], 5)
    res = bootstrap_interval(roc_auc, labels.astype(float), labels, strata=labels, n_resamples=100)
    assert (res.value, res.low, res.high) == (1.0, 1.0, 1.0)
    assert str(res) == "1.000 [1.000, 1.000]"
