"""The rule of benchmarks/bright_outlier_probe.py: local white-matter ratio and the bright-cluster score."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from bright_outlier_probe import bright_outlier_score, local_white_matter_ratio  # noqa: E402


def _phantom(shape=(24, 24, 24)):
    """A brain box of white matter (100) with a grey-matter slab (60); white-matter probability 1 / 0."""
    brain = np.zeros(shape, dtype=bool)
    brain[2:-2, 2:-2, 2:-2] = True
    image = np.where(brain, 100.0, 0.0).astype(np.float32)
    image[2:-2, 2:-2, 2:5] = 60.0
    wm = (image == 100.0).astype(np.float32)
    return image, wm, brain


def test_ratio_is_one_in_white_matter_and_the_contrast_elsewhere() -> None:
    image, wm, brain = _phantom()
    ratio = local_white_matter_ratio(image, wm > 0.5, sigma=3.0)
    assert ratio[12, 12, 12] == pytest.approx(1.0, abs=1e-4)
    assert ratio[12, 12, 3] == pytest.approx(0.6, abs=1e-3)  # grey matter over the white matter next to it
    # a smooth multiplicative bias cancels: the level follows it
    bias = np.linspace(0.7, 1.3, image.shape[0], dtype=np.float32)[:, None, None]
    assert local_white_matter_ratio(image * bias, wm > 0.5, sigma=3.0)[12, 12, 12] == pytest.approx(1.0, abs=0.01)


def test_ratio_errors_name_the_argument() -> None:
    image, wm, _ = _phantom()
    with pytest.raises(ValueError, match="same 3D grid"):
        local_white_matter_ratio(image, wm[:-1] > 0.5)
    with pytest.raises(ValueError, match="white_matter is empty"):
        local_white_matter_ratio(image, np.zeros_like(wm, dtype=bool))
    with pytest.raises(ValueError, match="sigma must be > 0, got 0"):
        local_white_matter_ratio(image, wm > 0.5, sigma=0)


def test_score_is_the_size_of_the_bright_cluster_inside_the_core() -> None:
    image, wm, brain = _phantom()
    assert bright_outlier_score(image, wm, brain, smooth=0.0) == 0  # lesion-free: nothing above 1.25x
    lesion = image.copy()
    lesion[10:13, 10:13, 10:13] = 150.0  # 27 voxels at 1.5x white matter
    lesion[14, 14, 14] = 150.0  # a single voxel, its own cluster
    assert bright_outlier_score(lesion, wm, brain, smooth=0.0) == 27
    assert bright_outlier_score(lesion, wm, brain, ratio=1.6, smooth=0.0) == 0  # not bright enough for 1.6x
    edge = image.copy()
    edge[2:4, 10:13, 10:13] = 150.0  # bright voxels within 2 voxels of the brain's edge: left out
    assert bright_outlier_score(edge, wm, brain, smooth=0.0, core=2) == 0
    assert bright_outlier_score(edge, wm, brain, smooth=0.0, core=0) == 18


def test_gated_score_counts_only_clusters_where_the_network_agrees() -> None:
    image, wm, brain = _phantom()
    lesion = image.copy()
    lesion[10:13, 10:13, 10:13] = 150.0  # 27 voxels
    lesion[15:17, 15:17, 15:17] = 150.0  # 8 voxels
    log_odds = np.full(image.shape, -5.0, dtype=np.float32)
    assert bright_outlier_score(lesion, wm, brain, smooth=0.0, lesion_log_odds=log_odds) == 0
    log_odds[16, 16, 16] = 9.0  # the network marks the small cluster only
    assert bright_outlier_score(lesion, wm, brain, smooth=0.0, lesion_log_odds=log_odds) == 8
    assert bright_outlier_score(lesion, wm, brain, smooth=0.0, lesion_log_odds=log_odds, min_log_odds=10.0) == 0
    log_odds[11, 11, 11] = 12.0
    assert bright_outlier_score(lesion, wm, brain, smooth=0.0, lesion_log_odds=log_odds) == 27
    with pytest.raises(ValueError, match="lesion_log_odds .* must be on the image's grid"):
        bright_outlier_score(lesion, wm, brain, lesion_log_odds=log_odds[:-1])


def test_score_errors_name_the_argument() -> None:
    image, wm, brain = _phantom()
    with pytest.raises(ValueError, match="must be the same 3D grid"):
        bright_outlier_score(image, wm[:-1], brain)
    with pytest.raises(ValueError, match="ratio must be > 1"):
        bright_outlier_score(image, wm, brain, ratio=1.0)
    with pytest.raises(ValueError, match="smooth and core must be >= 0"):
        bright_outlier_score(image, wm, brain, core=-1)
