"""The ``mobilemamba_classification`` bundle end to end on a tiny data set, and its support module.

A tiny default data set (2 training, 2 test subjects at 4 mm, the test ones also as DICOM series) is
made in a temporary folder; the bundle's teacher and student are trained for one epoch with tiny
networks through ``monai.bundle.ConfigWorkflow`` (initialize, check_properties, run, finalize), then
evaluated, exported (TorchScript through ``ckpt_export``, ONNX) and run for inference on a NIfTI
file and a DICOM series, with the checkpoint and with the TorchScript file. DDP on 2 CPU processes
(``torchrun``, gloo) is checked too.
"""

from __future__ import annotations

import copy
import csv
import json
import math
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from medmamba.apps.classification import (
    AMBIGUOUS,
    FusedMobileMamba,
    FuseOnLoad,
    LesionMetric,
    LesionTissueLabeld,
    RandStackLesionInsertd,
    SampleLesionLabeld,
    SliceLesionLabelsd,
    VolumeClassifier,
    find_scans,
    lesion_log_odds,
    volume_log_odds,
)

from medmamba.transforms import intensity_white_matter

REPO = Path(__file__).resolve().parents[1]
BUNDLE = REPO / "bundles" / "mobilemamba_classification"
CONFIGS = BUNDLE / "configs"
SCHEMA = REPO / "bundles" / "schema" / "meta_schema_20240725.json"
META = str(CONFIGS / "metadata.json")
LOGGING = str(CONFIGS / "logging.conf")
#: The configs that are overlays on ``train.json`` (MONAI merges the files in order).
OVERLAYS = ("train_teacher.json", "train_slice_labels.json")


def _config_files(name: str) -> list[str]:
    """The files of a config: an overlay comes after the ``train.json`` it changes."""
    return [str(CONFIGS / f) for f in (("train.json", name) if name in OVERLAYS else (name,))]


#: A tiny MobileMamba (T2 layout, narrower and one block per stage) for fast runs.
TINY_NET = {"embed_dim": [16, 24, 32], "depth": [1, 1, 1]}


def _tiny_overrides(name: str = "network_def") -> dict:
    # pixdim: the tiny data set's voxel size (the 2 mm template block-averaged by 2), which inference
    # and evaluation resample to; no brain extraction (it needs a trained segmentation bundle beside
    # this one: test_inference_strips_with_the_segmentation_bundle_beside_it)
    # and no contrast-polarity probe (the same network: test_contrast_polarity_probes_with_the_segmentation_network)
    return {f"{name}#{k}": v for k, v in TINY_NET.items()} | {"pixdim": [4.0, 4.0, 4.0], "brain_extraction": False,
                                                               "contrast_polarity": "given"}


# ------------------------------------------------------------------------------------- unit checks
def test_slice_labels_follow_the_slice_datalist_rule():
    mask = torch.zeros(1, 6, 6, 4)
    mask[0, :2, :3, 1] = 1  # 6 voxels: positive
    mask[0, 0, :2, 2] = 1  # 2 voxels: ambiguous
    out = SliceLesionLabelsd("lesion", min_voxels=5)({"lesion": mask, "image": mask})
    assert out["label"].tolist() == [0, 1, AMBIGUOUS, 0]
    assert "lesion" not in out and "image" in out
    sample = SampleLesionLabeld("lesion", min_voxels=5)({"lesion": mask[..., 1]})
    assert sample["label"].item() == 1 and sample["label"].dtype == torch.int64
    assert SampleLesionLabeld("lesion")({"lesion": mask[..., 2]})["label"].item() == 0
    assert SampleLesionLabeld("lesion", ambiguous_value=1)({"lesion": mask[..., 2]})["label"].item() == 1
    with pytest.raises(ValueError, match="min_voxels"):
        SliceLesionLabelsd("lesion", min_voxels=0)
    with pytest.raises(ValueError, match="channel-first volume"):
        SliceLesionLabelsd("lesion")({"lesion": torch.zeros(6, 6, 4)})


def test_stack_lesion_insertion_marks_the_middle_slice_and_changes_only_the_lesion():
    rng = torch.Generator().manual_seed(0)
    image = 1.0 + 0.1 * torch.randn(3, 32, 32, generator=rng)
    tissue = torch.zeros(1, 32, 32)
    tissue[0, 4:28, 4:28] = 2  # grey matter
    tissue[0, 10:22, 10:22] = 3  # white matter: the only place a lesion may be centred
    lesion = torch.zeros(1, 32, 32)
    data = {"image": image, "lesion": lesion, "tissue": tissue}
    insert = RandStackLesionInsertd("image", mask_key="lesion", tissue_key="tissue", prob=1.0, radius=(3.0, 3.0))
    insert.set_random_state(3)
    out = insert(data)
    assert out["image"].shape == (3, 32, 32) and out["lesion"].shape == (1, 32, 32)
    marked = out["lesion"][0] > 0
    assert marked.sum() >= 5  # a lesion on the middle slice, big enough to make the slice positive
    assert (marked & (tissue[0] == 0)).sum() == 0  # inside the brain
    # in the white matter and its one-pixel rim, never deeper in grey matter (where it would be invisible)
    assert (marked[:9].sum() + marked[23:].sum() + marked[:, :9].sum() + marked[:, 23:].sum()) == 0
    changed = (out["image"] - image).abs().amax(dim=0) > 1e-6
    rows, cols = torch.nonzero(changed, as_tuple=True)
    m_rows, m_cols = torch.nonzero(marked, as_tuple=True)
    # every changed pixel lies within a few pixels (soft edge, neighbouring slices) of the lesion's box
    assert rows.min() >= m_rows.min() - 4 and rows.max() <= m_rows.max() + 4
    assert cols.min() >= m_cols.min() - 4 and cols.max() <= m_cols.max() + 4
    assert torch.equal(image, data["image"]) and lesion.sum() == 0  # inputs untouched
    none = RandStackLesionInsertd("image", mask_key="lesion", tissue_key="tissue", prob=0.0)(data)
    assert torch.equal(none["image"], image) and none["lesion"].sum() == 0
    with pytest.raises(ValueError, match="slice stack"):
        insert({"image": torch.zeros(1, 3, 32, 32), "lesion": lesion, "tissue": tissue})
    with pytest.raises(ValueError, match="middle slice"):
        insert({"image": image, "lesion": torch.zeros(3, 32, 32), "tissue": tissue})
    with pytest.raises(KeyError, match="tissue"):
        insert({"image": image, "lesion": lesion})


def test_lesion_insertion_stays_within_the_input_value_range():
    # a normalised stack whose top values are the clip level: a bright lesion must not go past it
    rng = torch.Generator().manual_seed(1)
    image = (1.0 + 0.1 * torch.randn(3, 32, 32, generator=rng)).clamp(max=1.1)
    image[:, :2] = -2.0  # "air": the lowest value
    tissue = torch.zeros(1, 32, 32)
    tissue[0, 4:28, 4:28] = 3
    data = {"image": image, "lesion": torch.zeros(1, 32, 32), "tissue": tissue}
    kwargs = dict(prob=1.0, radius=(3.0, 3.0), dark_prob=0.0, bright_factor=(1.6, 1.6))
    clipped = RandStackLesionInsertd("image", mask_key="lesion", tissue_key="tissue", **kwargs)
    clipped.set_random_state(0)
    raw = RandStackLesionInsertd("image", mask_key="lesion", tissue_key="tissue", clip=False, **kwargs)
    raw.set_random_state(0)
    a, b = clipped(data), raw(data)
    assert torch.equal(a["lesion"], b["lesion"]) and a["lesion"].sum() >= 5  # the same lesion
    assert float(b["image"].max()) > 1.5  # unclipped: far above anything in the scan (ref + 1.6 (wm - ref))
    assert float(a["image"].max()) == pytest.approx(float(image.max()))
    assert float(a["image"].min()) >= float(image.min())
    inside = a["lesion"][0] > 0
    assert float(a["image"][1][inside].mean()) > float(image[1][inside].mean())  # still hyperintense


def test_lesion_tissue_labels_put_the_lesion_on_top_of_the_tissues():
    tissue = torch.tensor([[[0.0, 1.0, 2.0], [3.0, 3.0, 2.0]]])  # (1, 2, 3)
    lesion = torch.tensor([[[0.0, 0.0, 1.0], [1.0, 0.0, 0.0]]])
    out = LesionTissueLabeld("label", lesion_key="lesion", lesion_value=4)({"label": tissue, "lesion": lesion})
    assert out["label"].tolist() == [[[0.0, 1.0, 4.0], [4.0, 3.0, 2.0]]]
    assert tissue[0, 0, 2] == 2.0  # the input is not modified
    assert torch.equal(out["lesion"], lesion)
    with pytest.raises(ValueError, match="expected the label map's"):
        LesionTissueLabeld("label")({"label": tissue, "lesion": torch.zeros(1, 3, 3)})
    with pytest.raises(KeyError, match="lesion mask 'lesion'"):
        LesionTissueLabeld("label")({"label": tissue})
    with pytest.raises(ValueError, match="lesion_value"):
        LesionTissueLabeld("label", lesion_value=0)


def test_lesion_metric_slice_and_volume_values():
    # two volumes of 4 slices: logits (B, 2, S) with log-odds = logit1 - logit0
    z = torch.tensor([[-3.0, 2.0, 1.0, -1.0], [-2.0, -1.5, -0.5, -4.0]])
    pred = torch.stack([torch.zeros_like(z), z], dim=1)
    label = torch.tensor([[0, 1, AMBIGUOUS, 0], [0, 0, 0, 0]])
    assert torch.allclose(lesion_log_odds(pred), z)
    # top-2 mean per volume: (2 + 1) / 2 = 1.5 and (-0.5 - 1.5) / 2 = -1
    assert torch.allclose(volume_log_odds(z, "topk", 2), torch.tensor([1.5, -1.0]))
    values = {}
    for level in ("slice", "volume"):
        for metric in ("auc", "accuracy", "f1"):
            m = LesionMetric(metric=metric, level=level, aggregation="topk", top_k=2)
            m.reset()
            m.update((pred[:1], label[:1]))
            m.update(([pred[1]], [label[1]]))  # a decollated batch works too
            values[f"{level}_{metric}"] = m.compute()
    # slice level: 7 non-ambiguous slices, the one positive (log-odds 2) ranks above every negative
    assert values["slice_auc"] == pytest.approx(1.0)
    assert values["slice_accuracy"] == pytest.approx(7 / 7)
    assert values["slice_f1"] == pytest.approx(1.0)
    assert values["volume_auc"] == pytest.approx(1.0)
    assert values["volume_accuracy"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="metric must be one of"):
        LesionMetric(metric="dice")
    with pytest.raises(ValueError, match="aggregation must be one of"):
        LesionMetric(aggregation="median")


def test_metadata_is_valid_offline(tmp_path):
    from monai.bundle import verify_metadata

    # the schema ships with the repository: nothing is downloaded
    verify_metadata(meta_file=META, filepath=str(SCHEMA))
    meta = json.loads(Path(META).read_text())
    image = meta["network_data_format"]["inputs"]["image"]
    from monai.bundle import ConfigParser

    for config in ("train.json", "train_teacher.json", "evaluate.json", "inference.json"):
        parser = ConfigParser()
        parser.read_config(_config_files(config))
        assert parser.get_parsed_content("in_channels") == image["num_channels"] == len(image["channel_def"]) == 5
    bad = dict(meta)
    del bad["task"]
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(bad))
    with pytest.raises(ValueError, match="task"):
        verify_metadata(meta_file=str(path), filepath=str(SCHEMA))


def test_teacher_config_is_the_student_config_but_for_the_network_and_teacher():
    from monai.bundle import ConfigParser

    student = json.loads((CONFIGS / "train.json").read_text())
    teacher = ConfigParser.load_config_files(_config_files("train_teacher.json"))
    # the epoch budgets may differ (30 teacher / 48 student epochs by default); nothing else in "train"
    epochs = {name: cfg["train"]["trainer"].pop("max_epochs") for name, cfg in (("student", student), ("teacher", teacher))}
    assert all(isinstance(v, int) and v > 0 for v in epochs.values()), epochs
    differ = {k for k in student.keys() | teacher.keys() if student.get(k) != teacher.get(k)}
    # the student trains on the lesion-detection datalist (30 more training subjects, validated every
    # 8 of its epochs), the teacher on the 14 segmentation subjects it was measured with; since 0.9 the
    # student's lesion insertion is balanced (hypo/hyper 0.5, hypointense darker than grey matter),
    # the teacher keeps the insertion of 0.8 it was measured with
    # since 0.11 the student trains without distillation (teacher null; teacher_kd is the switch) and
    # inserts lesions into 80 % of the stacks, up to 2 each (the teacher: half the stacks, one lesion)
    # (the teacher's config is an overlay on train.json: the student's teacher_* settings stay in it, unused)
    assert differ == {"model_name", "log_dir", "network_def", "distillation", "datalist", "val_interval",
                      "teacher_precision", "precision", "lesion_insertion"}
    assert student["teacher"] is None and student["teacher_kd"].startswith("$medmamba.bundle.dense_teacher(")
    varied = ("dark_prob", "dark_factor", "prob", "max_lesions")
    insertion = {k: v for k, v in student["lesion_insertion"].items() if k not in varied}
    assert insertion == {k: v for k, v in teacher["lesion_insertion"].items() if k not in varied}
    assert student["lesion_insertion"]["prob"] == 0.8 and student["lesion_insertion"]["max_lesions"] == 2
    assert student["lesion_insertion"]["dark_prob"] == 0.5 and student["lesion_insertion"]["dark_factor"] == [0.2, 0.45]
    assert student["datalist"].endswith("datalist_lesion_detection.json'")
    assert teacher["datalist"].endswith("datalist_segmentation.json'")
    assert teacher["model_name"] == "teacher" and teacher["distillation"]["teacher"] is None
    assert {k: v for k, v in teacher["distillation"].items() if k != "teacher"} == {
        k: v for k, v in student["distillation"].items() if k != "teacher"
    }
    assert student["teacher_def"] == teacher["network_def"]


def test_configs_normalise_intensities_like_their_training_and_insert_lesions_to_match():
    from monai.bundle import ConfigParser

    uppers, clips = {}, {}
    for name in ("train", "train_teacher", "train_slice_labels", "evaluate", "inference"):
        parser = ConfigParser()
        parser.read_config(_config_files(f"{name}.json"))
        found = []

        def walk(node, path):
            if isinstance(node, dict):
                if node.get("_target_") == "medmamba.transforms.MRNormalized":
                    found.append(path)
                for k, v in node.items():
                    walk(v, f"{path}#{k}")
            elif isinstance(node, list):
                for i, v in enumerate(node):
                    walk(v, f"{path}#{i}")

        walk(parser.get(), "")
        assert found, name
        uppers[name] = {parser.get_parsed_content(p[1:] + "#upper", instantiate=False) for p in found}
        if "lesion_insertion" in parser:
            clips[name] = parser.get_parsed_content("lesion_insertion", instantiate=True).clip
    # the lesion-map recipe (train, its teacher, evaluate, inference): no upper clip, so a hyperintense
    # lesion keeps its contrast to bright white matter; the slice-label recipe of 0.2 keeps its 99.9th percentile
    assert uppers == {"train": {None}, "train_teacher": {None}, "train_slice_labels": {99.9},
                      "evaluate": {None}, "inference": {None}}, uppers
    # synthetic lesions are clipped to the scan's range exactly when the scans are clipped
    assert clips == {"train": False, "train_teacher": False, "train_slice_labels": True}, clips


@pytest.mark.parametrize("config", ["train.json", "train_teacher.json"])
def test_dense_loss_weights_the_lesion_class(config):
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(_config_files(config))
    parser["device"] = "$torch.device('cpu')"
    loss = parser.get_parsed_content("dense_loss")
    # cross entropy over the 5 dense classes, Dice over the 4 without the background
    assert loss.cross_entropy.weight.tolist() == [1.0, 1.0, 1.0, 1.0, 10.0]
    assert loss.dice.class_weight.tolist() == [1.0, 1.0, 1.0, 10.0]
    parser["lesion_class_weight"] = 3.0
    assert parser.get_parsed_content("dense_loss", lazy=False).cross_entropy.weight.tolist() == [1.0, 1.0, 1.0, 1.0, 3.0]
    # the loss the trainer and the distillation use wraps it, with the multiple-instance term off by default
    mil = parser.get_parsed_content("loss", lazy=False)
    assert mil.base_loss.cross_entropy.weight.tolist() == [1.0, 1.0, 1.0, 1.0, 3.0]
    assert (mil.weight, mil.lesion_class, mil.pooling, mil.min_voxels) == (0.0, 4, "max", 5)


def test_fuse_on_load_gives_the_fused_network_with_equal_outputs():
    torch.manual_seed(0)
    net = FusedMobileMamba("t2", in_channels=3, num_classes=2, distillation=True, **TINY_NET)
    trained = net.template.__class__("t2", in_channels=3, num_classes=2, distillation=True, **TINY_NET)
    for m in trained.modules():  # non-trivial BatchNorm statistics
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    x = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        expected = trained.eval()(x)
        net.load_state_dict(trained.state_dict())
        got = net(x)
    assert net.is_fused
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in net.network.modules())
    assert torch.allclose(got, expected, atol=1e-5, rtol=1e-4)
    scripted = torch.jit.script(net)
    with torch.no_grad():
        assert torch.allclose(scripted(x), expected, atol=1e-5, rtol=1e-4)


def test_find_scans_and_volume_classifier(tmp_path):
    from medmamba.inferers import SliceStackInferer

    (tmp_path / "a.nii.gz").write_bytes(b"")
    series = tmp_path / "series"
    series.mkdir()
    (series / "IM0001.dcm").write_bytes(b"\0" * 128 + b"DICM")
    (tmp_path / "notes.txt").write_text("x")
    assert find_scans(tmp_path) == [
        {"image": str(tmp_path / "a.nii.gz"), "id": "a"},
        {"image": str(series), "id": "series"},
    ]
    # a single case: <parent folder>_<name>, not the whole path
    assert find_scans(series) == [{"image": str(series), "id": f"{tmp_path.name}_series"}]
    assert find_scans(tmp_path / "a.nii.gz") == [{"image": str(tmp_path / "a.nii.gz"), "id": f"{tmp_path.name}_a"}]
    with pytest.raises(FileNotFoundError, match="does not exist"):
        find_scans(tmp_path / "missing")

    class SliceMean(torch.nn.Module):  # log-odds = mean intensity of the centre slice
        def forward(self, x):
            m = x[:, 1].mean(dim=(1, 2))
            return torch.stack([torch.zeros_like(m), m], dim=1)

    vol = torch.zeros(1, 1, 8, 8, 5)
    vol[..., 3] = 2.0
    out = VolumeClassifier(SliceMean(), SliceStackInferer(2, context=1), "max")(vol)
    assert out["slice_probabilities"].shape == (1, 5)
    assert float(out["lesion_probability"][0]) == pytest.approx(float(torch.sigmoid(torch.tensor(2.0))))
    assert float(out["lesion_log_odds"][0]) == pytest.approx(2.0) and out["lesion_probability"].dtype == torch.float64
    vol[..., 3] = 30.0  # a float32 sigmoid would be exactly 1.0 here
    out = VolumeClassifier(SliceMean(), SliceStackInferer(2, context=1), "max")(vol)
    assert 0.0 < 1.0 - float(out["lesion_probability"][0]) < 1e-12 and float(out["lesion_log_odds"][0]) == pytest.approx(30.0)


# ------------------------------------------------------------------------------- the bundle, tiny
@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    """A tiny default data set (4 mm) and a datalist whose validation subject has lesion slices."""
    from medmamba.data.default_dataset import DefaultDatasetConfig, make_default_dataset

    root = tmp_path_factory.mktemp("cls_data")
    data = root / "data"
    make_default_dataset(data, DefaultDatasetConfig(seed=3, n_train=2, n_val=0, n_test=2, n_extra_train=0, downsample=2), progress=False)
    seg = json.loads((data / "datalist_segmentation.json").read_text())
    has_lesion = {s["id"]: s["has_lesion"] for s in json.loads((data / "manifest.json").read_text())["subjects"]}
    lesion_test = [e for e in seg["test"] if has_lesion[e["id"]]]
    assert len(lesion_test) == 1 and sum(has_lesion[e["id"]] for e in seg["training"]) == 1
    datalist = {"training": seg["training"], "validation": lesion_test, "test": seg["test"]}
    (root / "datalist.json").write_text(json.dumps(datalist))
    return {"data": data, "datalist": root / "datalist.json", "test": seg["test"]}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One intra-op thread for the tiny networks here, restored afterwards: the configs' default
    ``num_threads: "auto"`` takes every usable core, and on a small machine shared with other
    processes OpenMP threads waiting on each tiny kernel make these runs far slower."""
    import medmamba.resources

    before = torch.get_num_threads()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(medmamba.resources, "usable_cores", lambda *args, **kwargs: 1)
        torch.set_num_threads(1)
        yield
    torch.set_num_threads(before)


def _workflow(config, bundle_root, data, workflow_type="train", **override):
    from monai.bundle import ConfigWorkflow

    config_files = [str(CONFIGS / c) for c in config] if isinstance(config, (list, tuple)) else str(CONFIGS / config)
    return ConfigWorkflow(
        config_file=config_files,
        meta_file=META,
        logging_file=LOGGING,
        workflow_type=workflow_type,
        bundle_root=str(bundle_root),
        dataset_dir=str(data["data"]),
        datalist=str(data["datalist"]),
        **override,
    )


def _train_overrides(**extra):
    return {
        "train#trainer#max_epochs": 1,
        "val_interval": 1,
        "slices_per_volume": 2,
        "train#dataset#num_workers": 0,
        "validate#dataset#num_workers": 0,
        **extra,
    }


@pytest.fixture(scope="module")
def trained(tiny_data, tmp_path_factory):
    """Teacher then distilled student (``--teacher %teacher_kd``), each one epoch with tiny networks; returns the bundle root."""
    root = tmp_path_factory.mktemp("cls_bundle")
    teacher = _workflow(["train.json", "train_teacher.json"], root, tiny_data, **_train_overrides())
    teacher.initialize()
    assert teacher.check_properties() == []
    teacher.run()
    teacher.finalize()
    assert (root / "models" / "teacher.pt").is_file()

    # distillation is off by default since 0.11; teacher %teacher_kd is the documented switch, tested here
    student = _workflow("train.json", root, tiny_data, teacher="%teacher_kd",
                        **_train_overrides(**_tiny_overrides("network_def#network")))
    student.initialize()
    assert student.check_properties() == []
    assert student.max_epochs == 1  # a property read through the workflow
    student.run()
    trainer = student.trainer
    student.finalize()

    # the second member of the deployed seed ensemble, then the ensemble checkpoints
    member = _workflow("train.json", root, tiny_data, seed=1, model_name="model_seed1", log_dir=str(root / "logs" / "seed1"),
                       **_train_overrides(**_tiny_overrides("network_def#network")))
    member.initialize()
    member.run()
    member.finalize()
    stack = _workflow("ensemble.json", root, tiny_data, workflow_type=None)
    stack.initialize()
    stack.run()
    return {"root": root, "trainer": trainer}


def test_training_writes_checkpoints_logs_and_distils(trained):
    root = trained["root"]
    trainer = trained["trainer"]
    models = root / "models"
    assert {p.name for p in models.iterdir()} >= {"teacher.pt", "teacher_ema.pt", "model.pt", "model_ema.pt",
                                                  "model_seed1.pt", "model_seed1_ema.pt"}
    state = torch.load(models / "model.pt", weights_only=True)
    # the lesion-map classifier around a MobileMambaSeg with 5 dense classes (background, 3 tissues, lesion)
    assert state["network.head.weight"].shape[0] == 5 and any(k.startswith("network.encoder.") for k in state)
    teacher = torch.load(models / "teacher.pt", weights_only=True)
    assert not any(k.startswith("network.encoder.") for k in teacher)  # the teacher is MONAI's UNet
    ema = torch.load(models / "model_ema.pt", weights_only=True)
    assert ema.keys() == state.keys()
    assert list((root / "logs").glob("events.out.tfevents.*"))
    ensemble = torch.load(models / "model_ensemble_ema.pt", weights_only=True)["model"]
    assert set(ensemble) == {f"networks.{i}.{k}" for i in (0, 1) for k in ema}
    seed1 = torch.load(models / "model_seed1_ema.pt", weights_only=True)
    key = "network.head.weight"
    assert torch.equal(ensemble[f"networks.1.{key}"], seed1[key]) and torch.equal(ensemble[f"networks.0.{key}"], ema[key])
    assert not torch.equal(seed1[key], ema[key])  # another seed, other weights
    out = trainer.state.output
    assert torch.isfinite(out["loss"]) and float(out["loss_kd"]) > 0.0  # the teacher's KD term is active
    metrics = trainer.state.metrics if trainer.state.metrics else {}
    assert isinstance(metrics, dict)


def test_evaluate_writes_flat_metrics(trained, tiny_data):
    root = trained["root"]
    wf = _workflow("evaluate.json", root, tiny_data, workflow_type="infer", **_tiny_overrides(),
                   **{"dataloader#num_workers": 0})
    wf.initialize()
    assert wf.check_properties() == []
    wf.run()
    wf.finalize()
    doc = json.loads((root / "eval" / "metrics.json").read_text())
    for key in ("volume_auc", "volume_accuracy", "volume_f1", "slice_auc", "slice_accuracy", "slice_f1"):
        assert doc[key] is None or 0.0 <= doc[key] <= 1.0
    assert doc["n_volumes"] == len(tiny_data["test"]) == 2 and doc["n_volumes_positive"] == 1
    assert doc["checkpoint"].endswith("model_ema.pt") and doc["fused"] is True and doc["wall_time_s"] > 0
    rows = list(csv.DictReader((root / "eval" / "predictions.csv").open()))
    assert [r["id"] for r in rows] == [e["id"] for e in tiny_data["test"]]
    assert all(0.0 <= float(r["lesion_probability"]) <= 1.0 for r in rows)
    for r in rows:  # the log-odds are the same score before the sigmoid (they still rank where p rounds to 1.0)
        assert float(r["lesion_probability"]) == pytest.approx(1.0 / (1.0 + math.exp(-float(r["lesion_log_odds"]))), abs=2e-5)


def test_verify_net_in_out(trained):
    from monai.bundle import verify_net_in_out

    for config, name in (("train.json", "network_def#network"), ("inference.json", "network_def")):
        verify_net_in_out(net_id="network_def", meta_file=META, config_file=str(CONFIGS / config), device="cpu",
                          n=1, **_tiny_overrides(name))
    with pytest.raises(ValueError, match="in_channels=1"):
        verify_net_in_out(net_id="network_def", meta_file=META, config_file=str(CONFIGS / "inference.json"),
                          device="cpu", n=1, in_channels=1, **_tiny_overrides())


@pytest.fixture(scope="module")
def exported(trained):
    from monai.bundle import ckpt_export

    root = trained["root"]
    models = root / "models"
    ckpt_export(net_id="network_def", filepath=str(models / "model.ts"), ckpt_file=str(models / "model_ema.pt"),
                meta_file=META, config_file=str(CONFIGS / "inference.json"), bundle_root=str(root),
                **_tiny_overrides())
    from monai.bundle import ConfigWorkflow

    wf = ConfigWorkflow(config_file=str(CONFIGS / "inference.json"), meta_file=META, logging_file=LOGGING,
                        workflow_type=None, run_id="export_onnx", bundle_root=str(root),
                        export_input_shape=[2, 5, 128, 128], **_tiny_overrides())
    wf.initialize()
    wf.run()
    return root


def test_exported_models_equal_the_eager_fused_network(exported):
    import onnxruntime as ort

    from medmamba.networks import LesionMapClassifier, MobileMambaSeg, fuse_norms
    from medmamba.training import load_weights

    models = exported / "models"
    # the deployed weights (inference.json's ckpt_file): the student's EMA weights
    eager = load_weights(LesionMapClassifier(MobileMambaSeg("t2", in_channels=5, out_channels=5, output_stride=2, **TINY_NET)), str(models / "model_ema.pt"))
    fused = fuse_norms(copy.deepcopy(eager))
    x = torch.randn(4, 5, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = fused(x)
        unfused = eager.eval()(x)
    scale = float(ref.abs().max())
    assert float((unfused - ref).abs().max()) <= 1e-4 * scale
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ts = torch.jit.load(str(models / "model.ts"))
    assert not any("BatchNorm" in m.original_name for m in ts.modules())  # TorchScript of the fused network
    extra = {"metadata.json": "", "inference.json": ""}
    torch.jit.load(str(models / "model.ts"), _extra_files=extra)
    # the bundle's metadata travels inside the TorchScript file
    assert json.loads(extra["metadata.json"])["version"] == json.loads(Path(META).read_text())["version"]
    with torch.no_grad():
        assert float((ts(x) - ref).abs().max()) <= 1e-4 * scale
    session = ort.InferenceSession(str(models / "model.onnx"), providers=["CPUExecutionProvider"])
    # the default exporter's graph: any batch, any height and width in multiples of 64 from 128
    for shape in ((4, 5, 128, 128), (1, 5, 192, 128), (3, 5, 128, 256)):
        xs = torch.randn(*shape, generator=torch.Generator().manual_seed(2))
        with torch.no_grad():
            want = fused(xs)
        got = session.run(None, {session.get_inputs()[0].name: xs.numpy()})[0]
        assert float(np.abs(got - want.numpy()).max()) <= 1e-4 * float(want.abs().max()), shape
    report = json.loads((models / "model_export.json").read_text())
    assert report["torchscript"].endswith("model.ts")
    assert {f"onnx@batch={b},size={h}x128" for b in (1, 3, 8) for h in (128, 192)} <= set(report["relative_error"])
    assert max(v for k, v in report["relative_error"].items() if k != "fusion") <= 1e-4


def _read_report(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def test_inference_strips_with_the_segmentation_bundle_beside_it(exported, tiny_data, tmp_path):
    """The default run reads ``<bundle_root>/../mobilemamba_segmentation`` for its brain extraction;
    the volume the classifier sees changes (its score with it), ``--brain_extraction false`` skips it."""
    from monai.bundle import ConfigWorkflow
    from segmentation_bundle_fixture import make_segmentation_bundle

    bundles = tmp_path / "bundles"
    root = bundles / "mobilemamba_classification"
    shutil.copytree(exported, root)
    make_segmentation_bundle(bundles)
    case = next(e for e in tiny_data["test"] if "dicom" in e)
    scores = {}
    for extraction in (True, False):
        out = tmp_path / f"strip_{extraction}"
        wf = ConfigWorkflow(config_file=str(CONFIGS / "inference.json"), meta_file=META, logging_file=LOGGING,
                            workflow_type=None, bundle_root=str(root), input_path=str(tiny_data["data"] / case["image"]),
                            output_dir=str(out), **(_tiny_overrides() | {"brain_extraction": extraction}))
        wf.initialize()
        assert type(wf.parser.get_parsed_content("inferer")).__name__ == (
            "SkullStrippingInferer" if extraction else "SliceStackInferer")
        wf.run()
        wf.finalize()
        rows = _read_report(out / "probabilities.csv")
        assert len(rows) == 1 and rows[0]["status"] == "ok", rows
        scores[extraction] = float(rows[0]["lesion_log_odds"])
    assert scores[True] != pytest.approx(scores[False], abs=1e-4)


def test_contrast_polarity_probes_with_the_segmentation_network(tmp_path):
    """Inference and evaluation put the segmentation network's choice of contrast polarity in front of
    their inferer (``contrast_polarity`` auto); ``given`` leaves the inferer as it is and reads no
    segmentation bundle; without one, ``auto`` names the way out."""
    from monai.bundle import ConfigParser
    from segmentation_bundle_fixture import make_segmentation_bundle

    from medmamba.inferers import ContrastPolarityInferer, SliceStackInferer

    bundles = tmp_path / "bundles"
    seg = make_segmentation_bundle(bundles)
    (bundles / "mobilemamba_classification").mkdir()
    for config in ("inference.json", "evaluate.json"):
        assert json.loads((CONFIGS / config).read_text())["contrast_polarity"] == "auto"
        for polarity in ("auto", "given"):
            parser = ConfigParser()
            parser.read_config(str(CONFIGS / config))
            parser.update({"bundle_root": str(bundles / "mobilemamba_classification"), "contrast_polarity": polarity,
                           "brain_extraction": False, "device": "$torch.device('cpu')"})
            inferer = parser.get_parsed_content("polarity_inferer")
            user = parser.get("predictor#inferer" if config == "inference.json" else "evaluator#inferer")
            assert user == "@volume_inferer"  # the volume read-out around the polarity choice
            assert "@polarity_inferer" in parser.get("volume_inferer")
            if polarity == "given":
                assert inferer is parser.get_parsed_content("inferer")
                continue
            assert isinstance(inferer, ContrastPolarityInferer) and inferer.polarity == "auto"
            assert isinstance(inferer.probe_inferer, SliceStackInferer)
            assert type(inferer.probe_network).__name__ == "FusedMobileMambaSeg"
        # with brain extraction (the default) the probe runs the extractor's own network and slice-stack
        # inferer, which keeps its last pass: the extraction of a volume left as given reuses the probe's
        parser = ConfigParser()
        parser.read_config(str(CONFIGS / config))
        parser.update({"bundle_root": str(bundles / "mobilemamba_classification"), "device": "$torch.device('cpu')"})
        inferer = parser.get_parsed_content("polarity_inferer")
        extractor = inferer.inferer.extractor
        assert inferer.probe_network is extractor.network and inferer.probe_inferer is extractor.inferer
        assert inferer.probe_inferer.reuse_last_pass is True
    shutil.rmtree(seg)
    parser = ConfigParser()
    parser.read_config(str(CONFIGS / "inference.json"))
    parser.update({"bundle_root": str(bundles / "mobilemamba_classification"), "brain_extraction": False})
    with pytest.raises(RuntimeError) as info:  # MONAI wraps the expression's error
        parser.get_parsed_content("polarity_inferer")
    assert isinstance(info.value.__cause__, ValueError)
    assert "has no configs/inference.json" in str(info.value.__cause__)
    assert "--contrast_polarity given skips it" in str(info.value.__cause__)


def test_inference_nifti_and_dicom_with_checkpoint_and_torchscript(exported, tiny_data, tmp_path):
    from monai.bundle import ConfigWorkflow

    subjects = tiny_data["data"] / "subjects"
    lesion_case = next(e for e in tiny_data["test"] if "dicom" in e)
    nifti = str(tiny_data["data"] / lesion_case["image"])
    dicom = str(tiny_data["data"] / lesion_case["dicom"])
    results = {}
    for name, path, torchscript in (("nifti", nifti, False), ("dicom", dicom, False), ("dicom_ts", dicom, True)):
        out = tmp_path / name
        wf = ConfigWorkflow(config_file=str(CONFIGS / "inference.json"), meta_file=META, logging_file=LOGGING,
                            workflow_type=None, bundle_root=str(exported), input_path=path, output_dir=str(out),
                            use_torchscript=torchscript, **_tiny_overrides())
        wf.initialize()
        wf.run()
        wf.finalize()
        rows = _read_report(out / "probabilities.csv")
        assert len(rows) == 1 and rows[0]["status"] == "ok", rows
        stem = "image" if name == "nifti" else "dicom"
        assert rows[0]["case_id"] == f"{Path(path).parent.name}_{stem}"  # e.g. sub-004_dicom
        prob = float(rows[0]["lesion_probability"])
        assert 0.0 <= prob <= 1.0 and int(rows[0]["label"]) == int(prob >= 0.5)
        slices = json.loads((out / rows[0]["slice_file"]).read_text())
        assert len(slices["slices"]) == int(rows[0]["n_slices"]) > 10
        text = "".join(p.read_text(errors="ignore") for p in out.rglob("*") if p.is_file())
        assert "MMBFAKE" not in text  # the planted fake patient identity never reaches the outputs
        results[name] = prob
    # the same volume read from NIfTI and from DICOM, and the eager and TorchScript networks agree
    assert results["nifti"] == pytest.approx(results["dicom"], abs=1e-3)
    assert results["dicom_ts"] == pytest.approx(results["dicom"], abs=1e-4)

    # the other volume read-out: the mirror contrast of the dense lesion map, eager and TorchScript alike;
    # it subtracts a non-negative part of the map, so it never scores a volume above the maximum read-out
    scores = {}
    for readout, torchscript in (("maximum", False), ("mirror", False), ("mirror", True)):
        out = tmp_path / f"{readout}_{torchscript}"
        wf = ConfigWorkflow(config_file=str(CONFIGS / "inference.json"), meta_file=META, logging_file=LOGGING,
                            workflow_type=None, bundle_root=str(exported), input_path=dicom, output_dir=str(out),
                            use_torchscript=torchscript, volume_readout=readout, **_tiny_overrides())
        wf.initialize()
        wf.run()
        row = _read_report(out / "probabilities.csv")[0]
        assert row["status"] == "ok", row
        scores[readout, torchscript] = float(row["lesion_log_odds"])
    assert scores["mirror", True] == pytest.approx(scores["mirror", False], abs=1e-3)
    assert scores["mirror", False] <= scores["maximum", False] + 1e-4

    # a folder of cases with one unreadable case: recorded as failed, the others go on
    folder = tmp_path / "mixed"
    folder.mkdir()
    (folder / "a.nii.gz").symlink_to(nifti)
    (folder / "broken.nii.gz").write_bytes(b"not a nifti")
    out = tmp_path / "mixed_out"
    wf = ConfigWorkflow(config_file=str(CONFIGS / "inference.json"), meta_file=META, logging_file=LOGGING,
                        workflow_type=None, bundle_root=str(exported), input_path=str(folder),
                        output_dir=str(out), **_tiny_overrides())
    wf.initialize()
    wf.run()
    rows = {r["case_id"]: r for r in _read_report(out / "probabilities.csv")}
    assert rows["a"]["status"] == "ok" and rows["broken"]["status"] == "failed" and rows["broken"]["reason"]
    assert float(rows["a"]["lesion_probability"]) == pytest.approx(results["nifti"], abs=1e-6)
    del subjects


def test_classify_names_a_single_dicom_series_after_its_subject(tiny_data, tmp_path):
    from monai.transforms import Compose, EnsureTyped

    from medmamba.apps.classification import classify
    from medmamba.inferers import SliceStackInferer
    from medmamba.transforms import LoadScand

    class SliceMean(torch.nn.Module):  # log-odds = mean intensity of the centre slice
        def forward(self, x):
            m = x[:, 1].mean(dim=(1, 2))
            return torch.stack([torch.zeros_like(m), m], dim=1)

    source = next(tiny_data["data"] / e["dicom"] for e in tiny_data["test"] if "dicom" in e)
    series = tmp_path / "subjects" / "sub-004" / "dicom"  # the default data set's layout
    shutil.copytree(source, series)
    predictor = VolumeClassifier(SliceMean(), SliceStackInferer(2, context=1), "max")
    preprocessing = Compose([LoadScand("image"), EnsureTyped("image", dtype=torch.float32)])
    summary = classify(series, tmp_path / "out", predictor, preprocessing)
    assert summary["n_ok"] == 1 and summary["n_failed"] == 0, summary
    (row,) = _read_report(tmp_path / "out" / "probabilities.csv")
    assert row["case_id"] == "sub-004_dicom" and row["status"] == "ok"
    assert row["slice_file"] == "sub-004_dicom/slice_probabilities.json"
    doc = json.loads((tmp_path / "out" / "sub-004_dicom" / "slice_probabilities.json").read_text())
    assert doc["case_id"] == "sub-004_dicom"


def test_ddp_two_cpu_processes(tiny_data, tmp_path):
    root = tmp_path / "ddp"
    # one training volume per process and batch; no teacher (the student's own recipe under DDP)
    overrides = _train_overrides(**_tiny_overrides("network_def#network"), volumes_per_batch=1,
                                 **{"distillation#teacher": "$None"})
    args = []
    for key, value in {**overrides, "bundle_root": str(root), "dataset_dir": str(tiny_data["data"]),
                       "datalist": str(tiny_data["datalist"])}.items():
        args += [f"--{key}", json.dumps(value) if not isinstance(value, str) else value]
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
        "-m", "monai.bundle", "run",
        "--config_file", str([str(CONFIGS / "train.json"), str(CONFIGS / "multi_gpu_train.json")]),
        "--meta_file", META, "--logging_file", LOGGING, *args,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600, cwd=REPO)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    models = root / "models"
    assert {p.name for p in models.iterdir()} == {"model.pt", "model_ema.pt"}
    state = torch.load(models / "model.pt", weights_only=True)
    assert not any(k.startswith("module.") for k in state)  # rank 0 saved the unwrapped network
    # both ranks trained: each saw half of the 2 training volumes per epoch
    log = proc.stdout + proc.stderr
    assert log.count("Epoch: 1/1, Iter: 1/1") == 1  # only rank 0 logs


def test_stack_lesion_insertion_with_isolated_white_matter_stays_finite():
    # white matter without two neighbouring voxels: no noise estimate, the lesion must still be finite
    image = torch.ones(3, 16, 16)
    tissue = torch.full((1, 16, 16), 2.0)
    tissue[0, 8, 8] = 3
    insert = RandStackLesionInsertd("image", mask_key="lesion", tissue_key="tissue", prob=1.0, radius=(2.0, 2.0))
    insert.set_random_state(0)
    out = insert({"image": image, "lesion": torch.zeros(1, 16, 16), "tissue": tissue})
    assert torch.isfinite(out["image"]).all() and out["lesion"][0, 8, 8] == 1


def _brainstem_slice() -> tuple[torch.Tensor, torch.Tensor]:
    """A 40x40 slice: cortex (grey matter, 0.7) around white matter (1.0) on the left and, on the
    right, a "brainstem": labelled grey matter, as bright as white matter (as on the MNI template)."""
    tissue = torch.zeros(1, 40, 40)
    tissue[0, 2:38, 2:38] = 2
    tissue[0, 8:32, 6:18] = 3
    image = torch.full((3, 40, 40), 0.05)
    image[:, 2:38, 2:38] = 0.7
    image[:, 8:32, 6:18] = 1.0
    image[:, 12:28, 24:34] = 1.0  # bright, labelled grey matter
    image[:, 2:38, 36:38] = 0.3  # a CSF-dark rim, labelled CSF
    tissue[0, 2:38, 36:38] = 1
    return image + 0.02 * torch.randn(3, 40, 40, generator=torch.Generator().manual_seed(0)), tissue


def test_intensity_white_matter_adds_bright_grey_labelled_tissue_for_any_contrast():
    image, tissue = _brainstem_slice()
    mid, labels = image[1].numpy(), tissue[0].numpy()
    wm_like = intensity_white_matter(mid, labels)
    assert wm_like[labels == 3].all()  # the labels' white matter stays
    assert wm_like[14:26, 26:32].all()  # the bright "brainstem" is added, its core at least
    assert not wm_like[labels == 1].any() and not wm_like[30:36, 20:34].any()  # CSF and cortex are not
    assert not wm_like[labels == 0].any()
    # an inverted (T2-like) contrast: white matter darkest; the same structure is found
    np.testing.assert_array_equal(intensity_white_matter(2.0 - mid, labels), wm_like)
    # no other label present: the labels' white matter
    only = np.where(labels > 0, 3, 0)
    np.testing.assert_array_equal(intensity_white_matter(mid, only), only == 3)
    with pytest.raises(ValueError, match="image shape"):
        intensity_white_matter(mid[:10], labels)


def test_stack_lesion_insertion_reaches_white_matter_bright_grey_labels_only_when_asked():
    image, tissue = _brainstem_slice()
    data = {"image": image, "lesion": torch.zeros(1, 40, 40), "tissue": tissue}
    outside = {}
    for flag in (False, True):
        option = {"white_matter_by_intensity": True} if flag else {}  # off by default
        insert = RandStackLesionInsertd("image", mask_key="lesion", tissue_key="tissue", prob=1.0, radius=(2.0, 2.0), **option)
        insert.set_random_state(0)
        hits = [insert(data)["lesion"][0] > 0 for _ in range(60)]
        outside[flag] = sum(int((h[:, 22:36]).any()) for h in hits)  # lesions in the bright grey-labelled block
        assert all(not (h & (tissue[0] == 1)).any() for h in hits)  # never in the CSF rim
        assert all(not (h[32:38, 20:36]).any() for h in hits)  # nor in the darker cortex away from both
    assert outside[False] == 0 and outside[True] >= 15
    assert data["tissue"].eq(tissue).all()  # the labels are not changed


def test_stack_lesion_insertion_near_csf_centres_lesions_beside_the_ventricle():
    from scipy import ndimage

    tissue = torch.zeros(1, 48, 48)
    tissue[0, 2:46, 2:46] = 2
    tissue[0, 6:42, 6:42] = 3  # a wide white matter ...
    tissue[0, 20:28, 20:28] = 1  # ... around a "ventricle"
    image = torch.where(tissue == 3, 1.0, torch.where(tissue == 1, 0.25, 0.7)).repeat(3, 1, 1)
    data = {"image": image, "lesion": torch.zeros(1, 48, 48), "tissue": tissue}
    csf_distance = ndimage.distance_transform_edt(tissue[0].numpy() != 1)
    nearest = {}
    for p in (0.0, 1.0):
        insert = RandStackLesionInsertd("image", mask_key="lesion", tissue_key="tissue", prob=1.0, radius=(2.0, 2.0),
                                        near_csf_prob=p, near_csf_distance=2.0)
        insert.set_random_state(1)
        masks = [insert(data)["lesion"][0].numpy() > 0 for _ in range(40)]
        nearest[p] = [float(csf_distance[m].min()) for m in masks if m.any()]
    # every lesion centred at most 2 pixels from the CSF reaches the pixels beside it; anywhere, most do not
    assert max(nearest[1.0]) <= 1.0 and sum(d > 3.0 for d in nearest[0.0]) >= 20
    with pytest.raises(ValueError, match="near_csf_prob"):
        RandStackLesionInsertd("image", near_csf_prob=1.5)
    with pytest.raises(ValueError, match="near_csf_distance"):
        RandStackLesionInsertd("image", near_csf_distance=0)


def test_lesion_probe_refuses_the_test_split():
    import importlib.util

    spec = importlib.util.spec_from_file_location("lesion_probe", REPO / "benchmarks" / "lesion_probe.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    with pytest.raises(ValueError, match="split='test'"):
        module.probe("unused.pt", split="test")
