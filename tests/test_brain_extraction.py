"""Brain extraction before classification: the extractor, the skull-stripping inferer, the bundle wiring."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from segmentation_bundle_fixture import SEG_BUNDLE, make_segmentation_bundle
from torch import nn

from medmamba.inferers import BrainExtractor, BrainNormalizingInferer, SkullStrippingInferer, SliceStackInferer

ROOT = Path(__file__).resolve().parents[1]
CLS_BUNDLE = ROOT / "bundles" / "mobilemamba_classification"


def _head(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """A (1, 1, 32, 32, 12) head: a brain box (intensity about 1), a bright scalp shell around it,
    a "neck" block below joined to the brain by a thin bridge; the brain alone, stripped; the masks
    of the brain and of the neck."""
    g = torch.Generator().manual_seed(seed)
    brain = torch.zeros(32, 32, 12, dtype=torch.bool)
    brain[8:24, 8:24, 2:10] = True
    neck = torch.zeros_like(brain)
    neck[26:31, 12:20, 2:10] = True
    bridge = torch.zeros_like(brain)
    bridge[24:26, 15:16, 5:6] = True
    tissue = 1.0 + 0.1 * torch.randn(32, 32, 12, generator=g)
    head = torch.zeros(32, 32, 12)
    head[5:27, 5:27, :] = 3.0  # scalp: brighter than any tissue
    head[brain | neck | bridge] = tissue[brain | neck | bridge]
    stripped = torch.where(brain, tissue, torch.zeros_like(tissue))
    return head[None, None], stripped[None, None], brain, neck


class _TissueByIntensity(nn.Module):
    """Logits (B, 2, ...): tissue where the intensity is between 0.5 and 2, background elsewhere."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tissue = ((x > 0.5) & (x < 2.0)).float()
        return torch.cat([1.0 - tissue, tissue], dim=1) * 4.0


def _run(x: torch.Tensor, network: nn.Module) -> torch.Tensor:
    return network(x)


def test_the_extractor_keeps_the_brain_and_detaches_the_neck_by_its_opening() -> None:
    head, _, brain, neck = _head()
    without = BrainExtractor(_TissueByIntensity(), _run)(head)
    assert without.dtype == torch.bool and tuple(without.shape) == (1, 32, 32, 12)
    assert bool(without[0][neck].all()) and bool(without[0][brain].all())  # the neck hangs on by the bridge
    extracted = BrainExtractor(_TissueByIntensity(), _run, spacing=[2.0, 2.0, 2.0], opening_mm=3.0)(head)[0]
    assert not bool(extracted[neck].any())
    assert float(extracted[brain].float().mean()) > 0.95  # the opening rounds the box's corners only
    assert int((extracted & ~brain).sum()) <= 2  # at most the bridge's two voxels next to the brain


def test_a_whole_head_and_the_same_brain_skull_stripped_reach_the_network_identical() -> None:
    head, stripped, brain, _ = _head(1)
    inferer = SkullStrippingInferer(_run, lambda x: brain[None].expand(x.shape[0], *brain.shape))
    a, b = inferer.strip(head), inferer.strip(stripped)
    torch.testing.assert_close(a, b)
    inside = a[0, 0][brain]
    assert float(inside.min()) == float(a[0, 0][~brain].max()) == float(a[0, 0][~brain].min())
    assert abs(float(inside.mean())) < 0.05  # z-scored over the brain (clipped at its 0.5th percentile)
    # and the network behind it sees that volume: its output is the one of the stripped input
    net = nn.Conv3d(1, 1, 3, padding=1)
    torch.testing.assert_close(inferer(head, net), net(b))


def test_a_volume_without_enough_brain_goes_through_as_given() -> None:
    head, _, _, _ = _head(2)
    tiny = torch.zeros(1, 32, 32, 12, dtype=torch.bool)
    tiny[0, 10:12, 10:12, 4:6] = True  # 8 voxels < min_voxels
    inferer = SkullStrippingInferer(_run, lambda x: tiny, min_voxels=1000)
    assert inferer.last_brain_voxels == []
    out = inferer.strip(head)
    torch.testing.assert_close(out, head)
    assert inferer.last_brain_voxels == [8]  # reported although nothing was stripped


def test_the_classifier_reports_the_extracted_brain_and_flags_a_partial_one(tmp_path: Path) -> None:
    """A scan whose extracted brain is far too small (a slab, a non-brain scan) is classified and
    flagged; the report holds the volume of the brain the network ran on."""
    import csv

    import nibabel as nib
    import numpy as np
    from monai.transforms import Compose, EnsureTyped

    from medmamba.apps.classification import classify
    from medmamba.inferers import VolumeClassifier
    from medmamba.transforms import LoadScand

    head, _, brain, _ = _head(3)
    nib.save(nib.Nifti1Image(head[0, 0].numpy(), np.diag([2.0, 2.0, 2.0, 1.0])), str(tmp_path / "head.nii.gz"))

    class SliceMean(nn.Module):  # log-odds = mean intensity of the centre slice
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            m = x[:, 1].mean(dim=(1, 2))
            return torch.stack([torch.zeros_like(m), m], dim=1)

    stripping = SkullStrippingInferer(SliceStackInferer(2, context=1), lambda x: brain[None].expand(x.shape[0], *brain.shape))
    predictor = VolumeClassifier(SliceMean(), stripping, "max")
    preprocessing = Compose([LoadScand("image"), EnsureTyped("image", dtype=torch.float32)])
    brain_ml = int(brain.sum()) * 8e-3  # 2 mm voxels
    for name, volume_range, flagged in (("wide", (700, 2600), True), ("fits", (10, 20), False)):
        summary = classify(tmp_path / "head.nii.gz", tmp_path / name, predictor, preprocessing,
                           brain_extraction=stripping, brain_volume_range_ml=volume_range)
        assert summary["n_ok"] == 1, summary
        with open(tmp_path / name / "probabilities.csv", newline="") as f:
            (row,) = list(csv.DictReader(f))
        assert float(row["brain_volume_ml"]) == pytest.approx(brain_ml, abs=0.05)  # 16.4 ml
        assert ("extracted brain volume 16 ml is outside the plausible 700-2600 ml" in row["warnings"]) is flagged
    with pytest.raises(TypeError, match="brain_extraction must be a SkullStrippingInferer or None, got SliceStackInferer"):
        classify(tmp_path / "head.nii.gz", tmp_path / "x", predictor, preprocessing, brain_extraction=SliceStackInferer(2))
    classify(tmp_path / "head.nii.gz", tmp_path / "plain", predictor, preprocessing, brain_volume_range_ml=(700, 2600))
    with open(tmp_path / "plain" / "probabilities.csv", newline="") as f:
        (row,) = list(csv.DictReader(f))
    assert "brain_volume_ml" not in row and row["warnings"] == ""  # no extraction given: nothing to report or check
    with pytest.raises(ValueError, match=r"brain_volume_range_ml must be \(low, high\) in ml with 0 <= low < high, got \(2600, 700\)"):
        classify(tmp_path / "head.nii.gz", tmp_path / "x", predictor, preprocessing, brain_extraction=stripping,
                 brain_volume_range_ml=(2600, 700))


def test_bad_arguments_and_outputs_are_named() -> None:
    head, _, _, _ = _head()
    with pytest.raises(TypeError, match="extractor must be callable"):
        SkullStrippingInferer(_run, "mask.nii.gz")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="inferer must be callable"):
        SkullStrippingInferer(None, lambda x: x)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"extractor must give masks of shape \(1, 32, 32, 12\)"):
        SkullStrippingInferer(_run, lambda x: torch.ones(1, 16, 16, 12, dtype=torch.bool)).strip(head)
    with pytest.raises(ValueError, match="opening_mm=6.0 needs spacing"):
        BrainExtractor(_TissueByIntensity(), _run, opening_mm=6.0)
    with pytest.raises(ValueError, match="closing_mm=8.0 needs spacing"):
        BrainExtractor(_TissueByIntensity(), _run, closing_mm=8.0)
    with pytest.raises(ValueError, match="background_channel must be a non-negative integer"):
        BrainExtractor(_TissueByIntensity(), _run, background_channel=-1)
    with pytest.raises(ValueError, match="background_channel 3 is not a channel"):
        BrainExtractor(_TissueByIntensity(), _run, background_channel=3)(head)
    with pytest.raises(ValueError, match=r"logits \(B, K, \*spatial\)"):
        BrainExtractor(_TissueByIntensity(), lambda x, n: n(x)[:, :, :8])(head)


def test_the_white_matter_probability_of_the_last_call_is_one_softmax_for_the_read_out_and_the_rules() -> None:
    extractor = BrainExtractor(_TissueByIntensity(), _run)
    with pytest.raises(ValueError, match="the brain extractor has not been called: no tissue logits"):
        extractor.white_matter_probability(0, 1)
    head, _, _, _ = _head()
    extractor(head)
    logits = extractor.last_tissue_logits
    channels = logits.shape[1]
    probability = extractor.white_matter_probability(0, channels - 1)
    assert probability.shape == tuple(head.shape[2:])
    assert torch.equal(torch.from_numpy(probability), torch.softmax(logits[0].float(), dim=0)[channels - 1])
    with pytest.raises(ValueError, match=f"white_matter_channel {channels} is not a channel of the tissue probabilities \\({channels}\\)"):
        extractor.white_matter_probability(0, channels)
    with pytest.raises(ValueError, match="white_matter_channel -1 is not a channel"):
        extractor.check_tissue_channel(-1)


def test_the_extractor_is_the_segmentation_bundle_as_its_config_says(tmp_path: Path) -> None:
    from medmamba.apps.brain_extraction import load_brain_extractor

    root = make_segmentation_bundle(tmp_path, pixdim=[1.5, 1.5, 3.0], brain_opening_mm=4.0)
    extractor = load_brain_extractor(root, device="cpu")
    assert extractor.masker.opening_mm == 4.0 and list(extractor.masker.spacing) == [1.5, 1.5, 3.0]
    assert isinstance(extractor.inferer, BrainNormalizingInferer)
    assert extractor.inferer.inferer.inferer.progress is False  # no slice bars inside another bundle's run
    assert extractor.masker.closing_mm == 0.0  # the segmentation bundle's own mask unless asked
    assert load_brain_extractor(root, device="cpu", closing_mm=8.0).masker.closing_mm == 8.0
    single = load_brain_extractor(root, device="cpu", inferer_item="inferer#inferer")
    assert isinstance(single.inferer, SliceStackInferer) and single.inferer.context == 1
    assert type(extractor.network).__name__ == "FusedMobileMambaSeg" and extractor.device == torch.device("cpu")
    masks = extractor(torch.randn(1, 1, 64, 64, 3))
    assert masks.dtype == torch.bool and tuple(masks.shape) == (1, 64, 64, 3)


def test_a_missing_bundle_or_untrained_one_is_a_clear_error(tmp_path: Path) -> None:
    from medmamba.apps.brain_extraction import load_brain_extractor

    with pytest.raises(ValueError, match="has no configs/inference.json; expected the segmentation bundle"):
        load_brain_extractor(tmp_path)
    root = make_segmentation_bundle(tmp_path, weights=False)
    with pytest.raises(ValueError, match=r"model.pt are missing: train it first .*--brain_extraction false"):
        load_brain_extractor(root)


@pytest.mark.parametrize("config", ["inference.json", "evaluate.json"])
def test_the_classification_bundle_strips_with_the_segmentation_bundle_and_can_be_switched_off(
    tmp_path: Path, config: str
) -> None:
    from monai.bundle import ConfigParser

    root = make_segmentation_bundle(tmp_path)
    parser = ConfigParser()
    parser.read_config(str(CLS_BUNDLE / "configs" / config))
    parser["bundle_root"] = str(CLS_BUNDLE)
    assert parser["brain_extraction"] is True
    assert Path(parser.get_parsed_content("segmentation_bundle_root")).resolve() == SEG_BUNDLE.resolve()
    parser["segmentation_bundle_root"] = str(root)
    parser["network"] = "$torch.nn.Identity()"  # no trained weights in the tests
    inferer = parser.get_parsed_content("inferer")
    assert isinstance(inferer, SkullStrippingInferer) and isinstance(inferer.inferer, SliceStackInferer)
    assert isinstance(inferer.extractor, BrainExtractor) and inferer.extractor.masker.opening_mm == 8.0  # the segmentation bundle's (0.6.15)
    assert inferer.extractor.masker.closing_mm == 8.0  # version 0.13.1: notches in the mask closed
    # the segmentation network's single slice-stack pass (chosen on validation data), at this bundle's voxel size
    assert isinstance(inferer.extractor.inferer, SliceStackInferer) and inferer.extractor.inferer.context == 1
    assert inferer.extractor.masker.spacing == tuple(float(v) for v in parser.get_parsed_content("pixdim"))
    if "extracting_inferer" in parser:  # inference.json reports the extracted brain and checks its volume
        assert parser.get_parsed_content("extracting_inferer") is inferer  # found in the predictor's chain
        assert parser.get_parsed_content("brain_volume_range_ml") == [700, 2600]
    off = ConfigParser()
    off.read_config(str(CLS_BUNDLE / "configs" / config))
    off["brain_extraction"] = "false"  # as `--brain_extraction false` arrives from the command line
    off["segmentation_bundle_root"] = str(tmp_path / "nowhere")
    assert isinstance(off.get_parsed_content("inferer"), SliceStackInferer)
    if "extracting_inferer" in off:
        off["bundle_root"] = str(CLS_BUNDLE)
        off["contrast_polarity"] = "given"  # the probe would load the segmentation bundle
        off["network"] = "$torch.nn.Identity()"  # no trained weights in the tests
        off.parse(True)
        assert off.get_parsed_content("extracting_inferer") is None  # no extraction, no brain to report


def test_the_skull_stripping_inferer_is_found_in_a_predictor_s_chain() -> None:
    from types import SimpleNamespace

    from medmamba.apps.brain_extraction import skull_stripping_of

    stripping = SkullStrippingInferer(_run, lambda x: x[:, 0] > 0)
    chain = SimpleNamespace(inferer=SimpleNamespace(inferer=SimpleNamespace(inferer=stripping)))
    assert skull_stripping_of(chain) is stripping
    assert skull_stripping_of(stripping) is stripping
    assert skull_stripping_of(SimpleNamespace(inferer=SliceStackInferer(2))) is None
    assert skull_stripping_of(chain, max_depth=2) is None  # three links away


@pytest.mark.parametrize("bundle", ["mobilemamba_classification", "mobilemamba_segmentation"])
def test_use_torchscript_false_from_the_command_line_loads_the_checkpoint(bundle: str) -> None:
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(ROOT / "bundles" / bundle / "configs" / "inference.json"))
    parser["bundle_root"] = "b"
    picked = {}
    for value in (True, False, "true", "false", "False", "on"):
        parser["use_torchscript"] = value
        picked[value] = Path(parser.get_parsed_content("model_file")).suffix
    assert picked == {True: ".ts", False: ".pt", "true": ".ts", "false": ".pt", "False": ".pt", "on": ".ts"}
    parser["use_torchscript"] = "maybe"
    with pytest.raises(RuntimeError) as failed:  # MONAI wraps the expression's error
        parser.get_parsed_content("model_file")
    assert "use_torchscript must be true or false, got 'maybe'" in str(failed.value.__cause__)


def test_load_network_and_export_read_switch_strings(tmp_path: Path) -> None:
    from medmamba.apps.deploy import export_onnx, load_network

    net = nn.Sequential(nn.Conv2d(3, 4, 3))
    torch.save(net.state_dict(), tmp_path / "model.pt")
    loaded = load_network(nn.Sequential(nn.Conv2d(3, 4, 3)), tmp_path / "model.pt", use_torchscript="false",
                          channels_last="false")
    assert not isinstance(loaded, torch.jit.ScriptModule)
    assert not loaded[0].weight.is_contiguous(memory_format=torch.channels_last)
    loaded = load_network(nn.Sequential(nn.Conv2d(3, 4, 3)), tmp_path / "model.pt", channels_last="true")
    assert loaded[0].weight.is_contiguous(memory_format=torch.channels_last)
    with pytest.raises(ValueError, match="channels_last must be true or false, got 'fast'"):
        load_network(net, tmp_path / "model.pt", channels_last="fast")
    with pytest.raises(ValueError, match="int8 must be true or false, got 'yes please'"):
        export_onnx(net, tmp_path / "model.pt", tmp_path, int8="yes please")


def test_one_brain_volume_warning_serves_both_bundles() -> None:
    from medmamba.apps.pipeline import brain_volume_warning

    assert brain_volume_warning(700.0, (700, 2200)) is None and brain_volume_warning(2200.0, (700, 2200)) is None
    assert brain_volume_warning(9.0, (700, 2200)) == (
        "predicted brain volume 9 ml is outside the plausible 700-2200 ml: not a whole brain, or not a brain MR")
    assert brain_volume_warning(21.8, [700, 2600], what="extracted brain volume",
                                consequence="; the lesion probability covers only it") == (
        "extracted brain volume 22 ml is outside the plausible 700-2600 ml: not a whole brain, or not a brain MR; "
        "the lesion probability covers only it")
