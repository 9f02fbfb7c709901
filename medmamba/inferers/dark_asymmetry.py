"""The dark-asymmetry rule: a hypointense white-matter lesion found where the other hemisphere is white matter.

A dark white-matter lesion on a T1 image looks like the brain's own dark structures (ventricles,
cisterns, sulci), and the classifier's network answers both alike (``docs/real-scans.md``). What the
anatomy does not have is a dark spot whose mirror location in the other hemisphere is solid white
matter: the ventricles, the midline CSF and most sulci have a counterpart there.
:func:`dark_asymmetry_score` measures the largest connected cluster of voxels that

* the brain extraction's tissue pass does not call white matter,
* lie in the brain's core (``core`` voxels from its edge),
* mirror onto white matter at least ``solid`` voxels deep (a white-matter mask eroded by ``solid``),
  reflected about the brain's mid-sagittal plane (:func:`symmetry_plane`: the reflection that maps the
  white-matter map onto itself best, which follows a head turned or tilted in the grid),
* and where the classifier's mirror-contrast lesion map exceeds ``min_log_odds``: the rule confirms a
  spot the network half-sees.

:class:`DarkAsymmetryRule` scores it for the volume the bundle's predictor has just classified
(:class:`medmamba.inferers.LesionRule`); the bundle calls a volume "lesion" where the network or a rule
is above its threshold (``docs/real-scans.md``, twenty-eighth session).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from medmamba.inferers.argument_checks import check_count
from medmamba.inferers.lesion_rule import LesionRule
from medmamba.inferers.symmetry import mirrored_mask, symmetry_plane

__all__ = ["DarkAsymmetryRule", "dark_asymmetry_score"]


def dark_asymmetry_score(
    white_matter_probability: np.ndarray,
    brain: np.ndarray,
    lesion_contrast: np.ndarray,
    solid: int = 2,
    core: int = 2,
    min_log_odds: float = 4.0,
    axis: int = 0,
    plane: tuple[np.ndarray, np.ndarray] | None = None,
) -> int:
    """The largest cluster of non-white-matter voxels whose mirror location is solid white matter.

    Args:
        white_matter_probability: ``(H, W, D)``, a tissue network's white-matter probability; white
            matter is where it exceeds 0.5.
        brain: boolean ``(H, W, D)`` brain mask.
        lesion_contrast: ``(H, W, D)`` the classifier's mirror-contrast lesion log-odds
            (:func:`medmamba.inferers.mirror_contrast`).
        solid: how deep (an erosion in voxels) inside white matter the mirror location must lie.
        core: voxels next to the brain's edge left out, as an erosion by this many voxels; the mirror
            plane is fitted to that core (:func:`symmetry_plane`).
        min_log_odds: only voxels whose ``lesion_contrast`` exceeds it count.
        axis: the left-right axis.
        plane: the mirror plane ``(point, normal)`` if already found for this brain and core (the
            ``aligned_mirror`` read-out's, :func:`medmamba.inferers.white_matter_plane`); ``None`` fits it
            here (:func:`symmetry_plane` of the white-matter map inside the core).

    Returns:
        The voxel count of the largest 6-connected cluster (0 without one).

    Raises:
        ValueError: shapes differ, or a negative or non-int ``solid`` or ``core``.
    """
    if not (white_matter_probability.shape == brain.shape == lesion_contrast.shape) or brain.ndim != 3:
        raise ValueError(f"white_matter_probability {white_matter_probability.shape}, brain {brain.shape} and "
                         f"lesion_contrast {lesion_contrast.shape} must be the same 3D grid.")
    _check_settings(solid, core)
    from scipy import ndimage

    ball = ndimage.generate_binary_structure(3, 1)
    brain = brain.astype(bool)
    inner = ndimage.binary_erosion(brain, ball, iterations=core) if core else brain
    white_matter = white_matter_probability > 0.5
    if not inner.any():
        return 0
    if plane is None:
        plane = symmetry_plane(white_matter_probability, inner, axis)
    mirror = mirrored_mask(white_matter, *plane)
    if solid:
        mirror = ndimage.binary_erosion(mirror, ball, iterations=solid)
    candidates = ~white_matter & inner & mirror & (lesion_contrast > min_log_odds)
    labels, n = ndimage.label(candidates, ball)
    return int(np.bincount(labels.ravel())[1:].max()) if n else 0


def _check_settings(solid: int, core: int) -> None:
    check_count("solid", solid)
    check_count("core", core)


class DarkAsymmetryRule(LesionRule):
    """The dark-asymmetry rule of the classification bundle (:func:`dark_asymmetry_score`).

    Called after a :class:`medmamba.inferers.VolumeClassifier` has classified a batch, it scores one
    volume of it from what the predictor's chain of inferers kept of that call
    (:meth:`medmamba.inferers.LesionRule.record`: the brain, the tissue pass's white-matter probability,
    the mirror-contrast lesion map); the image itself is not read.

    Args:
        solid: how deep inside white matter the mirror location must lie (voxels).
        core: voxels next to the brain's edge left out.
        min_log_odds: the gate on the classifier's mirror-contrast lesion map.
        min_voxels: the smallest threshold the calibration may set: the smallest lesion the default data
            plant on the bundles' 2 mm grid (:func:`medmamba.data.synthetic.insert_lesions`, ``min_voxels``).
            With the mirror plane fitted, lesion-free scans hold clusters of a few voxels at most, and a
            threshold set by them alone would call any few stray voxels.
        white_matter_channel: the white-matter class of the brain extraction's tissue network.

    Raises:
        ValueError: a setting out of range (see :func:`dark_asymmetry_score`) or a negative channel.
    """

    name = "dark_asymmetry"
    title = "dark-asymmetry rule"

    def __init__(
        self, solid: int = 2, core: int = 2, min_log_odds: float = 4.0, min_voxels: int = 8, white_matter_channel: int = 3
    ) -> None:
        _check_settings(solid, core)
        super().__init__(white_matter_channel, min_voxels)
        self.solid, self.core, self.min_log_odds = int(solid), int(core), float(min_log_odds)

    def settings(self) -> dict[str, float]:
        """What the rule's score depends on (recorded beside its threshold, checked when it is read)."""
        return {"solid": self.solid, "core": self.core, "min_log_odds": self.min_log_odds, "min_voxels": self.min_voxels}

    def __call__(self, image: Any, predictor: Any, index: int = 0) -> int | None:
        """The cluster size of volume ``index`` of the predictor's last call.

        Args:
            image: that volume (unused: the rule reads the chain's maps; taken so that every rule is
                called alike).
            predictor: the :class:`~medmamba.inferers.VolumeClassifier` that has just classified it.
            index: the volume's place in that call's batch.

        Returns:
            The voxel count of the largest cluster, or ``None`` where the rule does not apply
            (:meth:`~medmamba.inferers.LesionRule.record`).

        Raises:
            ValueError: see :meth:`~medmamba.inferers.LesionRule.record` (run the bundle with
                ``--dark_asymmetry false`` without brain extraction or the mirror read-out).
        """
        record = self.record(predictor, index)
        if record is None:
            return None
        plane = record.mirror_plane if self.core == record.plane_core else None  # the read-out's, fitted alike
        return dark_asymmetry_score(record.white_matter_probability, record.brain, record.lesion_contrast,
                                    self.solid, self.core, self.min_log_odds, plane=plane)
