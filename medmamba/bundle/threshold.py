"""The classification threshold a training run chose on its validation data, when it chose one."""

from __future__ import annotations

import json
import math
import os

__all__ = ["LEGACY_MIRROR_MARGIN", "release_threshold"]

#: The mirror read-out's margin of threshold files written before the margin was recorded
#: (classification 0.14.0, whose configs had ``mirror_margin`` 4.0).
LEGACY_MIRROR_MARGIN = 4.0


def release_threshold(
    path: str | os.PathLike[str],
    default: float,
    volume_readout: str = "maximum",
    threshold_log_odds: float | None = None,
    mirror_margin: float | None = None,
) -> float:
    """The probability threshold in ``path`` (written by the main job's calibration), else ``default``.

    The weights of a lesion classifier move with every training run (seed, code, CPU rounding), and a
    threshold fixed in the config does not move with them; the main job therefore sets it per run on
    validation data (:func:`medmamba.apps.calibration.calibrate` with ``threshold_file``), and the
    bundle's ``evaluate.json`` and ``inference.json`` read it here. A threshold holds for the volume
    score it was set on: the file names its read-out (``volume_readout``; files without it were set
    with ``"maximum"``), and another read-out is refused; so is, for the ``"mirror"`` read-out, another
    ``mirror_margin`` than the file's (``mirror_margin``; mirror files without it were set with 4.0, the
    only margin of classification 0.14.0).

    Args:
        path: a ``threshold.json`` holding ``threshold_log_odds`` (a missing file gives ``default``).
        default: the probability threshold of the config, used without the file.
        volume_readout: the read-out the caller scores volumes with (the bundle's ``volume_readout``).
        threshold_log_odds: a threshold the user gave (``--threshold_log_odds``); it wins over the file,
            which is then not read.
        mirror_margin: the margin of the mirror read-out the caller scores with (the bundle's
            ``mirror_margin``); ``None`` does not check it.

    Returns:
        A probability in (0, 1): ``sigmoid(threshold_log_odds)`` in float64.

    Raises:
        ValueError: the file exists but holds no finite ``threshold_log_odds``, or was set with
            another read-out than ``volume_readout`` or (mirror read-out) another ``mirror_margin``.
    """
    if threshold_log_odds is not None:
        return 1.0 / (1.0 + math.exp(-float(threshold_log_odds)))
    if not os.path.isfile(path):
        return float(default)
    with open(path, encoding="utf-8") as f:
        doc = json.load(f)
    value = doc.get("threshold_log_odds") if isinstance(doc, dict) else None
    if not _finite_number(value):
        raise ValueError(f"{os.fspath(path)} must hold a finite 'threshold_log_odds', got {value!r}.")
    set_with = doc.get("volume_readout", "maximum")
    if set_with != volume_readout:
        raise ValueError(
            f"{os.fspath(path)} holds a threshold set with volume_readout={set_with!r}, but volume_readout="
            f"{volume_readout!r} was asked for: the scores differ. Set a threshold for it (calibrate.json with "
            f"--volume_readout {volume_readout} --write_threshold_file <file>, then --threshold_file <file>) or "
            f"give --threshold_log_odds.")
    if volume_readout == "mirror" and mirror_margin is not None:
        margin = doc.get("mirror_margin", LEGACY_MIRROR_MARGIN)
        if not _finite_number(margin) or not math.isclose(margin, mirror_margin):
            raise ValueError(
                f"{os.fspath(path)} holds a threshold set with mirror_margin={margin!r}, but mirror_margin="
                f"{mirror_margin!r} was asked for: the scores differ. Set a threshold for it (calibrate.json with "
                f"--mirror_margin {mirror_margin} --write_threshold_file <file>, then --threshold_file <file>) or "
                f"give --threshold_log_odds.")
    return 1.0 / (1.0 + math.exp(-float(value)))


def _finite_number(value: object) -> bool:
    """Whether a JSON value is a finite number (``true``/``false`` are not)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
