"""The bright-outlier rule: a hyperintense white-matter lesion found beside the classifier's lesion map.

On a T1-weighted image nothing inside the brain is much brighter than white matter, and a white-matter
lesion that is brighter (the default data plants them at 1.3-1.6 times the white matter's mean,
:func:`medmamba.data.synthetic.insert_lesions`) is then an outlier that needs no learned appearance.
:func:`bright_outlier_score` measures the largest connected cluster of voxels brighter than ``ratio``
times the local white-matter level inside the extracted brain; **gated** by the classifier's own dense
lesion map (a cluster counts only where that map exceeds ``min_log_odds`` somewhere inside it), the rule
confirms a spot the network half-sees, so that scans with a strong bias field, whose bright patches the
network does not mark, are not called (``docs/real-scans.md``, twenty-sixth and twenty-seventh sessions).

:class:`BrightOutlierRule` (a :class:`medmamba.inferers.LesionRule`) scores the volume a
:class:`medmamba.inferers.VolumeClassifier` has just classified, from what the classification bundle's
chain of inferers computed on it (the brain extraction's tissue probabilities and brain mask, the
classifier's dense lesion map, the contrast polarity the volume was analysed in); the image itself comes
unnormalised (a ratio of intensities needs their zero), on the classifier's grid. The bundle calls a
volume "lesion" where its network's score or a lesion rule's cluster is above its threshold; all are
set by the main job on validation data (:func:`medmamba.apps.calibration.calibrate`).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from medmamba.inferers.argument_checks import check_count
from medmamba.inferers.lesion_rule import LesionRule

__all__ = ["BrightOutlierRule", "bright_outlier_score", "local_white_matter_ratio"]


def local_white_matter_ratio(image: np.ndarray, white_matter: np.ndarray, sigma: float = 4.0) -> np.ndarray:
    """Each voxel's intensity over the local white-matter level.

    Args:
        image: ``(H, W, D)`` intensities (positive, not z-scored: the ratio is a contrast).
        white_matter: boolean ``(H, W, D)``, the voxels taken as white matter.
        sigma: width in voxels of the Gaussian over which the white-matter level is averaged.

    Returns:
        ``image / level``: about 1 in white matter, < 1 in grey matter and CSF on a T1 image; where
        too little white matter is near (the Gaussian's white-matter weight below 0.05), the level is
        the median of all white matter.

    Raises:
        ValueError: shapes differ, no white-matter voxel, or ``sigma`` not positive.
    """
    from scipy import ndimage

    if image.shape != white_matter.shape or image.ndim != 3:
        raise ValueError(f"image {image.shape} and white_matter {white_matter.shape} must be the same 3D grid.")
    if not white_matter.any():
        raise ValueError("white_matter is empty: no white-matter level.")
    if not sigma > 0:
        raise ValueError(f"sigma must be > 0, got {sigma!r}.")
    image = image.astype(np.float32)
    weight = ndimage.gaussian_filter(white_matter.astype(np.float32), sigma)
    total = ndimage.gaussian_filter(np.where(white_matter, image, 0.0).astype(np.float32), sigma)
    level = np.where(weight > 0.05, total / np.maximum(weight, 1e-6), float(np.median(image[white_matter])))
    return image / np.maximum(level, 1e-6)


def bright_outlier_score(
    image: np.ndarray,
    white_matter_probability: np.ndarray,
    brain: np.ndarray,
    ratio: float = 1.25,
    smooth: float = 0.7,
    sigma: float = 4.0,
    core: int = 2,
    lesion_log_odds: np.ndarray | None = None,
    min_log_odds: float = 8.0,
) -> int:
    """The largest cluster of voxels brighter than ``ratio`` times the local white-matter level.

    Args:
        image: ``(H, W, D)`` intensities of a T1-weighted volume (positive).
        white_matter_probability: ``(H, W, D)``, a tissue network's white-matter probability.
        brain: boolean ``(H, W, D)`` brain mask.
        ratio: how many times the local white-matter level a voxel must exceed.
        smooth: Gaussian width in voxels applied to ``image`` first (0: none).
        sigma: see :func:`local_white_matter_ratio`.
        core: voxels next to the brain's edge left out, as an erosion by this many voxels.
        lesion_log_odds: optional ``(H, W, D)`` lesion log-odds of the classifier's network; given, only
            clusters holding a voxel above ``min_log_odds`` count (the rule and the network agree).
        min_log_odds: see ``lesion_log_odds``.

    Returns:
        The voxel count of the largest 6-connected cluster (0 without one).

    Raises:
        ValueError: shapes differ, ``ratio`` not above 1, negative ``smooth`` or ``core``, or a brain
            without white matter.
    """
    from scipy import ndimage

    if lesion_log_odds is not None and lesion_log_odds.shape != image.shape:
        raise ValueError(f"lesion_log_odds {lesion_log_odds.shape} must be on the image's grid {image.shape}.")
    if not (image.shape == white_matter_probability.shape == brain.shape) or image.ndim != 3:
        raise ValueError(f"image {image.shape}, white_matter_probability {white_matter_probability.shape} and "
                         f"brain {brain.shape} must be the same 3D grid.")
    _check_settings(ratio, smooth, sigma, core)
    brain = brain.astype(bool)
    return _largest_bright_cluster(image, _white_matter(white_matter_probability, brain), brain, ratio, smooth, sigma,
                                   core, lesion_log_odds, min_log_odds)


def _white_matter(probability: np.ndarray, brain: np.ndarray) -> np.ndarray:
    """The voxels whose white-matter ``probability`` exceeds 0.5 inside the boolean ``brain`` eroded by one voxel."""
    from scipy import ndimage

    return (probability > 0.5) & ndimage.binary_erosion(brain, ndimage.generate_binary_structure(3, 1))


def _largest_bright_cluster(
    image: np.ndarray,
    white_matter: np.ndarray,
    brain: np.ndarray,
    ratio: float,
    smooth: float,
    sigma: float,
    core: int,
    lesion_log_odds: np.ndarray | None,
    min_log_odds: float,
) -> int:
    """:func:`bright_outlier_score` of checked arguments, given the white-matter voxels (:func:`_white_matter`)."""
    from scipy import ndimage

    ball = ndimage.generate_binary_structure(3, 1)
    image = ndimage.gaussian_filter(image.astype(np.float32), smooth) if smooth else image.astype(np.float32)
    bright = local_white_matter_ratio(image, white_matter, sigma) > ratio
    if core:
        bright &= ndimage.binary_erosion(brain, ball, iterations=core)
    labels, n = ndimage.label(bright, ball)
    if not n:
        return 0
    sizes = np.bincount(labels.ravel())[1:]
    if lesion_log_odds is not None:
        peaks = ndimage.maximum(lesion_log_odds, labels, index=np.arange(1, n + 1))
        sizes = np.where(np.asarray(peaks) > min_log_odds, sizes, 0)
    return int(sizes.max())


def _check_settings(ratio: float, smooth: float, sigma: float, core: int) -> None:
    if not ratio > 1:
        raise ValueError(f"ratio must be > 1 (brighter than white matter), got {ratio!r}.")
    if not smooth >= 0:
        raise ValueError(f"smooth must be >= 0, got {smooth!r}.")
    check_count("core", core)
    if not sigma > 0:
        raise ValueError(f"sigma must be > 0, got {sigma!r}.")


class BrightOutlierRule(LesionRule):
    """The gated bright-outlier rule of the classification bundle (:func:`bright_outlier_score`).

    Called after a :class:`medmamba.inferers.VolumeClassifier` has classified a batch, it scores one
    volume of it from what the predictor's chain of inferers kept of that call
    (:meth:`medmamba.inferers.LesionRule.record`: the brain, the tissue pass's white-matter probability,
    the dense lesion map) and the volume's unnormalised intensities.

    Args:
        ratio: how many times the local white-matter level a voxel must exceed.
        smooth: Gaussian width in voxels applied to the image first.
        sigma: width in voxels of the local white-matter level.
        core: voxels next to the brain's edge left out.
        min_log_odds: the gate: a cluster counts only where the classifier's lesion map exceeds it.
        white_matter_channel: the white-matter class of the brain extraction's tissue network.

    Raises:
        ValueError: a setting out of range (see :func:`bright_outlier_score`) or a negative channel.
    """

    name = "bright_outlier"
    title = "bright-outlier rule"

    def __init__(
        self,
        ratio: float = 1.25,
        smooth: float = 0.7,
        sigma: float = 4.0,
        core: int = 2,
        min_log_odds: float = 8.0,
        white_matter_channel: int = 3,
    ) -> None:
        _check_settings(ratio, smooth, sigma, core)
        super().__init__(white_matter_channel)
        self.ratio, self.smooth, self.sigma, self.core = float(ratio), float(smooth), float(sigma), int(core)
        self.min_log_odds = float(min_log_odds)

    def settings(self) -> dict[str, float]:
        """What the rule's score depends on (recorded beside its threshold, checked when it is read)."""
        return {"ratio": self.ratio, "smooth": self.smooth, "sigma": self.sigma, "core": self.core,
                "min_log_odds": self.min_log_odds}

    def __call__(self, image: Any, predictor: Any, index: int = 0) -> int | None:
        """The gated cluster size of volume ``index`` of the predictor's last call.

        Args:
            image: that volume's unnormalised intensities on the classifier's grid, ``(H, W, D)`` or
                ``(1, H, W, D)`` (the bundle's preprocessing keeps them before its normalisation).
            predictor: the :class:`~medmamba.inferers.VolumeClassifier` that has just classified it.
            index: the volume's place in that call's batch.

        Returns:
            The voxel count of the largest gated cluster, or ``None`` where the rule does not apply
            (:meth:`~medmamba.inferers.LesionRule.record`; also where no white matter lies inside the
            brain's eroded core: no level to compare with).

        Raises:
            ValueError: see :meth:`~medmamba.inferers.LesionRule.record` (run the bundle with
                ``--bright_outlier false`` without brain extraction or the mirror read-out), or ``image``
                is not on the chain's grid.
        """
        record = self.record(predictor, index)
        if record is None:
            return None
        array = np.asarray(image.detach().cpu() if isinstance(image, torch.Tensor) else image, dtype=np.float32)
        if array.ndim == 4 and array.shape[0] == 1:
            array = array[0]
        if array.shape != record.brain.shape:
            raise ValueError(f"image {array.shape} must be on the grid the classifier ran on {record.brain.shape} (the "
                             f"preprocessed volume before its intensity normalisation).")
        white_matter = _white_matter(record.white_matter_probability, record.brain)
        if not white_matter.any():
            return None
        return _largest_bright_cluster(array, white_matter, record.brain, self.ratio, self.smooth, self.sigma, self.core,
                                       record.lesion_log_odds, self.min_log_odds)
