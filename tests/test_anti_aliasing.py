"""AntiAliasedSpacingd: Spacingd with a Gaussian blur of the axes it makes coarser."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from monai.transforms import Compose, Invertd, Spacingd

from medmamba.transforms import AntiAliasedSpacingd, anti_aliasing_sigma, scan_preprocessing


def _volume(shape: tuple[int, ...], spacing: tuple[float, ...], seed: int = 0) -> MetaTensor:
    gen = torch.Generator().manual_seed(seed)
    return MetaTensor(torch.randn(1, *shape, generator=gen), affine=torch.diag(torch.tensor([*spacing, 1.0], dtype=torch.float64)))


def test_sigma_is_half_the_excess_factor_on_coarsened_axes_only() -> None:
    assert anti_aliasing_sigma([1.0, 1.0, 1.0], [2.0, 2.0, 2.0]) == [0.5, 0.5, 0.5]
    # a clinical 0.9 x 0.9 x 5 mm scan to 2 mm: in-plane blurred, the thick axis refined (no blur)
    assert anti_aliasing_sigma([0.9, 0.9, 5.0], [2.0, 2.0, 2.0]) == pytest.approx([(2 / 0.9 - 1) / 2] * 2 + [0.0])
    assert anti_aliasing_sigma([2.0, 1.0], [2.0, -1.0]) == [0.0, 0.0]  # pixdim <= 0 keeps the axis
    with pytest.raises(ValueError, match=r"spacing \(1.0, 1.0\) and target \(2.0,\) must have one value per spatial axis"):
        anti_aliasing_sigma([1.0, 1.0], [2.0])
    with pytest.raises(ValueError, match=r"spacing must be positive on every axis, got \(0.0, 1.0\)"):
        anti_aliasing_sigma([0.0, 1.0], [2.0, 2.0])


def test_at_the_target_spacing_it_is_spacingd_exactly() -> None:
    img = _volume((20, 18, 16), (2.0, 2.0, 2.0))
    ours = AntiAliasedSpacingd("image", pixdim=[2.0, 2.0, 2.0], mode="bilinear")({"image": img})["image"]
    plain = Spacingd("image", pixdim=[2.0, 2.0, 2.0], mode="bilinear")({"image": img})["image"]
    assert torch.equal(ours.as_tensor(), plain.as_tensor()) and torch.equal(ours.affine, plain.affine)
    thick = _volume((40, 40, 6), (1.0, 1.0, 5.0))  # only the refined axis differs: the blur is in-plane
    off = AntiAliasedSpacingd("image", pixdim=[2.0, 2.0, 2.0], anti_aliasing=False)({"image": thick})["image"]
    assert torch.equal(off.as_tensor(), Spacingd("image", pixdim=[2.0, 2.0, 2.0])({"image": thick})["image"].as_tensor())


def test_one_mm_noise_comes_out_at_the_level_of_a_two_mm_voxel_average() -> None:
    img = _volume((64, 64, 64), (1.0, 1.0, 1.0))
    ours = AntiAliasedSpacingd("image", pixdim=[2.0, 2.0, 2.0], mode="bilinear")({"image": img})["image"]
    plain = Spacingd("image", pixdim=[2.0, 2.0, 2.0], mode="bilinear")({"image": img})["image"]
    assert tuple(ours.shape) == tuple(plain.shape) == (1, 32, 32, 32)
    assert torch.equal(ours.affine, plain.affine)
    # plain resampling keeps every second voxel: unit noise stays at 1; a 2 mm acquisition averages
    # 8 voxels (1/sqrt(8) = 0.354); sigma 0.5 gives about that
    interior = (slice(None), slice(4, -4), slice(4, -4), slice(4, -4))
    assert float(plain[interior].std()) == pytest.approx(1.0, abs=0.03)
    assert float(ours[interior].std()) == pytest.approx(1 / np.sqrt(8), abs=0.04)


def test_labels_are_not_blurred_and_the_inverse_restores_the_grid() -> None:
    img = _volume((40, 40, 30), (1.0, 1.0, 1.0))
    labels = MetaTensor((torch.arange(40 * 40 * 30).reshape(1, 40, 40, 30) % 3).float(), affine=img.affine)
    pre = Compose([AntiAliasedSpacingd(["image", "label"], pixdim=[2.0, 2.0, 2.0], smooth_keys="image", mode=["bilinear", "nearest"])])
    out = pre({"image": img, "label": labels})
    assert set(torch.unique(out["label"]).tolist()) <= {0.0, 1.0, 2.0}
    out["pred"] = out["image"].clone()
    back = Invertd("pred", transform=pre, orig_keys="image")(out)["pred"]
    assert tuple(back.shape) == (1, 40, 40, 30) and torch.equal(back.affine, img.affine)


def test_argument_errors_name_the_argument() -> None:
    with pytest.raises(ValueError, match=r"smooth_keys \['label'\] are not among keys \['image'\]"):
        AntiAliasedSpacingd("image", pixdim=2.0, smooth_keys="label")
    with pytest.raises(TypeError, match="anti_aliasing must be a bool, got 'yes'"):
        AntiAliasedSpacingd("image", pixdim=2.0, anti_aliasing="yes")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"data\['image'\] must be a MetaTensor with an affine"):
        AntiAliasedSpacingd("image", pixdim=2.0)({"image": torch.zeros(1, 4, 4, 4)})


def test_scan_preprocessing_resamples_with_anti_aliasing() -> None:
    steps = scan_preprocessing(pixdim=(2.0, 2.0, 2.0), label_keys=("label",), load=False).transforms
    (resample,) = [t for t in steps if isinstance(t, Spacingd)]
    assert isinstance(resample, AntiAliasedSpacingd) and resample.smooth_keys == ("image",)
