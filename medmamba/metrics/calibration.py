"""A decision threshold calibrated on a site's own lesion-free scans, at a chosen specificity.

The classification bundle's threshold (10.5 lesion log-odds) was chosen on generated validation
subjects. A scanner, protocol or population the generator does not cover moves the scores of
lesion-free scans: on the unmodified MNI152 template (the training anatomy itself) they reach 8-10.8
log-odds depending on the training seed, and a real head differs from the template more than any
generated subject does. A site that holds lesion-free scans of its own can set the threshold where
its own negatives fall instead: :func:`calibrate_threshold` takes their volume scores and returns the
lowest threshold that keeps the wanted share of them below it, with the one-sided Clopper-Pearson
lower confidence bound of the specificity that sample can vouch for (few scans vouch for little:
with 20 lesion-free scans all below the threshold the 95 % lower bound is 0.86).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
from scipy.stats import beta

__all__ = ["ThresholdCalibration", "calibrate_threshold", "clopper_pearson_lower"]


@dataclass(frozen=True)
class ThresholdCalibration:
    """The result of :func:`calibrate_threshold` (scores in lesion log-odds).

    Attributes:
        threshold_log_odds: a scan is called "lesion present" when its score is at or above this.
        target_specificity: the specificity asked for.
        confidence: the confidence level of ``specificity_lower_bound``.
        n_negatives: lesion-free scans used.
        negatives_at_or_above: how many of them score at or above the threshold.
        specificity: the share of them below the threshold.
        specificity_lower_bound: its one-sided Clopper-Pearson lower confidence bound.
        meets_target: whether that bound reaches ``target_specificity`` (enough scans to vouch for it).
        n_positives: lesion scans given (0 if none).
        sensitivity: the share of them at or above the threshold (``None`` without lesion scans).
        negative_max: the highest lesion-free score.
    """

    threshold_log_odds: float
    target_specificity: float
    confidence: float
    n_negatives: int
    negatives_at_or_above: int
    specificity: float
    specificity_lower_bound: float
    meets_target: bool
    n_positives: int
    sensitivity: float | None
    negative_max: float

    def as_dict(self) -> dict[str, float | int | bool | None]:
        """The fields as a JSON-ready dict."""
        return asdict(self)


def clopper_pearson_lower(successes: int, trials: int, confidence: float = 0.95) -> float:
    """One-sided Clopper-Pearson lower bound of a binomial proportion.

    Args:
        successes: successes observed (0 ... ``trials``).
        trials: trials (at least 1).
        confidence: confidence level in (0, 1).

    Returns:
        The largest ``p`` such that observing ``successes`` or more has probability ``1 - confidence``
        (0 when ``successes`` is 0).

    Raises:
        ValueError: counts out of range or a confidence outside (0, 1).
    """
    if not isinstance(trials, int) or trials < 1:
        raise ValueError(f"trials must be a positive int, got {trials!r}.")
    if not isinstance(successes, int) or not 0 <= successes <= trials:
        raise ValueError(f"successes must be an int in [0, trials={trials}], got {successes!r}.")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence!r}.")
    if successes == 0:
        return 0.0
    return float(beta.ppf(1.0 - confidence, successes, trials - successes + 1))


def _scores(name: str, values: Sequence[float] | np.ndarray | None, required: bool) -> np.ndarray:
    arr = np.asarray([] if values is None else values, dtype=float).ravel()
    if required and arr.size == 0:
        raise ValueError(f"{name} must hold at least one score, got none.")
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} must be finite lesion log-odds, got {arr[~np.isfinite(arr)][:3].tolist()}.")
    return arr


def calibrate_threshold(
    negative_scores: Sequence[float] | np.ndarray,
    specificity: float = 0.95,
    confidence: float = 0.95,
    positive_scores: Sequence[float] | np.ndarray | None = None,
    resolution: float = 1e-9,
) -> ThresholdCalibration:
    """The lowest threshold at which at most ``1 - specificity`` of the lesion-free scans score at or above it.

    With ``n`` lesion-free scores, ``k = floor((1 - specificity) * n)`` of them may reach the threshold:
    the threshold lies ``resolution`` above the ``(n - k)``-th smallest score, so that the ``n - k``
    lowest are called lesion-free under the rule "lesion present when score >= threshold".

    Args:
        negative_scores: volume lesion log-odds of scans known to be lesion-free.
        specificity: the share of lesion-free scans to keep below the threshold, in (0, 1].
        confidence: the confidence level of the reported lower bound, in (0, 1).
        positive_scores: optional scores of scans with lesions, for the sensitivity at the threshold.
        resolution: how far above that score the threshold lies, > 0: the rounding step of the scores
            given (a report's ``lesion_log_odds`` are rounded to 1e-4, so the unrounded score of a case
            may lie up to half a step above), 1e-9 for unrounded scores. (Not the next float: with
            denormals flushed, as the bundles' ``torch.set_flush_denormal(True)`` sets for the whole
            process, the next float above 0.0 is 0.0.)

    Returns:
        A :class:`ThresholdCalibration`.

    Raises:
        ValueError: no lesion-free score, a score that is not finite, or ``specificity`` / ``confidence`` /
            ``resolution`` out of range.
    """
    if not 0.0 < specificity <= 1.0:
        raise ValueError(f"specificity must be in (0, 1], got {specificity!r}.")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence!r}.")
    if not (math.isfinite(resolution) and resolution > 0.0):
        raise ValueError(f"resolution must be a finite step > 0, got {resolution!r}.")
    neg = np.sort(_scores("negative_scores", negative_scores, required=True))
    pos = _scores("positive_scores", positive_scores, required=False)
    n = int(neg.size)
    allowed = int(math.floor((1.0 - specificity) * n + 1e-9))
    last_below = float(neg[n - allowed - 1])
    threshold = round(last_below + resolution, 12)
    at_or_above = int((neg >= threshold).sum())
    below = n - at_or_above
    lower = clopper_pearson_lower(below, n, confidence)
    return ThresholdCalibration(
        threshold_log_odds=threshold,
        target_specificity=float(specificity),
        confidence=float(confidence),
        n_negatives=n,
        negatives_at_or_above=at_or_above,
        specificity=below / n,
        specificity_lower_bound=lower,
        meets_target=lower >= specificity,
        n_positives=int(pos.size),
        sensitivity=float((pos >= threshold).mean()) if pos.size else None,
        negative_max=float(neg[-1]),
    )
