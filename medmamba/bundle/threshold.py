"""The classification threshold a training run chose on its validation data, when it chose one."""

from __future__ import annotations

import json
import math
import os

__all__ = [
    "LEGACY_MIRROR_MARGIN",
    "bright_outlier_rule",
    "dark_asymmetry_rule",
    "lesion_rule",
    "release_rule_threshold",
    "release_threshold",
]

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
    with ``"maximum"``), and another read-out is refused; so is, for a mirror read-out (``"mirror"``,
    ``"aligned_mirror"``), another ``mirror_margin`` than the file's (``mirror_margin``; mirror files without it were set with 4.0, the
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
            another read-out than ``volume_readout`` or (a mirror read-out) another ``mirror_margin``.
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
    from medmamba.inferers.mirror_contrast import MIRROR_READOUTS

    if volume_readout in MIRROR_READOUTS and mirror_margin is not None:
        margin = doc.get("mirror_margin", LEGACY_MIRROR_MARGIN)
        if not _finite_number(margin) or not math.isclose(margin, mirror_margin):
            raise ValueError(
                f"{os.fspath(path)} holds a threshold set with mirror_margin={margin!r}, but mirror_margin="
                f"{mirror_margin!r} was asked for: the scores differ. Set a threshold for it (calibrate.json with "
                f"--mirror_margin {mirror_margin} --write_threshold_file <file>, then --threshold_file <file>) or "
                f"give --threshold_log_odds.")
    return 1.0 / (1.0 + math.exp(-float(value)))


def bright_outlier_rule(
    enabled: bool | str, brain_extraction: bool | str = True, volume_readout: str = "mirror", **settings: float
) -> object | None:
    """The classification bundle's gated bright-outlier rule, or ``None`` when it is switched off.

    Args:
        enabled: the bundle's ``bright_outlier``: ``"auto"``, or on/off as a bool or the ``"true"``/``"false"``
            of a command-line override (:func:`lesion_rule`).
        brain_extraction: the bundle's ``brain_extraction``.
        volume_readout: the bundle's ``volume_readout``.
        settings: :class:`medmamba.inferers.BrightOutlierRule` arguments.

    Returns:
        A :class:`medmamba.inferers.BrightOutlierRule` with ``settings``, or ``None``.
    """
    from medmamba.inferers.bright_outlier import BrightOutlierRule

    return lesion_rule(BrightOutlierRule, enabled, brain_extraction, volume_readout, **settings)


def dark_asymmetry_rule(
    enabled: bool | str, brain_extraction: bool | str = True, volume_readout: str = "mirror", **settings: float
) -> object | None:
    """The classification bundle's dark-asymmetry rule, or ``None`` when it is switched off.

    Args:
        enabled: the bundle's ``dark_asymmetry``: ``"auto"``, or on/off (:func:`lesion_rule`).
        brain_extraction: the bundle's ``brain_extraction``.
        volume_readout: the bundle's ``volume_readout``.
        settings: :class:`medmamba.inferers.DarkAsymmetryRule` arguments.

    Returns:
        A :class:`medmamba.inferers.DarkAsymmetryRule` with ``settings``, or ``None``.
    """
    from medmamba.inferers.dark_asymmetry import DarkAsymmetryRule

    return lesion_rule(DarkAsymmetryRule, enabled, brain_extraction, volume_readout, **settings)


def lesion_rule(
    kind: type, enabled: bool | str, brain_extraction: bool | str = True, volume_readout: str = "mirror", **settings: float
) -> object | None:
    """A lesion rule of the classification bundle, or ``None`` when it is switched off.

    The rules read the brain extraction's tissue map and the mirror read-out's dense lesion maps
    (:class:`medmamba.inferers.LesionRule`); ``"auto"`` switches a rule on where the bundle runs both
    (a mirror read-out: ``"mirror"`` or ``"aligned_mirror"``).

    Args:
        kind: the rule's class (a :class:`medmamba.inferers.LesionRule` subclass).
        enabled: ``"auto"``, or on/off as a bool or the ``"true"``/``"false"`` of a command-line override
            (on without brain extraction or the mirror read-out, the rule raises when it scores a volume).
        brain_extraction: the bundle's ``brain_extraction``.
        volume_readout: the bundle's ``volume_readout``.
        settings: the rule's arguments.

    Returns:
        ``kind(**settings)``, or ``None``.

    Raises:
        TypeError: ``kind`` is not a lesion rule class.
    """
    from medmamba.bundle.flags import flag
    from medmamba.inferers.lesion_rule import LesionRule

    if not (isinstance(kind, type) and issubclass(kind, LesionRule)):
        raise TypeError(f"kind must be a LesionRule subclass, got {kind!r}.")
    if isinstance(enabled, str) and enabled.strip().lower() == "auto":
        from medmamba.inferers.mirror_contrast import MIRROR_READOUTS

        on = flag(brain_extraction, "brain_extraction") and volume_readout in MIRROR_READOUTS
    else:
        on = flag(enabled, kind.name)
    return kind(**settings) if on else None


def release_rule_threshold(
    path: str | os.PathLike[str],
    rule: object | None,
    threshold_voxels: float | None = None,
    threshold_log_odds: float | None = None,
) -> float | None:
    """A lesion rule's threshold in voxels that the main job's calibration set beside the network's.

    Args:
        path: the bundle's ``threshold.json`` (:func:`medmamba.apps.calibration.calibrate` writes each rule's
            settings and ``threshold_voxels`` under the rule's name).
        rule: the bundle's :class:`medmamba.inferers.LesionRule`, or ``None`` (switched off).
        threshold_voxels: a threshold the user gave (``--<rule name>_threshold_voxels``, from a site's
            ``calibration.json``); it wins over the file.
        threshold_log_odds: the network threshold the user gave (``--threshold_log_odds``); without
            ``threshold_voxels`` the file is then not read either (its thresholds were set together),
            and the rule does not decide.

    Returns:
        The threshold, or ``None`` (the rule does not decide) where ``rule`` is ``None``, the file is
        missing, or it was written without the rule (a release before the rule).

    Raises:
        ValueError: the file's rule was set with other settings than ``rule``'s (its cluster sizes differ),
            or holds no finite ``threshold_voxels``.
    """
    if rule is None:
        return None
    name, title = rule.name, rule.title  # type: ignore[attr-defined]
    if threshold_voxels is not None:
        if not _finite_number(threshold_voxels):
            raise ValueError(f"{name}_threshold_voxels must be a finite number of voxels, got {threshold_voxels!r}.")
        return float(threshold_voxels)
    if threshold_log_odds is not None or not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as f:
        doc = json.load(f)
    recorded = doc.get(name) if isinstance(doc, dict) else None
    if recorded is None:
        return None
    value = recorded.get("threshold_voxels") if isinstance(recorded, dict) else None
    if not _finite_number(value):
        raise ValueError(f"{os.fspath(path)} must hold a finite {name} 'threshold_voxels', got {value!r}.")
    settings = rule.settings()  # type: ignore[attr-defined]
    differ = {k: (recorded.get(k), v) for k, v in settings.items()
              if not (_finite_number(recorded.get(k)) and math.isclose(float(recorded[k]), float(v)))}
    if differ:
        detail = ", ".join(f"{k}={file!r} in the file, {given!r} asked for" for k, (file, given) in differ.items())
        raise ValueError(f"{os.fspath(path)} holds a {title} threshold set with other settings ({detail}): the "
                         f"cluster sizes differ. Set a threshold for them (calibrate.json --write_threshold_file <file>, "
                         f"then --threshold_file <file>) or switch the rule off (--{name} false).")
    return float(value)


def _finite_number(value: object) -> bool:
    """Whether a JSON value is a finite number (``true``/``false`` are not)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
