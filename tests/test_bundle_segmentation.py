"""The ``mobilemamba_segmentation`` MONAI bundle end to end on a tiny data set.

A tiny default data set (6 mm voxels, 2 training / 2 validation / 1 test subject) is built in a
temporary folder; the bundle then runs through ``monai.bundle.ConfigWorkflow`` with a tiny
MobileMambaSeg and a tiny UNet teacher for one epoch: teacher, distilled student, evaluation,
``ckpt_export`` (TorchScript of the fused network), ONNX export, inference on a NIfTI file and on a
DICOM series (NIfTI + DICOM SEG) with the checkpoint and with the TorchScript model, and DDP on two
CPU processes (gloo).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from medmamba.apps.segmentation import (
    TISSUE_CLASSES,
    FusedMobileMambaSeg,
    FuseOnLoad,
    SegmentationMetrics,
    find_scans,
    load_network,
)

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::UserWarning", "ignore::FutureWarning")

REPO = Path(__file__).resolve().parents[1]
BUNDLE = REPO / "bundles" / "mobilemamba_segmentation"
CONFIGS = BUNDLE / "configs"
META = CONFIGS / "metadata.json"
SCHEMA = REPO / "bundles" / "schema" / "meta_schema_20240725.json"

TINY_NET = {"network_def#embed_dim": [32, 48, 64], "network_def#depth": [1, 1, 1]}
#: The tiny data set's voxel size (the 2 mm template block-averaged by 3): inference and evaluation
#: resample to ``pixdim``, the spacing the bundle was trained at.
TINY_PIXDIM = [6.0, 6.0, 6.0]
TINY_TEACHER = {"channels": [8, 16, 32], "strides": [2, 2], "num_res_units": 0}


def _overrides(bundle_root: Path, dataset_dir: Path, **extra: object) -> dict:
    out = {
        "bundle_root": str(bundle_root),
        "dataset_dir": str(dataset_dir),
        "real_heads_datalist": None,  # the tiny data set alone (the real heads are downloaded by the main job)
        "num_threads": 1,
        "pixdim": TINY_PIXDIM,
        **TINY_NET,
    }
    out.update(extra)
    return out


def _workflow(config: str | tuple[str, ...], workflow_type: str | None, overrides: dict, run_id: str = "run"):
    """A workflow of one config, or of a base config and its overlays (``("train.json", "train_teacher.json")``)."""
    from monai.bundle import ConfigWorkflow

    config_file = str(CONFIGS / config) if isinstance(config, str) else [str(CONFIGS / c) for c in config]
    wf = ConfigWorkflow(
        config_file=config_file, meta_file=str(META), logging_file=str(CONFIGS / "logging.conf"),
        workflow_type=workflow_type, run_id=run_id, **overrides,
    )
    wf.initialize()
    return wf


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One intra-op thread, as the bundle's configs set (``num_threads``), restored afterwards.

    On a small machine shared with other processes two OpenMP threads spin-wait on every small
    kernel and make tiny networks ~100x slower; the configs' ``initialize`` also sets it globally.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from medmamba.data.default_dataset import DefaultDatasetConfig, make_default_dataset

    out = tmp_path_factory.mktemp("data") / "tiny"
    make_default_dataset(out, DefaultDatasetConfig(seed=3, n_train=2, n_val=2, n_test=1, n_extra_train=0, downsample=3), progress=False)
    return out


@pytest.fixture(scope="module")
def trained(dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Teacher, then distilled student, one epoch each, through ConfigWorkflow (train type)."""
    root = tmp_path_factory.mktemp("bundle")
    common = {"train#trainer#max_epochs": 1, "val_interval": 1, "slices_per_volume": 2}
    teacher_over = _overrides(root, dataset, **common)
    for k in list(TINY_NET):
        teacher_over.pop(k)
    teacher_over.update({f"network_def#{k}": v for k, v in TINY_TEACHER.items()})
    wf = _workflow(("train.json", "train_teacher.json"), "train", teacher_over)  # the teacher: an overlay
    teacher_missing = wf.check_properties()
    wf.run()
    wf.finalize()

    student_over = _overrides(root, dataset, **common)
    student_over.update({f"teacher_def#{k}": v for k, v in TINY_TEACHER.items()})
    student_over["teacher"] = "%teacher_kd"  # distillation is off by default since 0.4; the documented switch
    wf = _workflow("train.json", "train", student_over)
    student_missing = wf.check_properties()
    wf.run()
    trainer = wf.parser.get_parsed_content("train#trainer")
    state = {
        "epoch": trainer.state.epoch,
        "loss_kd": float(trainer.state.output[0]["loss_kd"]),
        "val_metrics": dict(wf.parser.get_parsed_content("validate#evaluator").state.metrics),
    }
    wf.finalize()
    return {"root": root, "teacher_missing": teacher_missing, "student_missing": student_missing, **state}


def test_metadata_verifies_offline_against_the_shipped_schema() -> None:
    from monai.bundle import verify_metadata

    assert SCHEMA.is_file()
    verify_metadata(meta_file=str(META), filepath=str(SCHEMA))
    meta = json.loads(META.read_text())
    assert meta["network_data_format"]["inputs"]["image"]["num_channels"] == 3
    assert meta["network_data_format"]["outputs"]["pred"]["num_channels"] == 4


def test_configs_share_one_preprocessing() -> None:
    from monai.bundle import ConfigParser

    train = json.loads((CONFIGS / "train.json").read_text())
    teacher = ConfigParser.load_config_files([str(CONFIGS / "train.json"), str(CONFIGS / "train_teacher.json")])
    evaluate = json.loads((CONFIGS / "evaluate.json").read_text())
    infer = json.loads((CONFIGS / "inference.json").read_text())
    targets = [t["_target_"] for t in train["preprocessing_transforms"]]
    assert [t["_target_"] for t in teacher["preprocessing_transforms"]] == targets
    # inference and evaluation add the input checks and the resampling to the training spacing
    # (the training data are at that spacing already)
    deployed = {"medmamba.transforms.CheckScand", "medmamba.transforms.AntiAliasedSpacingd"}
    assert [t["_target_"] for t in evaluate["preprocessing"]["transforms"]
            if t["_target_"] not in deployed | {"CopyItemsd"}] == targets
    # both keep the scan as loaded for the intensity refinement on the input's grid (refine_tissue, on since 0.6.9)
    # and for the skull-stripped input's own brain (stripped_input_brain, since 0.6.12); the brain gaps'
    # closing (close_brain_gaps, since 0.6.13) is a step of the same hook and needs the copy too
    for cfg in (infer, evaluate):
        copies = [t for t in cfg["preprocessing"]["transforms"] if t["_target_"] == "CopyItemsd"]
        assert copies == [{"_target_": "CopyItemsd", "keys": "image", "names": "source_image", "_disabled_": "$medmamba.bundle.all_off(refine_tissue=@refine_tissue, stripped_input_brain=@stripped_input_brain, close_brain_gaps=@close_brain_gaps)"}]
        assert cfg["refine_tissue"] is True and cfg["stripped_input_brain"] is True and cfg["close_brain_gaps"] is True
    # and refuses a scan whose acquisition is not T1-weighted, right after the shape checks
    infer_targets = [t["_target_"] for t in infer["preprocessing"]["transforms"]]
    check = "medmamba.transforms.CheckMRWeightingd"
    assert infer_targets.index(check) == infer_targets.index("medmamba.transforms.CheckScand") + 1
    assert infer["expected_weighting"] == ["T1"] and infer["weighting_check"] == "error"
    assert [t for t in infer_targets if t not in deployed | {"CopyItemsd", check}] == targets
    for cfg in (evaluate, infer):
        targets_here = [t["_target_"] for t in cfg["preprocessing"]["transforms"]]
        assert targets_here.index("medmamba.transforms.AntiAliasedSpacingd") == targets_here.index("Orientationd") + 1
        assert cfg["pixdim"] == [2.0, 2.0, 2.0]
    # the student's teacher is the architecture train_teacher.json trains
    assert teacher["network_def"] == train["teacher_def"]
    for cfg in (train, evaluate, infer):
        assert cfg["network_def"]["variant"] == "t2" and cfg["context"] == 1
        assert cfg["network_def"]["output_stride"] == 1  # logits at full resolution (0.6)


def test_training_intensity_augmentation_spans_the_head_dependent_contrast() -> None:
    """0.6.7: after MRNormalize, contrast scaled by 0.6-1.7 and shifted by up to 0.4 in 80 % of the
    training stacks (0.9-1.1 and 0.1 in half of them before), because the foreground z-score gives a
    skull-stripped brain 1.5-1.8x the contrast of the same brain with its head
    (docs/real-scans.md item 8); the three config variables reach the two transforms."""
    from monai.bundle import ConfigParser

    def augmentations(**overrides: object) -> tuple:
        parser = ConfigParser()
        parser.read_config(str(CONFIGS / "train.json"))
        parser.update(overrides)
        found = {type(t).__name__: t for t in parser.get_parsed_content("train#random_transforms")}
        return found["RandScaleIntensityd"], found["RandShiftIntensityd"]

    scale, shift = augmentations()
    assert scale.scaler.factors == (-0.4, 0.7) and scale.prob == pytest.approx(0.8)
    assert shift.shifter.offsets == (-0.4, 0.4) and shift.prob == pytest.approx(0.8)
    scale, shift = augmentations(intensity_scale_factors=0.1, intensity_shift_offsets=0.1, intensity_augment_prob=0.5)
    assert scale.scaler.factors == (-0.1, 0.1) and shift.shifter.offsets == (-0.1, 0.1) and scale.prob == 0.5


def test_inference_and_evaluation_normalise_over_the_predicted_brain() -> None:
    """0.6.8: the prediction and the evaluation run through BrainNormalizingInferer: a first
    (flip-TTA slice) pass finds the brain, the volume is z-scored over it, the second pass
    segments; ``tissue_passes`` reaches it and 0 switches it off (docs/real-scans.md)."""
    from monai.bundle import ConfigParser

    from medmamba.inferers import BrainNormalizingInferer, FlipTTAInferer

    for config, user in (("inference.json", "predictor#inferer"), ("evaluate.json", "evaluator#inferer")):
        for passes in (1, 0, 2):
            parser = ConfigParser()
            parser.read_config(str(CONFIGS / config))
            parser["tissue_passes"] = passes
            inferer = parser.get_parsed_content("brain_normalizing_inferer")
            assert isinstance(inferer, BrainNormalizingInferer)
            assert inferer.network_kind == "segmentation" and inferer.tissue_passes == passes
            assert isinstance(inferer.inferer, FlipTTAInferer)
            assert parser.get(user) == "@polarity_inferer"
            assert parser.get("polarity_inferer#inferer") == "@brain_normalizing_inferer"
        assert json.loads((CONFIGS / config).read_text())["tissue_passes"] == 1


def test_the_final_pass_sees_head_and_brain_and_strip_to_brain_is_an_option_off_by_default() -> None:
    """0.8.0: the final pass sees the whole head and its stripped brain (``final_input``); 0.7.3's
    ``strip_to_brain`` (the brain alone) reaches the brain-normalising inferer, false unless asked for (as
    the command line gives it, a string); docs/real-scans.md, twenty-third and twenty-fifth sessions."""
    from monai.bundle import ConfigParser

    for config in ("inference.json", "evaluate.json"):
        assert json.loads((CONFIGS / config).read_text())["strip_to_brain"] is False
        assert json.loads((CONFIGS / config).read_text())["final_input"] == "head_and_brain"
        for value, expected, final in ((False, False, "head_and_brain"), ("true", True, "brain"), ("false", False, "head_and_brain")):
            parser = ConfigParser()
            parser.read_config(str(CONFIGS / config))
            parser["strip_to_brain"] = value
            inferer = parser.get_parsed_content("brain_normalizing_inferer")
            assert inferer.strip_to_brain is expected and inferer.final_input == final
        parser = ConfigParser()
        parser.read_config(str(CONFIGS / config))
        parser["final_input"] = "head"
        assert parser.get_parsed_content("brain_normalizing_inferer").final_input == "head"
        parser = ConfigParser()
        parser.read_config(str(CONFIGS / config))
        parser["strip_to_brain"] = "maybe"
        with pytest.raises(RuntimeError, match="Failed to evaluate ConfigExpression") as info:
            parser.get_parsed_content("brain_normalizing_inferer")
        assert "strip_to_brain must be true or false, got 'maybe'" in str(info.value.__cause__)


def test_inference_and_evaluation_choose_the_contrast_polarity() -> None:
    """0.6.16: the volume goes to the two passes as given or, when its tissue map says it is an
    inverted (T2-like) contrast, inverted; the probe is one plain slice-stack pass per polarity, and
    ``contrast_polarity`` reaches the inferer (docs/real-scans.md)."""
    from monai.bundle import ConfigParser

    from medmamba.inferers import ContrastPolarityInferer, SliceStackInferer

    for config in ("inference.json", "evaluate.json"):
        assert json.loads((CONFIGS / config).read_text())["contrast_polarity"] == "auto"
        for polarity in ("auto", "given", "inverted"):
            parser = ConfigParser()
            parser.read_config(str(CONFIGS / config))
            parser["contrast_polarity"] = polarity
            inferer = parser.get_parsed_content("polarity_inferer")
            assert isinstance(inferer, ContrastPolarityInferer) and inferer.polarity == polarity
            assert isinstance(inferer.probe_inferer, SliceStackInferer) and inferer.probe_network is None
            assert (inferer.min_explained_gain, inferer.min_confidence_gain) == (0.0, 0.05)
            # the probe is the flip TTA's own slice-stack pass, which keeps its last pass (0.7.1): the first
            # brain-normalising pass reuses the probe's pass over the volume as given
            assert inferer.probe_inferer is inferer.inferer.inferer.inferer and inferer.probe_inferer.reuse_last_pass is True


def test_slice_views_are_off_by_default_and_the_views_overlay_aggregates_three() -> None:
    """Training on axial, coronal and sagittal slices (``--slice_views``) is a trial option, off by
    default: the training transform is disabled and the validation inferer passes axial slices through;
    ``views.json``, merged after inference.json or evaluate.json, runs the three views inside the flip
    TTA, pads every axis to 64, and reaches the classification bundle's brain extraction (``inferer#inferer``)."""
    from monai.bundle import ConfigParser

    from medmamba.inferers import FlipTTAInferer, MultiViewInferer, SliceStackInferer

    train = ConfigParser()
    train.read_config(str(CONFIGS / "train.json"))
    names = [type(t).__name__ for t in train.get_parsed_content("train#preprocessing").transforms]
    assert "RandSliceViewd" not in names and "SliceStackd" in names
    assert train.get_parsed_content("validate#inferer").views == ("axial",)
    train["slice_views"] = ["axial", "coronal", "sagittal"]
    train["slice_view_weights"] = [2, 1, 1]
    transforms = train.get_parsed_content("train#preprocessing", lazy=False).transforms
    names = [type(t).__name__ for t in transforms]
    assert names.index("RandSliceViewd") == names.index("SliceStackd") - 1
    assert transforms[names.index("RandSliceViewd")].weights.tolist() == [0.5, 0.25, 0.25]
    for config in ("inference.json", "evaluate.json"):
        plain = ConfigParser()
        plain.read_config(str(CONFIGS / config))
        assert isinstance(plain.get_parsed_content("inferer#inferer"), SliceStackInferer)
        parser = ConfigParser()
        parser.read_config([str(CONFIGS / config), str(CONFIGS / "views.json")])
        inferer = parser.get_parsed_content("inferer")
        assert isinstance(inferer, FlipTTAInferer) and isinstance(inferer.inferer, MultiViewInferer)
        assert inferer.inferer.views == ("axial", "coronal", "sagittal")
        assert parser["pad_multiple"] == [64, 64, 64]
        assert parser.get("brain_normalizing_inferer#inferer") == "@inferer"


def test_evaluation_and_inference_keep_the_largest_brain_component() -> None:
    from monai.bundle import ConfigParser

    for keep in (True, False, "true", "false"):  # the command line gives strings (fire reads only False)
        parser = ConfigParser()
        parser.read_config(str(CONFIGS / "evaluate.json"))
        parser["keep_largest_component"] = keep
        names = [type(t).__name__ for t in parser.get_parsed_content("postprocessing").transforms]
        assert names[-1] == ("KeepBrainComponentd" if keep in (True, "true") else "LabelMapd")
    infer = json.loads((CONFIGS / "inference.json").read_text())
    assert infer["keep_largest_component"] is True
    assert "keep_largest_component=medmamba.bundle.flag(@keep_largest_component, 'keep_largest_component')" in infer["run"][0]


def test_verify_net_in_out() -> None:
    from monai.bundle import verify_net_in_out

    for config in ("train.json", "inference.json"):
        verify_net_in_out(
            net_id="network_def", meta_file=str(META), config_file=str(CONFIGS / config), device="cpu",
            n=1, any=2, **{f"{k}": v for k, v in TINY_NET.items()},
        )


def test_fuse_on_load_folds_batchnorm_and_keeps_outputs() -> None:
    from medmamba.networks import MobileMambaSeg

    torch.manual_seed(0)
    net = MobileMambaSeg("t2", in_channels=3, out_channels=4, embed_dim=(32, 48, 64), depth=(1, 1, 1))
    net.train()
    net(torch.randn(4, 3, 64, 64))  # move the BatchNorm statistics away from their defaults
    net.eval()
    wrapper = FusedMobileMambaSeg("t2", in_channels=3, out_channels=4, embed_dim=(32, 48, 64), depth=(1, 1, 1))
    assert wrapper.in_channels == 3 and not wrapper.is_fused
    wrapper.load_state_dict({"model": net.state_dict()})  # CheckpointSaver layout
    assert wrapper.is_fused
    assert not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in wrapper.modules())
    assert not wrapper.train().training
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        ref, out = net(x), wrapper(x)
    assert (out - ref).abs().max() <= 1e-4 * ref.abs().max()
    # loading again starts from the unfused template (not the already fused network)
    wrapper.load_state_dict(net.state_dict())
    with torch.no_grad():
        assert torch.allclose(wrapper(x), out)
    with pytest.raises(TypeError, match="nn.Module"):
        FuseOnLoad("net")  # type: ignore[arg-type]


def test_segmentation_metrics_dice_and_hd95_in_mm() -> None:
    from monai.data import MetaTensor

    label = torch.zeros(1, 20, 20, 20)
    label[0, 2:8, 2:8, 2:8] = 1
    label[0, 10:18, 10:18, 10:18] = 2
    label[0, 10:18, 2:8, 2:8] = 3
    pred = label.clone()
    pred[0, 10:18, 10:18, 17] = 0  # one face of class 2 missed: 8*8 of 512 voxels
    affine = torch.diag(torch.tensor([2.0, 2.0, 2.0, 1.0]))
    metrics = SegmentationMetrics(class_names=TISSUE_CLASSES, hd95=True)
    row = metrics.case_metrics(MetaTensor(pred, affine=affine), MetaTensor(label, affine=affine))
    assert row["dice_csf"] == pytest.approx(1.0) and row["dice_wm"] == pytest.approx(1.0)
    assert row["dice_gm"] == pytest.approx(2 * 448 / (448 + 512))
    assert row["hd95_csf"] == pytest.approx(0.0)
    assert row["hd95_gm"] == pytest.approx(2.0)  # one voxel = 2 mm
    summary = metrics.summarize([row, {**row, "dice_csf": float("nan")}])
    assert summary["dice_csf"] == pytest.approx(1.0)  # undefined cases are skipped
    assert summary["mean_dice"] == pytest.approx((1.0 + row["dice_gm"] + 1.0) / 3)


def test_collate_slices_pads_volumes_of_different_padded_sizes() -> None:
    from medmamba.apps.segmentation import collate_slices

    a = [{"image": torch.ones(3, 128, 128), "label": torch.ones(1, 128, 128)} for _ in range(2)]
    b = [{"image": torch.ones(3, 192, 128), "label": torch.ones(1, 192, 128)} for _ in range(2)]
    batch = collate_slices([a, b])
    assert batch["image"].shape == (4, 3, 192, 128) and batch["label"].shape == (4, 1, 192, 128)
    label = batch["label"][0, 0]
    assert float(label[:32].sum()) == 0.0 and float(label[160:].sum()) == 0.0  # symmetric background padding
    assert bool((label[32:160] == 1).all())


def test_flip_tta_inferer_averages_mirrored_probabilities() -> None:
    from medmamba.apps.segmentation import FlipTTAInferer
    from medmamba.inferers import SliceStackInferer

    torch.manual_seed(0)
    base = SliceStackInferer(spatial_dim=2, context=1, sw_batch_size=4)
    x = torch.randn(1, 1, 8, 6, 5)
    pointwise = torch.nn.Conv2d(3, 4, 1)  # commutes with in-plane flips
    with torch.no_grad():
        plain = base(x, pointwise)
        assert torch.equal(FlipTTAInferer(base, spatial_axes=[])(x, pointwise), plain)
        tta = FlipTTAInferer(base, spatial_axes=[0, 1])(x, pointwise)
        torch.testing.assert_close(tta, torch.log_softmax(plain, dim=1), atol=1e-5, rtol=1e-5)
        conv = torch.nn.Conv2d(3, 4, 3, padding=1)  # does not commute: the average differs from the plain output
        mixed = torch.softmax(base(x, conv), 1) + torch.softmax(base(x.flip(2), conv), 1).flip(2)
        torch.testing.assert_close(FlipTTAInferer(base, [0])(x, conv).exp(), mixed / 2, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="spatial_axes"):
        FlipTTAInferer(base, [3])(x, pointwise)


def test_find_scans(dataset: Path, tmp_path: Path) -> None:
    sub = dataset / "subjects" / "sub-004"
    assert find_scans(sub / "dicom") == [{"image": str(sub / "dicom"), "id": "sub-004_dicom"}]
    assert find_scans(sub / "image.nii.gz")[0]["id"] == "sub-004_image"
    ids = [c["id"] for c in find_scans(sub)]
    assert ids == ["dicom", "generation", "image", "lesion", "tissue"]
    with pytest.raises(FileNotFoundError, match="does not exist"):
        find_scans(tmp_path / "nothing")
    with pytest.raises(ValueError, match="no NIfTI"):
        find_scans(tmp_path)
    with pytest.raises(ValueError, match="input_path is required"):
        find_scans(None)


def test_train_teacher_and_distilled_student(trained: dict) -> None:
    models = trained["root"] / "models"
    assert trained["teacher_missing"] == [] and trained["student_missing"] == []
    for name in ("teacher.pt", "model.pt", "model_ema.pt"):
        state = torch.load(models / name, map_location="cpu", weights_only=True)
        assert all(isinstance(v, torch.Tensor) for v in state.values())
    assert trained["epoch"] == 1
    assert trained["loss_kd"] > 0  # the teacher's pixel-wise KD term was used (teacher: %teacher_kd)
    assert json.loads((CONFIGS / "train.json").read_text())["teacher"] is None  # the default: no distillation
    metrics = trained["val_metrics"]
    for name in ("val_mean_dice", "val_dice_csf", "val_dice_gm", "val_dice_wm"):
        assert 0.0 <= metrics[name] <= 1.0
    assert list((trained["root"] / "logs").glob("events.out.tfevents.*"))
    assert list((trained["root"] / "logs" / "teacher").glob("events.out.tfevents.*"))


def test_evaluate_writes_flat_metrics(trained: dict, dataset: Path) -> None:
    root = trained["root"]
    wf = _workflow("evaluate.json", "infer", _overrides(root, dataset))
    assert wf.check_properties() == []
    wf.run()
    wf.finalize()
    doc = json.loads((root / "eval" / "metrics.json").read_text())
    for name in ("csf", "gm", "wm"):
        assert doc[f"dice_{name}"] is None or 0.0 <= doc[f"dice_{name}"] <= 1.0
        assert f"hd95_{name}" in doc
    assert "mean_dice" in doc and "mean_hd95" in doc
    assert doc["num_cases"] == 1 and doc["split"] == "test"
    assert doc["checkpoint"].endswith("model.pt") and doc["wall_time_s"] > 0
    assert all(not isinstance(v, (dict, list)) for v in doc.values())  # flat
    assert (root / "eval" / "metrics_per_case.csv").read_text().startswith("id,")


@pytest.fixture(scope="module")
def exported(trained: dict, dataset: Path) -> dict:
    from monai.bundle import ckpt_export

    root = trained["root"]
    ckpt_export(
        net_id="network_def", filepath=str(root / "models" / "model.ts"), ckpt_file=str(root / "models" / "model.pt"),
        meta_file=str(META), config_file=str(CONFIGS / "inference.json"), bundle_root=str(root), **TINY_NET,
    )
    wf = _workflow("inference.json", None, _overrides(root, dataset), run_id="export_onnx")
    (report,) = wf.run()
    return {"root": root, "report": report}


def test_ckpt_export_torchscript_is_the_fused_network(exported: dict) -> None:
    root = exported["root"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ts = torch.jit.load(str(root / "models" / "model.ts"))
    assert "batch_norm" not in str(ts.inlined_graph)
    eager = load_network(
        FusedMobileMambaSeg("t2", in_channels=3, out_channels=4, embed_dim=(32, 48, 64), depth=(1, 1, 1)),
        root / "models" / "model.pt",
    )
    unfused = load_network(
        __import__("medmamba.networks", fromlist=["MobileMambaSeg"]).MobileMambaSeg(
            "t2", in_channels=3, out_channels=4, embed_dim=(32, 48, 64), depth=(1, 1, 1)
        ),
        root / "models" / "model.pt",
    )
    x = torch.randn(3, 3, 64, 128)
    with torch.no_grad():
        ref, got, raw = eager(x), ts(x), unfused(x)
    scale = ref.abs().max()
    assert (got - ref).abs().max() <= 1e-4 * scale
    assert (raw - ref).abs().max() <= 1e-4 * scale


def test_onnx_export_matches_the_eager_fused_network(exported: dict) -> None:
    import onnxruntime as ort

    root, report = exported["root"], exported["report"]
    assert Path(report["onnx"]) == root / "models" / "model.onnx"
    assert all(v <= 1e-4 for k, v in report["relative_error"].items() if k != "fusion")
    assert {"torchscript", "onnx", "onnx@batch=3"} <= set(report["relative_error"])  # export_input_shape batch 2
    # the default exporter's graph was checked at batches 1, 3 and 8 at two sizes
    assert {f"onnx@batch={b},size={h}x128" for b in (1, 3, 8) for h in (128, 192)} <= set(report["relative_error"])
    eager = load_network(
        FusedMobileMambaSeg("t2", in_channels=3, out_channels=4, embed_dim=(32, 48, 64), depth=(1, 1, 1)),
        root / "models" / "model.pt",
    )
    session = ort.InferenceSession(str(root / "models" / "model.onnx"), providers=["CPUExecutionProvider"])
    for shape in ((2, 3, 128, 128), (5, 3, 256, 192)):  # any batch and size in multiples of 64 from 128
        x = torch.randn(*shape)
        (got,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
        with torch.no_grad():
            ref = eager(x)
        assert np.abs(got - ref.numpy()).max() <= 1e-4 * float(ref.abs().max()), shape
    assert json.loads((root / "models" / "model_export.json").read_text())["rtol"] == 1e-4


@pytest.mark.slow
def test_export_writes_an_ahead_of_time_compiled_artefact_on_request(exported: dict, dataset: Path) -> None:
    from medmamba.networks import load_compiled

    root = exported["root"]
    wf = _workflow("inference.json", None, {**_overrides(root, dataset), "export_compiled": True}, run_id="export_onnx")
    (report,) = wf.run()
    assert Path(report["compiled"]) == root / "models" / "model.pt2"
    assert {"compiled", "compiled@batch=3"} <= set(report["relative_error"])
    assert all(v <= 1e-4 for k, v in report["relative_error"].items() if k != "fusion")
    eager = load_network(
        FusedMobileMambaSeg("t2", in_channels=3, out_channels=4, embed_dim=(32, 48, 64), depth=(1, 1, 1)),
        root / "models" / "model.pt",
    )
    x = torch.randn(4, 3, 128, 128)
    with torch.no_grad():
        ref, got = eager(x), load_compiled(report["compiled"])(x)
    assert got.shape == ref.shape
    assert (got - ref).abs().max() <= 1e-4 * ref.abs().max()


def _infer(root: Path, dataset: Path, input_path: Path, out: Path, **extra: object) -> dict:
    wf = _workflow("inference.json", None, _overrides(root, dataset, input_path=str(input_path), output_dir=str(out), **extra))
    (summary,) = wf.run()
    wf.finalize()
    return summary


def test_inference_nifti_and_dicom_in_the_input_geometry(exported: dict, dataset: Path, tmp_path: Path) -> None:
    import highdicom as hd

    from medmamba.data import load_scan

    root = exported["root"]
    sub = dataset / "subjects" / "sub-004"
    summary = _infer(root, dataset, sub / "image.nii.gz", tmp_path / "nii")
    assert summary["n_ok"] == 1 and summary["n_failed"] == 0
    src = nib.load(sub / "image.nii.gz")
    mask = nib.load(tmp_path / "nii" / "sub-004_image" / "sub-004_image_seg.nii.gz")
    assert mask.shape == src.shape
    np.testing.assert_allclose(mask.affine, src.affine, atol=1e-4)
    labels = np.asarray(mask.dataobj)
    assert set(np.unique(labels)) <= {0, 1, 2, 3}

    summary = _infer(root, dataset, sub / "dicom", tmp_path / "dcm")
    assert summary["n_ok"] == 1
    case = tmp_path / "dcm" / "sub-004_dicom"
    dicom_img = load_scan(sub / "dicom")
    dmask = nib.load(case / "sub-004_dicom_seg.nii.gz")
    assert dmask.shape == tuple(dicom_img.shape[1:])
    np.testing.assert_allclose(dmask.affine, dicom_img.affine.numpy(), atol=1e-3)
    # same scan, same predictions: the DICOM route (written in the series' LPS voxel order) and the
    # NIfTI route (RAS) agree voxel for voxel once both are in the same (canonical) voxel order
    dicom_ras, nifti_ras = nib.as_closest_canonical(dmask), nib.as_closest_canonical(mask)
    np.testing.assert_allclose(dicom_ras.affine, nifti_ras.affine, atol=1e-3)
    assert len(np.unique(labels)) > 1  # a spatially varying prediction, so that the voxel order matters
    np.testing.assert_array_equal(np.asarray(dicom_ras.dataobj), np.asarray(nifti_ras.dataobj))
    seg = hd.seg.segread(case / "sub-004_dicom_seg.dcm")
    assert seg.Modality == "SEG"
    assert [int(s.SegmentNumber) for s in seg.SegmentSequence] == [1, 2, 3]
    source_uid = str(dicom_img.meta.get("series_instance_uid", ""))
    referenced = {str(s.SeriesInstanceUID) for s in seg.ReferencedSeriesSequence}
    assert source_uid and referenced == {source_uid}
    assert "MMBFAKE" not in (case / "sub-004_dicom_seg.nii.gz").read_bytes().decode("latin-1")


def test_inference_with_the_torchscript_model_and_failed_cases(exported: dict, dataset: Path, tmp_path: Path) -> None:
    root = exported["root"]
    sub = dataset / "subjects" / "sub-004"
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    (inputs / "a.nii.gz").write_bytes((sub / "image.nii.gz").read_bytes())
    (inputs / "broken.nii.gz").write_bytes(b"not a nifti file")
    summary = _infer(root, dataset, inputs, tmp_path / "ts", use_torchscript=True)
    assert summary["n_ok"] == 1 and summary["n_failed"] == 1 and "broken" in summary["failed"]
    ckpt = _infer(root, dataset, inputs / "a.nii.gz", tmp_path / "ckpt")
    assert ckpt["n_ok"] == 1
    a = np.asarray(nib.load(tmp_path / "ts" / "a" / "a_seg.nii.gz").dataobj)
    b = np.asarray(nib.load(tmp_path / "ckpt" / "inputs_a" / "inputs_a_seg.nii.gz").dataobj)
    assert (a == b).mean() > 0.999


def test_multi_gpu_train_runs_ddp_on_two_cpu_processes(dataset: Path, tmp_path: Path) -> None:
    root = tmp_path / "ddp"
    configs = f"['{CONFIGS / 'train.json'}','{CONFIGS / 'multi_gpu_train.json'}']"
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29617",
        "-m", "monai.bundle", "run", "--config_file", configs, "--meta_file", str(META),
        "--logging_file", str(CONFIGS / "logging.conf"), "--bundle_root", str(root), "--dataset_dir", str(dataset),
        "--train#trainer#max_epochs", "1", "--val_interval", "1", "--slices_per_volume", "2",
        "--volumes_per_batch", "1", "--teacher", "$None", "--num_threads", "1", "--real_heads_datalist", "$None",
        "--network_def#embed_dim", "[32,48,64]", "--network_def#depth", "[1,1,1]",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    log = proc.stdout + proc.stderr
    # each rank trained on its own half of the 2 training volumes: 1 iteration per epoch
    assert "Epoch[1] Complete" in log
    assert "[1/1]" in log and "[1/2]" not in log  # without the DistributedSampler it would be 2 iterations
    assert (root / "models" / "model.pt").is_file() and (root / "models" / "model_ema.pt").is_file()
    state = torch.load(root / "models" / "model.pt", map_location="cpu", weights_only=True)
    assert not any(k.startswith("module.") for k in state)  # saved unwrapped from DistributedDataParallel
