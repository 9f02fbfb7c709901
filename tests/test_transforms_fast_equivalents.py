"""Faster forms of MONAI/PyTorch operations give the same numbers: bias field, linear resampling."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from monai.data import MetaTensor
from monai.transforms import RandBiasFieldd as MonaiRandBiasFieldd

from medmamba.transforms import RandBiasFieldd, legendre_coefficients
from medmamba.transforms.synthesis import _resize_axis, _smooth_field


@pytest.mark.parametrize("shape", [(1, 24, 20, 16), (2, 24, 20)])
def test_bias_field_equals_monai_for_the_same_seed(shape: tuple[int, ...]) -> None:
    img = MetaTensor(torch.rand(*shape, generator=torch.Generator().manual_seed(0)) * 100, affine=torch.eye(4) * 2)
    ours = RandBiasFieldd("image", degree=3, coeff_range=(0.0, 0.3), prob=0.7).set_random_state(11)
    theirs = MonaiRandBiasFieldd("image", degree=3, coeff_range=(0.0, 0.3), prob=0.7).set_random_state(11)
    applied = 0
    for _ in range(6):
        a, b = ours({"image": img})["image"], theirs({"image": img})["image"]
        torch.testing.assert_close(a.as_tensor(), b.as_tensor(), rtol=1e-5, atol=1e-4)
        assert a.dtype == torch.float32 and torch.equal(a.affine, img.affine)
        applied += int(not torch.equal(a.as_tensor(), img.as_tensor()))
    assert 0 < applied < 6  # prob 0.7: some applied, some not, in the same draws as MONAI


def test_legendre_coefficients_layout_and_rank_error() -> None:
    mat = legendre_coefficients(3, 1, [1.0, 2.0, 3.0, 4.0])
    assert mat.shape == (2, 2, 2)
    assert [mat[0, 0, 0], mat[0, 0, 1], mat[0, 1, 0], mat[1, 0, 0]] == [1.0, 2.0, 3.0, 4.0]
    with pytest.raises(ValueError, match="rank"):
        legendre_coefficients(4, 1, [1.0])


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_resize_axis_equals_trilinear_interpolation(axis: int) -> None:
    x = torch.rand(12, 10, 9, generator=torch.Generator().manual_seed(axis))
    low = list(x.shape)
    low[axis] = 4
    expected = F.interpolate(x[None, None], size=low, mode="trilinear", align_corners=True)[0, 0]
    torch.testing.assert_close(_resize_axis(x, axis, 4), expected, rtol=1e-5, atol=1e-6)
    back = F.interpolate(expected[None, None], size=list(x.shape), mode="trilinear", align_corners=True)[0, 0]
    torch.testing.assert_close(_resize_axis(_resize_axis(x, axis, 4), axis, x.shape[axis]), back, rtol=1e-5, atol=1e-6)


def test_smooth_field_equals_trilinear_upsampling() -> None:
    coarse = torch.randn(4, 4, 4, generator=torch.Generator().manual_seed(2))
    expected = F.interpolate(coarse[None, None], size=[17, 13, 11], mode="trilinear", align_corners=True)[0, 0]
    torch.testing.assert_close(_smooth_field(coarse, (17, 13, 11)), expected, rtol=1e-5, atol=1e-6)
