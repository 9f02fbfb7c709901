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


def _stack_samples(n: int) -> list[dict[str, torch.Tensor]]:
    gen = torch.Generator().manual_seed(5)
    return [
        {"image": torch.rand(5, 12, 10, generator=gen), "label": torch.randint(0, 5, (1, 12, 10), generator=gen).float()}
        for _ in range(n)
    ]


@pytest.mark.parametrize("spatial_axis", [0, 1, -1, None, (0, 1)])
def test_stack_flip_equals_monai_rand_flip_for_the_same_seed(spatial_axis: int | tuple[int, ...] | None) -> None:
    from monai.transforms import Compose, EnsureTyped, RandFlipd, RandScaleIntensityd

    from medmamba.transforms import RandStackFlipd

    def pipeline(flip: type) -> Compose:
        return Compose([
            EnsureTyped(["image", "label"], track_meta=False),
            flip(["image", "label"], prob=0.5, spatial_axis=spatial_axis),
            RandScaleIntensityd("image", factors=0.1, prob=0.5),
            EnsureTyped(["image", "label"], track_meta=False),
        ]).set_random_state(3)

    ours, theirs = pipeline(RandStackFlipd), pipeline(RandFlipd)
    flipped = 0
    for sample in _stack_samples(12):
        a, b = ours(dict(sample)), theirs(dict(sample))
        for key in ("image", "label"):
            assert type(a[key]) is torch.Tensor and torch.equal(a[key], b[key])
        flipped += int(not torch.equal(a["label"], sample["label"]))
    assert 0 < flipped < 12  # prob 0.5: the same draws as MONAI's, some flipped and some not


def test_stack_flip_keeps_plain_tensors_plain_and_meta_tensors_invertible() -> None:
    from medmamba.transforms import RandStackFlipd

    sample = _stack_samples(1)[0]
    out = RandStackFlipd(["image", "label"], prob=1.0, spatial_axis=1)(sample)
    assert type(out["image"]) is torch.Tensor and torch.equal(out["image"], sample["image"].flip(2))
    assert torch.equal(out["label"], sample["label"].flip(2))
    flip = RandStackFlipd(["image"], prob=1.0, spatial_axis=0)
    meta = flip({"image": MetaTensor(sample["image"])})
    assert isinstance(meta["image"], MetaTensor) and len(meta["image"].applied_operations) == 1
    assert torch.equal(flip.inverse(meta)["image"].as_tensor(), sample["image"])


def test_stack_flip_rejects_an_axis_the_tensor_lacks() -> None:
    from medmamba.transforms import RandStackFlipd

    with pytest.raises(ValueError, match="spatial_axis 2 is out of range for a tensor with 2 spatial"):
        RandStackFlipd(["image"], prob=1.0, spatial_axis=2)(_stack_samples(1)[0])


@pytest.mark.parametrize("shape", [(9, 8), (12, 10, 5), (5, 12, 12), (1, 6, 4), (6, 5, 4, 3)])
def test_white_matter_rim_dilation_equals_scipy_binary_dilation(shape: tuple[int, ...]) -> None:
    import numpy as np
    from scipy import ndimage

    from medmamba.data.synthetic import _dilate_by_one_voxel, white_matter_rim

    rng = np.random.default_rng(len(shape))
    for fraction in (0.02, 0.3, 0.9):
        mask = rng.random(shape) < fraction
        for m in (mask, mask.T):  # the stack layout (H, W, 5) and its transpose
            assert np.array_equal(_dilate_by_one_voxel(m), ndimage.binary_dilation(m, iterations=1))
    labels = rng.integers(0, 4, shape)
    expected = ndimage.binary_dilation(labels == 3, iterations=1) & (labels > 0)
    assert np.array_equal(white_matter_rim(labels, 3), expected) and expected.any() and not expected.all()
