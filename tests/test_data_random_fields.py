"""The smooth random fields behind the semi-synthetic subjects."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from medmamba.data.random_fields import filtered_noise_field, smooth_random_field


def test_smooth_random_field_is_the_cubic_zoom_of_its_control_grid() -> None:
    shape, grid, scale = (23, 17, 11), 5, 0.7
    field = smooth_random_field(shape, np.random.default_rng(3), grid, scale)
    coarse = np.random.default_rng(3).normal(0.0, scale, size=(grid,) * 3)
    zoomed = ndimage.zoom(coarse, [s / grid for s in shape], order=3, mode="nearest", grid_mode=True)
    assert field.shape == shape and field.dtype == np.float32
    np.testing.assert_allclose(field, zoomed[: shape[0], : shape[1], : shape[2]], rtol=0, atol=1e-6)


def test_filtered_noise_field_has_unit_deviation_and_is_smooth() -> None:
    field = filtered_noise_field((40, 40, 40), np.random.default_rng(0), 2.0)
    assert field.dtype == np.float32
    assert abs(float(field.std()) - 1.0) < 1e-4
    # neighbouring voxels are strongly correlated (white noise would give about 0)
    assert float(np.corrcoef(field[:-1].ravel(), field[1:].ravel())[0, 1]) > 0.8
    same = filtered_noise_field((40, 40, 40), np.random.default_rng(0), 2.0)
    assert np.array_equal(field, same)
