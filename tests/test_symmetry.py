"""The brain's mid-sagittal plane found by symmetry and reflections about it (medmamba.inferers.symmetry)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medmamba.inferers.symmetry import mirrored_mask, reflected, symmetry_plane, white_matter_plane

from lesion_rule_stand_ins import symmetric_head


def test_mirrored_mask_reflects_about_the_plane() -> None:
    mask = np.zeros((10, 12, 12), dtype=bool)
    mask[1, 5, 5] = True
    assert np.argwhere(mirrored_mask(mask, np.array([4.5, 0.0, 0.0]), np.array([2.0, 0.0, 0.0]))).tolist() == [[8, 5, 5]]
    assert np.argwhere(mirrored_mask(mask, np.array([0.0, 6.0, 0.0]), np.array([0.0, 1.0, 0.0]))).tolist() == [[1, 7, 5]]
    assert not mirrored_mask(mask, np.array([9.5, 0.0, 0.0]), np.array([1.0, 0.0, 0.0])).any()  # reflected off the grid
    with pytest.raises(ValueError, match=r"point \(2,\) and normal \(3,\) must be 3 coordinates"):
        mirrored_mask(mask, np.zeros(2), np.ones(3))
    with pytest.raises(ValueError, match="the normal not zero"):
        mirrored_mask(mask, np.zeros(3), np.zeros(3))


@pytest.mark.parametrize("degrees", [0.0, 7.0, -9.0])
def test_symmetry_plane_follows_a_turned_head(degrees: float) -> None:
    image, brain = symmetric_head(degrees)
    point, normal = symmetry_plane(image, brain)
    assert np.degrees(np.arctan2(normal[1], normal[0])) == pytest.approx(degrees, abs=1.5)
    assert abs(normal[2]) < np.sin(np.radians(1.5))
    assert abs(float(normal @ (point - np.array([20.0, 24.0, 16.0])))) < 0.5  # through the brain's centre
    with pytest.raises(ValueError, match="brain is empty"):
        symmetry_plane(image, np.zeros_like(brain))
    with pytest.raises(ValueError, match=r"image \(40, 48, 32\) and brain \(40, 48, 31\) must be the same 3D grid"):
        symmetry_plane(image, brain[..., :-1])


@pytest.mark.parametrize("normal", [(1.0, 0.0, 0.0), (0.99, 0.12, -0.07), (0.3, 1.0, 0.2)])
def test_reflected_equals_the_mask_reflection(normal) -> None:
    """The torch reflection (the read-out's, any device) maps voxels as the numpy one (the rule's)."""
    rng = np.random.default_rng(0)
    values = rng.normal(size=(14, 11, 9)).astype(np.float32)
    point, normal = np.array([6.3, 5.1, 4.0]), np.asarray(normal)
    out = reflected(torch.from_numpy(values), point, normal, fill=-50.0).numpy()
    for value in values.ravel()[::7]:  # each value as its own one-voxel mask
        target = mirrored_mask(values == value, point, normal)
        assert np.array_equal(out == value, target)
    assert np.array_equal(out == -50.0, ~mirrored_mask(np.ones(values.shape, bool), point, normal))
    with pytest.raises(ValueError, match=r"volume \(14, 11\) must be 3D"):
        reflected(torch.zeros(14, 11), point, normal)
    with pytest.raises(ValueError, match="the normal not zero"):
        reflected(torch.zeros(3, 3, 3), point, np.zeros(3))


def test_white_matter_plane_fits_the_core_or_gives_none() -> None:
    image, brain = symmetric_head(7.0)
    point, normal = white_matter_plane(brain, image, core=2)
    assert np.degrees(np.arctan2(normal[1], normal[0])) == pytest.approx(7.0, abs=1.5)
    assert white_matter_plane(brain, 0.4 * image) is None  # no white matter (p > 0.5) in the core
    with pytest.raises(ValueError, match="core must be an int >= 0, got -1"):
        white_matter_plane(brain, image, core=-1)
    with pytest.raises(ValueError, match=r"brain \(40, 48, 32\) and white_matter_probability \(40, 48, 31\)"):
        white_matter_plane(brain, image[..., :-1])

