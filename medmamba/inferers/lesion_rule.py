"""Lesion rules: volume-level checks that score what the classifier's chain of inferers computed on a volume.

A rule does not look at a volume afresh: it reads what the classification bundle's predictor kept of
its last call (the brain extraction's brains and tissue logits,
:class:`medmamba.inferers.SkullStrippingInferer` and :class:`medmamba.inferers.BrainExtractor`; the
classifier's dense lesion map and its mirror contrast, :class:`medmamba.inferers.MirrorContrastInferer`)
and returns one number per volume, the voxel count of its largest suspicious cluster. The bundle calls
a volume "lesion" where the network's score **or** any rule's cluster is above its threshold; each
rule's threshold is set with the network's, on the same lesion-free validation scans
(:func:`medmamba.apps.calibration.calibrate`), and written under the rule's :attr:`LesionRule.name` in
the bundle's ``threshold.json``.

:class:`LesionRule` holds what every rule shares: finding the chain's records of one volume, the cases
where a rule does not apply, and the decision :meth:`LesionRule.calls`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from medmamba.inferers.argument_checks import check_count
from medmamba.inferers.brain_extraction import SkullStrippingInferer
from medmamba.inferers.chain import find_inferer
from medmamba.inferers.contrast_polarity import analysed_polarity
from medmamba.inferers.mirror_contrast import MirrorContrastInferer

__all__ = ["LesionRule", "VolumeRecord", "check_rules", "rule_callers"]


@dataclass
class VolumeRecord:
    """What the classifier's chain kept of one volume of its last call, as numpy arrays on its grid.

    Attributes:
        brain: boolean ``(H, W, D)`` extracted brain.
        white_matter_probability: ``(H, W, D)`` white-matter probability of the extraction's tissue pass.
        lesion_log_odds: ``(H, W, D)`` the classifier's dense lesion log-odds.
        lesion_contrast: ``(H, W, D)`` their mirror contrast (:func:`medmamba.inferers.mirror_contrast`),
            what the volume score is the maximum of.
        mirror_plane: the read-out's mirror plane ``(point, normal)`` (the ``aligned_mirror`` read-out,
            :func:`medmamba.inferers.white_matter_plane`), ``None`` where it was upright or fitted to another
            white-matter channel than the rule's.
        plane_core: the core (voxels from the brain's edge) that plane was fitted to.
    """

    brain: np.ndarray
    white_matter_probability: np.ndarray
    lesion_log_odds: np.ndarray
    lesion_contrast: np.ndarray
    mirror_plane: tuple[np.ndarray, np.ndarray] | None = None
    plane_core: int | None = None


class LesionRule:
    """Base of the classification bundle's lesion rules.

    Subclasses set :attr:`name` (the rule's key in reports and ``threshold.json``, and its switch in the
    bundle), :attr:`title` (how ``decided_by`` names it), implement :meth:`settings` and :meth:`__call__`,
    and read a volume's records with :meth:`record`.

    Args:
        white_matter_channel: the white-matter class of the brain extraction's tissue network.
        min_voxels: the smallest threshold the calibration may set (:func:`medmamba.apps.calibration.calibrate`):
            a cluster this small is no lesion whatever the lesion-free scans show.

    Raises:
        ValueError: a negative or non-int ``white_matter_channel`` or ``min_voxels``.
    """

    name: ClassVar[str] = "lesion_rule"
    title: ClassVar[str] = "lesion rule"

    def __init__(self, white_matter_channel: int = 3, min_voxels: int = 0) -> None:
        self.white_matter_channel = check_count("white_matter_channel", white_matter_channel)
        self.min_voxels = check_count("min_voxels", min_voxels)

    def settings(self) -> dict[str, float]:
        """What the rule's score depends on (recorded beside its threshold, checked when it is read)."""
        raise NotImplementedError

    def __call__(self, image: Any, predictor: Any, index: int = 0) -> int | None:
        """The rule's cluster size for volume ``index`` of the predictor's last call (``None``: it does not apply)."""
        raise NotImplementedError

    def record(self, predictor: Any, index: int = 0) -> VolumeRecord | None:
        """The chain's records of volume ``index`` of the predictor's last call.

        Args:
            predictor: the :class:`~medmamba.inferers.VolumeClassifier` that has just classified it.
            index: the volume's place in that call's batch.

        Returns:
            The records, or ``None`` where a rule does not apply: the volume was analysed with its
            contrast inverted (a T2-like scan: the rules are set on T1 contrast), its extracted brain was
            too small to strip to, or the tissue map holds no white matter inside the brain.

        Raises:
            ValueError: the predictor's chain has no brain extraction or no mirror read-out, they hold no
                record of volume ``index``, or ``white_matter_channel`` is not a tissue class.
        """
        stripping = find_inferer(predictor, SkullStrippingInferer)
        readout = find_inferer(predictor, MirrorContrastInferer)
        if stripping is None or readout is None:
            missing = ("brain extraction (--brain_extraction true)" if stripping is None
                       else "a mirror read-out (--volume_readout aligned_mirror or mirror)")
            raise ValueError(f"the {self.title} needs {missing} in the classifier's chain; run with "
                             f"--{self.name} false without it.")
        logits = getattr(stripping.extractor, "last_tissue_logits", None)
        if logits is None or not (index < len(stripping.last_brains) and index < len(logits)
                                  and index < len(readout.last_lesion_maps) and index < len(readout.last_contrast_maps)):
            raise ValueError(f"the predictor's last call holds no volume {index}: classify the volume first.")
        if analysed_polarity(predictor, index) == "inverted":
            return None
        if stripping.last_brain_voxels[index] < stripping.min_voxels:
            return None
        brain = stripping.last_brains[index].cpu().numpy().astype(bool)
        probability = stripping.extractor.white_matter_probability(index, self.white_matter_channel)
        if not (probability[brain] > 0.5).any():
            return None
        lesion = readout.last_lesion_maps[index].float().cpu().numpy()
        contrast = readout.last_contrast_maps[index].float().cpu().numpy()
        if not (lesion.shape == contrast.shape == brain.shape == probability.shape):
            raise ValueError(f"the chain's maps are on different grids: brain {brain.shape}, tissue {probability.shape}, "
                             f"lesion map {lesion.shape}.")
        plane = readout.last_planes[index] if index < len(readout.last_planes) else None
        if readout.white_matter_channel != self.white_matter_channel:  # fitted to another tissue map
            plane = None
        return VolumeRecord(brain, probability, lesion, contrast, plane, readout.plane_core if plane is not None else None)

    @staticmethod
    def calls(voxels: int | None, threshold: float | None) -> bool:
        """Whether a cluster of ``voxels`` calls a lesion at ``threshold`` (called above it).

        ``voxels`` ``None`` (the rule did not apply) or ``threshold`` ``None`` (the rule reports, does not
        decide) never call one.
        """
        return threshold is not None and voxels is not None and voxels > float(threshold)


def check_rules(
    rules: Sequence[LesionRule] | None, rule_thresholds: Mapping[str, float | None] | None = None
) -> tuple[tuple[LesionRule, ...], dict[str, float | None]]:
    """Checked lesion rules and each one's threshold by name.

    Args:
        rules: the rules (``None``: none).
        rule_thresholds: thresholds in voxels by rule name; ``None`` or a missing name: the rule reports,
            does not decide. A name of no given rule may only map to ``None`` (a rule switched off).

    Returns:
        ``(rules, thresholds)``: a tuple of the rules and ``{rule.name: float or None}``.

    Raises:
        TypeError: a rule is not a :class:`LesionRule`.
        ValueError: two rules share a name, or a threshold is not finite or names no given rule.
    """
    rules = tuple(rules or ())
    for rule in rules:
        if not isinstance(rule, LesionRule):
            raise TypeError(f"rules must hold LesionRule objects, got {type(rule).__name__}.")
    names = [rule.name for rule in rules]
    if len(set(names)) != len(names):
        raise ValueError(f"rules must have different names, got {names}.")
    thresholds: dict[str, float | None] = {name: None for name in names}
    for name, value in (rule_thresholds or {}).items():
        if value is None:
            continue
        if name not in thresholds:
            raise ValueError(f"rule_thresholds gives {name}={value!r}, but no {name} rule is scored (rules: {names}).")
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(float(value)):
            raise ValueError(f"rule_thresholds[{name!r}] must be a finite number of voxels or None, got {value!r}.")
        thresholds[name] = float(value)
    return rules, thresholds


def rule_callers(
    network_called: bool, rules: Sequence[LesionRule], voxels: Sequence[int | None], thresholds: Mapping[str, float | None]
) -> list[str]:
    """Who calls a volume "lesion": ``"network"`` and each rule's :attr:`LesionRule.title` above its threshold."""
    callers = ["network"] if network_called else []
    return callers + [rule.title for rule, v in zip(rules, voxels) if rule.calls(v, thresholds.get(rule.name))]
