"""CT windows, MR normalisation, stride padding, loading transforms and the preset pipeline."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from monai.transforms import Invertd
from pydicom.data import get_testdata_file

from medmamba.io.nifti import write_nifti
from medmamba.transforms import (
    CT_WINDOWS,
    NETWORK_STRIDE,
    CTWindow,
    CTWindowd,
    LoadScan,
    LoadScand,
    MRNormalize,
    MRNormalized,
    PadToMultiple,
    PadToMultipled,
    quantiles,
    scan_preprocessing,
)

pytestmark = pytest.mark.filterwarnings("ignore:.*nvImageCodec.*")


def test_all_presets_exist_and_map_their_range_to_unit_interval() -> None:
    assert set(CT_WINDOWS) == {"brain", "subdural", "stroke", "lung", "mediastinum", "abdomen", "liver", "bone"}
    for name, (level, width) in CT_WINDOWS.items():
        hu = torch.tensor([[[level - width / 2 - 100, level - width / 2, level, level + width / 2, 3000.0]]])
        out = CTWindow(name)(hu)
        np.testing.assert_allclose(out.numpy().ravel(), [0.0, 0.0, 0.5, 1.0, 1.0], atol=1e-6, err_msg=name)


def test_several_windows_stack_as_channels_and_keep_metadata() -> None:
    img = MetaTensor(torch.linspace(-1000, 1000, 2 * 3 * 4).reshape(1, 2, 3, 4), affine=torch.diag(torch.tensor([2.0, 3, 4, 1])))
    out = CTWindowd("image", windows=("brain", "lung", (0, 200)))({"image": img})["image"]
    assert out.shape == (3, 2, 3, 4)
    assert isinstance(out, MetaTensor)
    np.testing.assert_allclose(out.affine.numpy(), img.affine.numpy())
    np.testing.assert_allclose(out[0].numpy(), CTWindow("brain")(img)[0].numpy())
    np.testing.assert_allclose(out[2].numpy(), np.clip((img[0].numpy() + 100) / 200, 0, 1), atol=1e-6)


def test_window_argument_errors() -> None:
    with pytest.raises(ValueError, match="not a preset"):
        CTWindow("kidney")
    with pytest.raises(ValueError, match="width must be > 0"):
        CTWindow((40, 0))
    with pytest.raises(TypeError, match="window must be"):
        CTWindow([None])  # type: ignore[list-item]


def test_ct_windows_on_real_ct() -> None:
    img = LoadScan()(get_testdata_file("CT_small.dcm"))
    out = CTWindow(["brain", "bone"])(img)
    assert out.shape == (2, 128, 128)
    assert float(out.min()) >= 0 and float(out.max()) <= 1
    assert 0 < float((out[0] > 0).float().mean()) < 1


def test_mr_normalisation_gives_zero_mean_unit_std_on_foreground() -> None:
    gen = torch.Generator().manual_seed(0)
    img = torch.zeros(1, 20, 20, 20)
    img[0, 5:15, 5:15, 5:15] = 300 + 40 * torch.randn(10, 10, 10, generator=gen)
    img[0, 7, 7, 7] = 1e5  # outlier, clipped by the percentile
    img = img + torch.rand(img.shape, generator=gen)  # faint background noise
    out = MRNormalize(lower=1, upper=99)(img)
    fg = img[0] > 100
    assert abs(float(out[0][fg].mean())) < 1e-3
    assert abs(float(out[0][fg].std()) - 1) < 1e-2
    assert float(out.max()) < 5  # the outlier was clipped before the z-score
    d = MRNormalized("image", lower=None, upper=None, background_value=0.0)({"image": img})
    assert float(d["image"][0][~fg].abs().max()) == 0.0


@pytest.mark.parametrize("n", [1, 2, 7, 1000, 54321])
def test_quantiles_by_selection_equal_torch_quantile(n: int) -> None:
    values = torch.randn(n, generator=torch.Generator().manual_seed(n)) * 100
    q = [0.0, 0.005, 0.25, 0.5, 0.99, 0.995, 1.0]
    expected = torch.quantile(values, torch.tensor(q)).tolist()
    np.testing.assert_allclose(quantiles(values, q), expected, rtol=1e-6, atol=1e-4)


def test_quantiles_subsample_above_two_million_values_as_before() -> None:
    values = torch.arange(3_000_000, dtype=torch.float32)
    sub = values[:: 3_000_000 // 1_000_000 + 1]  # the regular subsample MRNormalize always took
    assert quantiles(values, [0.5]) == pytest.approx([float(torch.quantile(sub, 0.5))])


def test_quantiles_argument_errors() -> None:
    with pytest.raises(ValueError, match="values must not be empty"):
        quantiles(torch.zeros(0), [0.5])
    with pytest.raises(ValueError, match=r"q must be in \[0, 1\], got \[1.5\]"):
        quantiles(torch.ones(3), [1.5])


def test_centre_statistics_give_a_head_and_its_stripped_brain_the_same_normalisation() -> None:
    g = torch.Generator().manual_seed(0)
    head = torch.zeros(1, 60, 60, 60)
    head[0, 5:55, 5:55, 5:55] = 300.0 + 50.0 * torch.rand(50, 50, 50, generator=g)  # scalp, skull, muscle
    head[0, 12:48, 12:48, 12:48] = 500.0 + 100.0 * torch.rand(36, 36, 36, generator=g)  # brain
    brain = torch.zeros_like(head)
    brain[0, 12:48, 12:48, 12:48] = head[0, 12:48, 12:48, 12:48]
    inner = (0, slice(20, 40), slice(20, 40), slice(20, 40))
    for region, close in (("foreground", False), ("centre", True)):
        norm = MRNormalize(lower=None, upper=None, statistics_region=region)
        a, b = torch.as_tensor(norm(head))[inner], torch.as_tensor(norm(brain))[inner]
        assert torch.allclose(a, b, atol=0.05) == close, region
    # the central box of the foreground's bounding box: for the stripped brain, all of it is brain
    assert torch.as_tensor(MRNormalize(lower=None, upper=None, statistics_region="centre")(brain))[0, 12:48, 12:48, 12:48].mean().abs() < 0.1


def test_mr_normalise_statistics_are_those_it_normalises_with_and_can_come_from_another_image() -> None:
    g = torch.Generator().manual_seed(0)
    image = torch.zeros(1, 24, 20, 16)
    image[0, 4:20, 4:16, 3:13] = 500.0 + 200.0 * torch.rand(16, 12, 10, generator=g)
    image[0, 8:12, 8:12, 6:9] = 60.0  # dark voxels below the foreground threshold: clipped up to its 0.5th percentile
    norm = MRNormalize(upper=None)
    lo, hi, mean, std = norm.statistics(image[0])
    fg = image[0][image[0] > 0.1 * torch.quantile(image[0].flatten(), 0.99)].double()  # an independent computation
    assert hi is None and float(lo) == pytest.approx(float(torch.quantile(fg, 0.005)), rel=1e-4)
    assert mean == pytest.approx(float(fg.clamp(min=float(lo)).mean()), rel=1e-5)
    assert std == pytest.approx(float(fg.clamp(min=float(lo)).std()), rel=1e-4)
    expected = torch.as_tensor(norm(image))
    assert torch.equal(torch.as_tensor(norm(image, statistics=[(lo, hi, mean, std)])), expected)
    other = image * 2.0  # normalised with the first image's statistics, not its own
    torch.testing.assert_close(torch.as_tensor(norm(other, statistics=[(lo, hi, mean, std)])),
                               (other.clamp(min=float(lo)) - mean) / std)
    assert not torch.allclose(torch.as_tensor(norm(other)), (other.clamp(min=float(lo)) - mean) / std)
    with pytest.raises(ValueError, match="statistics holds 2 entries, expected one per channel"):
        norm(image, statistics=[(lo, hi, mean, std)] * 2)


def test_mr_normalise_argument_errors() -> None:
    with pytest.raises(ValueError, match="statistics_region must be 'foreground' or 'centre', got 'brain'"):
        MRNormalize(statistics_region="brain")
    with pytest.raises(ValueError, match="centre_fraction must be in"):
        MRNormalize(centre_fraction=0.0)
    with pytest.raises(ValueError, match="lower"):
        MRNormalize(lower=-1)
    with pytest.raises(ValueError, match="must be <"):
        MRNormalize(lower=90, upper=10)


def test_padding_to_the_network_stride_is_invertible() -> None:
    assert NETWORK_STRIDE == 64
    img = MetaTensor(torch.rand(1, 70, 33, 64))
    pad = PadToMultiple()
    out = pad(img)
    assert out.shape == (1, 128, 64, 64)
    back = pad.inverse(out)
    torch.testing.assert_close(back.as_tensor(), img.as_tensor())
    d = PadToMultipled(["image", "label"], k=16)({"image": img, "label": MetaTensor(torch.ones(1, 70, 33, 64))})
    assert d["image"].shape == d["label"].shape == (1, 80, 48, 64)
    with pytest.raises(ValueError, match="k must be"):
        PadToMultiple(k=0)


def test_load_scand_reads_paths_and_series_uid_key() -> None:
    path = get_testdata_file("MR_small.dcm")
    d = LoadScand(["image"], series_uid_key="uid")({"image": path, "uid": None, "other": 1})
    assert d["image"].shape == (1, 64, 64) and d["other"] == 1
    with pytest.raises(TypeError, match="path must be"):
        LoadScan()(123)  # type: ignore[arg-type]


def _blob_nifti(tmp_path: Path) -> tuple[Path, Path, np.ndarray]:
    rng = np.random.default_rng(0)
    img = rng.normal(5, 1, (50, 40, 30)).astype(np.float32).clip(0)
    lab = np.zeros((50, 40, 30), np.uint8)
    img[10:35, 8:30, 5:25] += 400
    lab[15:30, 12:25, 10:20] = 1
    aff = np.array([[0, 0, 2.0, -30], [-1.2, 0, 0, 20], [0, 1.5, 0, -10], [0, 0, 0, 1]])  # not RAS-ordered
    write_nifti(tmp_path / "img.nii.gz", img, aff)
    write_nifti(tmp_path / "lab.nii.gz", lab, aff, dtype=np.uint8)
    return tmp_path / "img.nii.gz", tmp_path / "lab.nii.gz", lab


@pytest.mark.parametrize("pixdim", [None, (2.0, 2.0, 2.0)])
def test_preset_pipeline_pads_to_stride_and_inverts_to_input_grid(tmp_path: Path, pixdim: tuple | None) -> None:
    img_path, lab_path, lab = _blob_nifti(tmp_path)
    pre = scan_preprocessing("image", ["label"], modality="MR", pixdim=pixdim, k=16)
    d = pre({"image": str(img_path), "label": str(lab_path)})
    assert all(s % 16 == 0 for s in d["image"].shape[1:])
    assert d["image"].shape[1:] == d["label"].shape[1:]
    assert d["image"].shape[1] < 64  # foreground crop removed background
    d["pred"] = d["label"].clone()
    inv = Invertd("pred", pre, orig_keys="image", nearest_interp=True)(d)["pred"]
    assert tuple(inv.shape[1:]) == lab.shape
    agreement = float((inv[0].numpy().round() == lab).mean())
    assert agreement == 1.0 if pixdim is None else agreement > 0.98


def test_ct_preset_on_real_ct_has_three_window_channels() -> None:
    d = scan_preprocessing(modality="CT", k=NETWORK_STRIDE)({"image": get_testdata_file("CT_small.dcm")})
    assert d["image"].shape[0] == 3
    assert all(s % 64 == 0 for s in d["image"].shape[1:])
    with pytest.raises(ValueError, match="modality"):
        scan_preprocessing(modality="PET")
