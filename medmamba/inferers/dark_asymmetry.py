"""The dark-asymmetry rule: a hypointense white-matter lesion found where the other hemisphere is white matter.

A dark white-matter lesion on a T1 image looks like the brain's own dark structures (ventricles,
cisterns, sulci), and the classifier's network answers both alike (``docs/real-scans.md``). What the
anatomy does not have is a dark spot whose mirror location in the other hemisphere is solid white
matter: the ventricles, the midline CSF and most sulci have a counterpart there.
:func:`dark_asymmetry_score` measures the largest connected cluster of voxels that

* the brain extraction's tissue pass does not call white matter,
* lie in the brain's core (``core`` voxels from its edge),
* mirror onto white matter at least ``solid`` voxels deep (a white-matter mask eroded by ``solid``),
  reflected about the brain's mid-sagittal plane fitted to its core (:func:`fit_midsagittal_plane`: it
  follows a head turned or tilted in the grid),
* and where the classifier's mirror-contrast lesion map exceeds ``min_log_odds``: the rule confirms a
  spot the network half-sees.

:class:`DarkAsymmetryRule` scores it for the volume the bundle's predictor has just classified
(:class:`medmamba.inferers.LesionRule`); the bundle calls a volume "lesion" where the network or a rule
is above its threshold (``docs/real-scans.md``, twenty-eighth session).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from medmamba.inferers.lesion_rule import LesionRule

__all__ = ["DarkAsymmetryRule", "dark_asymmetry_score", "fit_midsagittal_plane", "mirrored_mask"]


def fit_midsagittal_plane(reference: np.ndarray, axis: int = 0, min_width: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """The plane that halves each left-right row of a brain mask: ``x = c0 + a (y - ym) + b (z - zm)``.

    Every row of the mask along ``axis`` at least ``min_width`` voxels wide has its centre of mass; a least
    squares fit weighted by the rows' widths, refitted once without the rows more than 3 voxels off,
    gives a plane that follows a head turned or tilted inside the grid (yaw and roll), which a plane
    through the mask's centre of mass at right angles to ``axis`` does not.

    Args:
        reference: boolean ``(H, W, D)`` brain mask.
        axis: the left-right axis.
        min_width: the narrowest row that counts (voxels).

    Returns:
        ``(point, normal)``: a point of the plane and its unit normal, in voxel coordinates of the grid;
        with fewer than three rows, the plane through the centre of mass at right angles to ``axis``.

    Raises:
        ValueError: ``reference`` not 3D or empty, or ``axis`` out of range.
    """
    if reference.ndim != 3:
        raise ValueError(f"reference must be a 3D mask, got shape {reference.shape}.")
    if not -reference.ndim <= axis < reference.ndim:
        raise ValueError(f"axis={axis} is out of range for a {reference.ndim}D mask.")
    axis = axis % reference.ndim
    mask = np.moveaxis(reference.astype(bool), axis, 0)
    if not mask.any():
        raise ValueError("reference is empty: no plane to fit.")
    width = mask.sum(axis=0).astype(np.float64)  # (W, D): each row's width
    centres = np.tensordot(np.arange(mask.shape[0], dtype=np.float64), mask, axes=(0, 0)) / np.maximum(width, 1.0)
    rows = np.nonzero(width >= min_width)
    coefficients = np.zeros(3)
    if rows[0].size < 3:
        point_ = np.argwhere(mask).mean(axis=0)  # the centre of mass, the plane at right angles to the axis
    else:
        w, x = width[rows], centres[rows]
        mean = np.array([np.average(rows[0], weights=w), np.average(rows[1], weights=w)])
        design = np.stack([np.ones_like(x), rows[0] - mean[0], rows[1] - mean[1]], axis=1)
        keep = np.ones(x.size, dtype=bool)
        for _ in range(2):
            root = np.sqrt(w[keep])[:, None]
            coefficients = np.linalg.lstsq(design[keep] * root, x[keep] * root[:, 0], rcond=None)[0]
            keep = np.abs(design @ coefficients - x) < 3.0
            if keep.sum() < 3:
                break
        point_ = np.array([coefficients[0], mean[0], mean[1]])
    normal_ = np.array([1.0, -coefficients[1], -coefficients[2]])
    normal_ /= np.linalg.norm(normal_)
    moved = [axis] + [d for d in range(reference.ndim) if d != axis]  # back to the grid's axis order
    point, normal = np.empty(reference.ndim), np.empty(reference.ndim)
    point[moved], normal[moved] = point_, normal_
    return point, normal


def mirrored_mask(mask: np.ndarray, reference: np.ndarray, axis: int = 0) -> np.ndarray:
    """A boolean mask reflected about the mid-sagittal plane of ``reference`` (:func:`fit_midsagittal_plane`).

    Args:
        mask: boolean ``(H, W, D)``.
        reference: boolean brain mask of the same shape.
        axis: the left-right axis (0 for the bundles' RAS volumes).

    Returns:
        The reflection (nearest voxel), ``False`` where it falls outside the grid or ``reference`` is
        empty. The plane is fitted in voxel coordinates: a reflection for grids of equal spacing on every
        axis (the bundles' 2 mm grids).

    Raises:
        ValueError: shapes differ or ``axis`` is out of range.
    """
    from scipy import ndimage

    if mask.shape != reference.shape:
        raise ValueError(f"mask {mask.shape} and reference {reference.shape} must have the same shape.")
    if not -mask.ndim <= axis < mask.ndim:
        raise ValueError(f"axis={axis} is out of range for a {mask.ndim}D mask.")
    if not reference.any():
        return np.zeros(mask.shape, dtype=bool)
    point, normal = fit_midsagittal_plane(reference, axis)
    matrix = np.eye(mask.ndim) - 2.0 * np.outer(normal, normal)  # a reflection is its own inverse
    offset = 2.0 * float(normal @ point) * normal
    return ndimage.affine_transform(mask.astype(np.uint8), matrix, offset=offset, order=0, mode="constant", cval=0) > 0


def dark_asymmetry_score(
    white_matter_probability: np.ndarray,
    brain: np.ndarray,
    lesion_contrast: np.ndarray,
    solid: int = 2,
    core: int = 2,
    min_log_odds: float = 4.0,
    axis: int = 0,
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
            plane is fitted to that core (:func:`fit_midsagittal_plane`).
        min_log_odds: only voxels whose ``lesion_contrast`` exceeds it count.
        axis: the left-right axis.

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
    mirror = mirrored_mask(white_matter, inner, axis)
    if solid:
        mirror = ndimage.binary_erosion(mirror, ball, iterations=solid)
    candidates = ~white_matter & inner & mirror & (lesion_contrast > min_log_odds)
    labels, n = ndimage.label(candidates, ball)
    return int(np.bincount(labels.ravel())[1:].max()) if n else 0


def _check_settings(solid: int, core: int) -> None:
    for name, value in (("solid", solid), ("core", core)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
            raise ValueError(f"{name} must be an int >= 0, got {value!r}.")


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
        white_matter_channel: the white-matter class of the brain extraction's tissue network.

    Raises:
        ValueError: a setting out of range (see :func:`dark_asymmetry_score`) or a negative channel.
    """

    name = "dark_asymmetry"
    title = "dark-asymmetry rule"

    def __init__(self, solid: int = 2, core: int = 2, min_log_odds: float = 4.0, white_matter_channel: int = 3) -> None:
        _check_settings(solid, core)
        super().__init__(white_matter_channel)
        self.solid, self.core, self.min_log_odds = int(solid), int(core), float(min_log_odds)

    def settings(self) -> dict[str, float]:
        """What the rule's score depends on (recorded beside its threshold, checked when it is read)."""
        return {"solid": self.solid, "core": self.core, "min_log_odds": self.min_log_odds}

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
        return dark_asymmetry_score(record.white_matter_probability, record.brain, record.lesion_contrast,
                                    self.solid, self.core, self.min_log_odds)
