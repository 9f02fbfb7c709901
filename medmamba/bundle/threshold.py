"""The classification threshold a training run chose on its validation data, when it chose one."""

from __future__ import annotations

import json
import math
import os

__all__ = ["release_threshold"]


def release_threshold(path: str | os.PathLike[str], default: float) -> float:
    """The probability threshold in ``path`` (written by the main job's calibration), else ``default``.

    The weights of a lesion classifier move with every training run (seed, code, CPU rounding), and a
    threshold fixed in the config does not move with them; the main job therefore sets it per run on
    validation data (:func:`medmamba.apps.calibration.calibrate` with ``threshold_file``), and the
    bundle's ``evaluate.json`` and ``inference.json`` read it here.

    Args:
        path: a ``threshold.json`` holding ``threshold_log_odds`` (a missing file gives ``default``).
        default: the probability threshold of the config, used without the file.

    Returns:
        A probability in (0, 1): ``sigmoid(threshold_log_odds)`` in float64.

    Raises:
        ValueError: the file exists but holds no finite ``threshold_log_odds``.
    """
    if not os.path.isfile(path):
        return float(default)
    with open(path, encoding="utf-8") as f:
        doc = json.load(f)
    value = doc.get("threshold_log_odds") if isinstance(doc, dict) else None
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
        raise ValueError(f"{os.fspath(path)} must hold a finite 'threshold_log_odds', got {value!r}.")
    return 1.0 / (1.0 + math.exp(-float(value)))
