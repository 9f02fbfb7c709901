"""The classification bundle's threshold calibrated on a site's own lesion-free scans.

:func:`calibrate` classifies a folder of scans the site knows to be lesion-free (and, optionally, a
folder of scans with lesions) exactly as ``inference.json`` does, then sets the threshold with
:func:`medmamba.metrics.calibrate_threshold` and writes ``calibration.json``. The bundle runs it as
``configs/calibrate.json`` (an overlay on ``inference.json``); the threshold found is then given to
inference as ``--threshold_log_odds``.
"""

from __future__ import annotations

import csv
import json
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from medmamba.apps.classification import classify
from medmamba.inferers.volume_predictor import VolumeClassifier
from medmamba.io.atomic import atomic_write_text
from medmamba.metrics.calibration import calibrate_threshold

__all__ = ["calibrate", "report_scores"]

logger = logging.getLogger(__name__)

#: the rounding step of ``lesion_log_odds`` in a classification report (``classify`` rounds to 4 decimals)
REPORT_RESOLUTION = 1e-4


def report_scores(report_csv: str | os.PathLike[str]) -> list[float]:
    """The volume lesion log-odds of the cases a classification report holds as ``ok``.

    Args:
        report_csv: a ``probabilities.csv`` written by :func:`medmamba.apps.classification.classify`.

    Returns:
        One score per case classified without failure, in the report's order.

    Raises:
        ValueError: the report has no ``lesion_log_odds`` column.
    """
    with open(report_csv, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    if rows and "lesion_log_odds" not in rows[0]:
        raise ValueError(f"{os.fspath(report_csv)} has no 'lesion_log_odds' column; columns: {sorted(rows[0])}")
    return [float(r["lesion_log_odds"]) for r in rows if r.get("status") == "ok" and r.get("lesion_log_odds")]


def calibrate(
    negative_path: str | os.PathLike[str],
    output_dir: str | os.PathLike[str],
    predictor: VolumeClassifier,
    preprocessing: Callable[[Any], Any],
    positive_path: str | os.PathLike[str] | None = None,
    specificity: float = 0.95,
    confidence: float = 0.95,
) -> dict[str, Any]:
    """Classify lesion-free (and optionally lesion) scans and set the threshold at ``specificity``.

    Writes ``<output_dir>/negatives/probabilities.csv`` (and ``positives/``) as inference does, and
    ``<output_dir>/calibration.json``: the fields of :class:`medmamba.metrics.ThresholdCalibration`, the
    failed cases, and the inference override that applies the threshold. A ``meets_target`` of false
    means the sample is too small to vouch for the specificity at that confidence (the lower bound is
    reported beside it).

    Args:
        negative_path: lesion-free scans: a NIfTI file, a DICOM series folder or a folder of them.
        output_dir: output folder.
        predictor: the bundle's :class:`~medmamba.inferers.VolumeClassifier`.
        preprocessing: the bundle's inference preprocessing.
        positive_path: optional scans with lesions, for the sensitivity at the threshold.
        specificity: the share of lesion-free scans to keep below the threshold, in (0, 1].
        confidence: the confidence level of the specificity's lower bound, in (0, 1).

    Returns:
        The content of ``calibration.json``.

    Raises:
        ValueError: no lesion-free scan was classified, or an argument out of range
            (:func:`medmamba.metrics.calibrate_threshold`).
    """
    if negative_path is None:
        raise ValueError("negative_path is required: the site's lesion-free scans (bundle override --negative_path <path>).")
    out = Path(output_dir)
    runs = {"negatives": negative_path, "positives": positive_path}
    scores: dict[str, list[float]] = {}
    failed: dict[str, list] = {}
    for name, path in runs.items():
        if path is None:
            continue
        summary = classify(path, out / name, predictor, preprocessing, write_slice_probabilities=False)
        scores[name] = report_scores(summary["report"])
        failed[name] = summary["failed"]
    if not scores["negatives"]:
        raise ValueError(f"no lesion-free scan under {os.fspath(negative_path)} was classified without failure; "
                         f"failed: {failed['negatives']}")
    result = calibrate_threshold(scores["negatives"], specificity, confidence, scores.get("positives"),
                                 resolution=REPORT_RESOLUTION)
    doc: dict[str, Any] = {
        **result.as_dict(),
        "negative_path": os.fspath(negative_path),
        "positive_path": None if positive_path is None else os.fspath(positive_path),
        "failed": failed,
        "inference_override": f"--threshold_log_odds {round(result.threshold_log_odds, 4)!r}",
    }
    atomic_write_text(out / "calibration.json", json.dumps(doc, indent=1) + "\n")
    logger.info("threshold %.4f log-odds: %d of %d lesion-free scans below (specificity %.3f, %.0f %% lower bound %.3f%s)",
                result.threshold_log_odds, result.n_negatives - result.negatives_at_or_above, result.n_negatives,
                result.specificity, 100 * confidence, result.specificity_lower_bound,
                "" if result.meets_target else f": too few scans to vouch for {specificity}")
    return doc
