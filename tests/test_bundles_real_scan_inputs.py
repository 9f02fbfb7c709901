"""Both bundles' inference on scans as they come: any voxel size, a whole head, bad inputs.

A head phantom (a brain ellipsoid with a bright sphere and a dark "ventricle" in it, a darker shell
around it, a brain-bright blob outside the head) is written at 1 mm (LAS), 2 mm (RAS) and
0.9 x 0.9 x 5 mm (axial, rotated in-plane), all with non-grid-aligned origins. The bundles' own
``inference.json`` (preprocessing, resampling to 2 mm, ``run``) runs with stub predictors that
threshold the normalised intensity, so that the expected output is known on the input's grid:
the segmentation must come back with the input's exact shape and affine and the structures on the
same voxels; the classification's per-slice results must refer to the input's slices. Bad inputs (a
2D image, a single-slice DICOM, a 4D series, a CT, noise, a T2-weighted series) get a clear error or a
documented warning.
"""

from __future__ import annotations

import csv
import json
import math
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from medmamba.data import ScanLoadError, load_scan
from medmamba.io import write_dicom_series
from medmamba.io.geometry import slices_to_source, source_geometry, voxel_volume_ml
from medmamba.transforms import BrainMask, CheckScan, CheckScand, KeepBrainComponent, KeepBrainComponentd, scan_plausibility

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::UserWarning", "ignore::FutureWarning")

REPO = Path(__file__).resolve().parents[1]
SEG_CONFIGS = REPO / "bundles" / "mobilemamba_segmentation" / "configs"
CLS_CONFIGS = REPO / "bundles" / "mobilemamba_classification" / "configs"

CENTRE = np.array([3.3, -7.9, 11.4])
BRAIN_AXES = np.array([45.0, 55.0, 40.0])
SHELL_AXES = np.array([51.0, 61.0, 46.0])
SPHERE = (CENTRE + [12.0, 10.0, 5.0], 18.0)
VENTRICLE = (CENTRE + [-15.0, -10.0, 0.0], 8.0)
EYE = (CENTRE + [0.0, 75.0, 0.0], 6.0)
HALF_FOV = np.array([64.0, 90.0, 58.0])
LEVELS = {"shell": 50.0, "brain": 100.0, "sphere": 400.0}


def _rotation_z(degrees: float) -> np.ndarray:
    t = math.radians(degrees)
    return np.array([[math.cos(t), -math.sin(t), 0.0], [math.sin(t), math.cos(t), 0.0], [0.0, 0.0, 1.0]])


def _grid(spacing: tuple[float, float, float], rotation: np.ndarray) -> tuple[np.ndarray, tuple[int, int, int]]:
    """Affine and shape of a grid covering the phantom's field of view, centred on it."""
    sp = np.abs(np.asarray(spacing, dtype=float))
    shape = tuple(int(math.ceil(2 * h / s)) for h, s in zip(HALF_FOV, sp))
    lin = rotation @ np.diag(spacing)
    affine = np.eye(4)
    affine[:3, :3] = lin
    affine[:3, 3] = CENTRE - lin @ ((np.asarray(shape) - 1) / 2.0)
    return affine, shape  # type: ignore[return-value]


def _world(affine: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    idx = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), axis=-1).astype(float)
    return idx @ affine[:3, :3].T + affine[:3, 3]


def _inside_ellipsoid(world: np.ndarray, axes: np.ndarray) -> np.ndarray:
    return (((world - CENTRE) / axes) ** 2).sum(-1) <= 1.0


def _inside_ball(world: np.ndarray, ball: tuple[np.ndarray, float]) -> np.ndarray:
    return np.linalg.norm(world - ball[0], axis=-1) <= ball[1]


def _truth(affine: np.ndarray, shape: tuple[int, ...]) -> dict[str, np.ndarray]:
    w = _world(affine, shape)
    return {
        "brain": _inside_ellipsoid(w, BRAIN_AXES),
        "shell": _inside_ellipsoid(w, SHELL_AXES),
        "sphere": _inside_ball(w, SPHERE),
        "ventricle": _inside_ball(w, VENTRICLE),
        "eye": _inside_ball(w, EYE),
    }


def _phantom(path: Path, spacing: tuple[float, float, float], rotation: np.ndarray | None = None) -> dict:
    affine, shape = _grid(spacing, np.eye(3) if rotation is None else rotation)
    t = _truth(affine, shape)
    img = np.zeros(shape, np.float32)
    img[t["shell"]] = LEVELS["shell"]
    img[t["brain"] | t["eye"]] = LEVELS["brain"]
    img[t["ventricle"]] = LEVELS["shell"]
    img[t["sphere"]] = LEVELS["sphere"]
    nib.save(nib.Nifti1Image(img, affine), path)
    stored = nib.load(path).affine  # float32 in the header
    return {"path": path, "affine": stored, "shape": shape, "truth": _truth(stored, shape)}


INPUTS = {
    "1mm_las": ((-1.0, 1.0, 1.0), None),
    "2mm": ((2.0, 2.0, 2.0), None),
    "aniso_oblique": ((0.9, 0.9, 5.0), 10.0),
}


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict]:
    root = tmp_path_factory.mktemp("phantoms")
    out = {}
    for name, (spacing, degrees) in INPUTS.items():
        out[name] = _phantom(root / f"{name}.nii.gz", spacing, None if degrees is None else _rotation_z(degrees))
    return out


class ThresholdSegmenter:
    """Stub predictor: class 3 on the sphere, 2 on brain-bright tissue, 0 elsewhere (one-hot logits).

    The normalisation is affine in the intensities (clipped): the maximum is the sphere's level and
    the most frequent value between the minimum and the maximum the brain's, which gives the raw
    intensity back; the thresholds lie half-way between the phantom's levels.
    """

    def __call__(self, volume: torch.Tensor) -> torch.Tensor:
        z = volume[:, :1].float()
        values, counts = torch.unique(torch.round(z * 1000), return_counts=True)
        keep = (values > values.min()) & (values < values.max())
        z_brain, z_sphere = float(values[keep][counts[keep].argmax()]) / 1000, float(z.max())
        raw = LEVELS["brain"] + (z - z_brain) * (LEVELS["sphere"] - LEVELS["brain"]) / (z_sphere - z_brain)
        labels = torch.zeros_like(z, dtype=torch.long)
        labels[raw > (LEVELS["shell"] + LEVELS["brain"]) / 2] = 2
        labels[raw > (LEVELS["brain"] + LEVELS["sphere"]) / 2] = 3
        return 10.0 * torch.nn.functional.one_hot(labels[:, 0], 4).movedim(-1, 1).float()


class SphereAreaNet(torch.nn.Module):
    """Stub slice classifier: lesion logit grows with the sphere's area in the centre slice."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        centre = x[:, x.shape[1] // 2]
        area = (centre > 2.5).float().mean(dim=(1, 2))
        return torch.stack([torch.zeros_like(area), 200.0 * area - 3.0], dim=1)


def _run_config(config: Path, overrides: dict) -> dict:
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(config))
    for key, value in overrides.items():
        parser[key] = value
    (summary,) = parser.get_parsed_content("run")
    return summary


def _segment(inputs: Path, out: Path, **extra: object) -> dict:
    return _run_config(SEG_CONFIGS / "inference.json", {
        "input_path": str(inputs), "output_dir": str(out), "predictor": ThresholdSegmenter(),
        "brain_volume_range_ml": [300, 600], **extra,
    })


def _classify(inputs: Path, out: Path) -> dict:
    from medmamba.apps.classification import VolumeClassifier
    from medmamba.inferers import SliceStackInferer

    predictor = VolumeClassifier(SphereAreaNet(), SliceStackInferer(2, context=2), "max")
    return _run_config(CLS_CONFIGS / "inference.json", {  # a stand-in network: nothing for the lesion rules to read
        "input_path": str(inputs), "output_dir": str(out), "predictor": predictor, "bright_outlier": False, "dark_asymmetry": False,
    })


def _rows(path: Path) -> dict[str, dict]:
    with open(path) as f:
        return {r["case_id"]: r for r in csv.DictReader(f)}


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * float((a & b).sum()) / max(float(a.sum() + b.sum()), 1.0)


# ------------------------------------------------------------------------------------- resolution
@pytest.mark.parametrize("name", list(INPUTS))
def test_segmentation_comes_back_on_the_input_grid(phantoms: dict, name: str, tmp_path: Path) -> None:
    ph = phantoms[name]
    summary = _segment(ph["path"], tmp_path)
    assert summary["n_ok"] == 1 and summary["n_failed"] == 0, summary
    (case,) = [p for p in tmp_path.iterdir() if p.is_dir()]
    seg = nib.load(case / f"{case.name}_seg.nii.gz")
    brain = nib.load(case / f"{case.name}_brain_mask.nii.gz")
    for out in (seg, brain):
        assert out.shape == ph["shape"]
        np.testing.assert_allclose(out.affine, ph["affine"], atol=1e-4)
    labels = np.asarray(seg.dataobj)
    mask = np.asarray(brain.dataobj)
    assert set(np.unique(mask)) <= {0, 1}
    truth = ph["truth"]
    assert _dice(labels == 3, truth["sphere"]) > 0.9
    assert _dice(mask > 0, truth["brain"]) > 0.9
    # the blob outside the head (thresholded as tissue) is not brain: cleared from the label map
    # (keep_largest_component) and outside the brain mask; the dark hole inside is filled in the mask
    # and, since 0.6.13 (CloseBrainGaps, 8 mm), given to the tissues in the label map as well
    assert labels[truth["eye"]].max() == 0 and mask[truth["eye"]].sum() == 0
    assert (labels[truth["ventricle"]] > 0).all() and mask[truth["ventricle"]].mean() == 1.0
    row = _rows(tmp_path / "segmentation.csv")[case.name]
    volume = float(truth["brain"].sum()) * voxel_volume_ml(ph["affine"])
    assert float(row["brain_volume_ml"]) == pytest.approx(volume, rel=0.08)
    assert row["warnings"] == ""


def test_segmentation_keeps_islands_when_asked(phantoms: dict, tmp_path: Path) -> None:
    ph = phantoms[next(iter(INPUTS))]
    assert _segment(ph["path"], tmp_path, keep_largest_component=False)["n_ok"] == 1
    (case,) = [p for p in tmp_path.iterdir() if p.is_dir()]
    labels = np.asarray(nib.load(case / f"{case.name}_seg.nii.gz").dataobj)
    mask = np.asarray(nib.load(case / f"{case.name}_brain_mask.nii.gz").dataobj)
    assert (labels[ph["truth"]["eye"]] == 2).mean() > 0.5 and mask[ph["truth"]["eye"]].sum() == 0


def test_segmentation_probabilities_on_the_input_grid(phantoms: dict, tmp_path: Path) -> None:
    ph = phantoms["aniso_oblique"]
    # the label map is the arg-max of these probabilities (islands outside the brain kept, so that it is exactly)
    _segment(ph["path"], tmp_path, write_probabilities=True, keep_largest_component=False)
    (case,) = [p for p in tmp_path.iterdir() if p.is_dir()]
    prob = nib.load(case / f"{case.name}_prob.nii.gz")
    assert prob.shape == (*ph["shape"], 4)
    np.testing.assert_allclose(prob.affine, ph["affine"], atol=1e-4)
    labels = np.asarray(nib.load(case / f"{case.name}_seg.nii.gz").dataobj)
    p = np.asarray(prob.dataobj)
    inside = p.sum(-1) > 0.5  # outside the foreground crop the probabilities are 0 (label 0)
    assert np.array_equal(np.argmax(p, -1)[inside], labels[inside])


class RecordingRefiner:
    """Records what the segmentation hands its refiner and returns "all CSF" inside the crop."""

    def __init__(self) -> None:
        self.calls: list[dict] = []

    def __call__(self, prob: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        self.calls.append({"prob": tuple(prob.shape), "image": tuple(image.shape), "affine": np.asarray(image.affine),
                           "max": float(image.max())})
        out = torch.zeros_like(prob)
        out[1] = 1.0
        return out


def test_refiner_gets_the_loaded_scan_on_the_input_grid_and_its_result_is_written(phantoms: dict, tmp_path: Path) -> None:
    ph = phantoms["1mm_las"]
    refiner = RecordingRefiner()
    assert _segment(ph["path"], tmp_path, refine_tissue=True, tissue_refiner=refiner, keep_largest_component=False)["n_ok"] == 1
    (call,) = refiner.calls
    assert call["prob"] == (4, *ph["shape"]) and call["image"] == (1, *ph["shape"])
    np.testing.assert_allclose(call["affine"], ph["affine"], atol=1e-4)
    assert call["max"] == pytest.approx(LEVELS["sphere"])  # raw intensities, not the normalised ones
    (case,) = [p for p in tmp_path.iterdir() if p.is_dir()]
    labels = np.asarray(nib.load(case / f"{case.name}_seg.nii.gz").dataobj)
    assert set(np.unique(labels)) == {1}


def test_intensity_refinement_sharpens_a_1mm_scan(phantoms: dict, tmp_path: Path) -> None:
    """The stub's prediction comes from the 2 mm grid; refined on the 1 mm scan it follows the 1 mm edges."""
    ph = phantoms["1mm_las"]
    dice = {}
    for refine in (False, True):
        out = tmp_path / str(refine)
        assert _segment(ph["path"], out, refine_tissue=refine)["n_ok"] == 1
        (case,) = [p for p in out.iterdir() if p.is_dir()]
        labels = np.asarray(nib.load(case / f"{case.name}_seg.nii.gz").dataobj)
        dice[refine] = _dice(labels == 3, ph["truth"]["sphere"])
    assert dice[True] > dice[False]
    assert dice[True] > 0.97


def test_refiner_without_the_loaded_scan_fails_the_case_with_the_fix(phantoms: dict, tmp_path: Path) -> None:
    from monai.bundle import ConfigParser

    from medmamba.apps.pipeline import segment_scans

    parser = ConfigParser()
    parser.read_config(str(SEG_CONFIGS / "inference.json"))
    parser["refine_tissue"] = False  # no copy of the loaded scan in the preprocessing
    parser["stripped_input_brain"] = False
    parser["close_brain_gaps"] = False
    report = segment_scans([phantoms["2mm"]["path"]], ThresholdSegmenter(), tmp_path,
                           parser.get_parsed_content("preprocessing"), {1: "csf", 2: "gm", 3: "wm"},
                           refiner=RecordingRefiner())
    assert report.n_ok == 0 and report.n_failed == 1
    reason = " ".join(report.failed.values())
    assert "CopyItemsd" in reason and "source_image" in reason


def test_a_skull_stripped_scan_keeps_its_own_brain(tmp_path: Path) -> None:
    """0.6.12: a skull-stripped input (zero outside the brain) whose lower part is too dark for the
    network (the stub calls it background, as the real network did with a bias-darkened cerebellum)
    keeps its whole brain; the report says where the brain came from."""
    affine, shape = _grid((2.0, 2.0, 2.0), np.eye(3))
    world = _world(affine, shape)
    brain = _inside_ellipsoid(world, BRAIN_AXES)
    dark = brain & (world[..., 2] < CENTRE[2] - 25.0)
    img = np.zeros(shape, np.float32)
    img[brain] = LEVELS["brain"]
    img[dark] = 60.0  # below the stub's tissue threshold (75)
    img[_inside_ball(world, SPHERE)] = LEVELS["sphere"]
    (tmp_path / "in").mkdir()
    nib.save(nib.Nifti1Image(img, affine), tmp_path / "in" / "stripped.nii.gz")
    assert 0.05 < dark.sum() / brain.sum() < 0.15
    masks, sources = {}, {}
    for on in (True, False):
        out = tmp_path / f"out_{on}"
        assert _segment(tmp_path / "in" / "stripped.nii.gz", out, stripped_input_brain=on, refine_tissue=False)["n_ok"] == 1
        masks[on] = np.asarray(nib.load(out / "in_stripped" / "in_stripped_brain_mask.nii.gz").dataobj) > 0
        sources[on] = _rows(out / "segmentation.csv")["in_stripped"]["brain_source"]
    assert sources == {True: "skull-stripped input", False: "network"}
    np.testing.assert_array_equal(masks[True], brain)
    assert masks[False][dark].mean() < 0.1 and _dice(masks[False], brain) < 0.97


def test_dicom_series_at_5_mm_gets_its_masks_and_seg_on_its_own_grid(phantoms: dict, tmp_path: Path) -> None:
    import highdicom as hd

    from medmamba.io import write_dicom_series

    ph = phantoms["aniso_oblique"]
    series = tmp_path / "in" / "subject" / "dicom"
    write_dicom_series(series, np.asarray(nib.load(ph["path"]).dataobj).round().astype(np.int16), ph["affine"],
                       uid_entropy="real-scan-inputs")
    loaded = load_scan(series)
    summary = _segment(series, tmp_path / "out")
    assert summary["n_ok"] == 1, summary
    case = tmp_path / "out" / "subject_dicom"
    seg = nib.load(case / "subject_dicom_seg.nii.gz")
    assert seg.shape == tuple(loaded.shape[1:])
    np.testing.assert_allclose(seg.affine, loaded.affine.numpy(), atol=1e-3)
    truth = _truth(loaded.affine.numpy(), tuple(loaded.shape[1:]))
    labels = np.asarray(seg.dataobj)
    assert _dice(labels == 3, truth["sphere"]) > 0.9
    assert (case / "subject_dicom_brain_mask.nii.gz").is_file()
    dcm_seg = hd.seg.segread(case / "subject_dicom_seg.dcm")
    assert int(dcm_seg.NumberOfFrames) > 0
    assert int(dcm_seg.Rows) == loaded.shape[2] and int(dcm_seg.Columns) == loaded.shape[1]
    source_uid = str(loaded.meta.get("series_instance_uid", ""))
    assert {str(r.SeriesInstanceUID) for r in dcm_seg.ReferencedSeriesSequence} == {source_uid}


@pytest.mark.parametrize("name", list(INPUTS))
def test_classification_slices_are_the_input_slices(phantoms: dict, name: str, tmp_path: Path) -> None:
    ph = phantoms[name]
    summary = _classify(ph["path"], tmp_path)
    assert summary["n_ok"] == 1 and summary["n_failed"] == 0, summary
    (row,) = _rows(tmp_path / "probabilities.csv").values()
    assert row["warnings"] == "" and int(row["slice_axis"]) == 2
    assert int(row["n_slices"]) == ph["shape"][2]
    doc = json.loads((tmp_path / row["slice_file"]).read_text())
    assert [s["slice_index"] for s in doc["slices"]] == list(range(ph["shape"][2]))
    # input slice positions along the network's normal (superior) are the input's own
    z = ph["affine"][2, 3] + ph["affine"][2, 2] * np.arange(ph["shape"][2])
    np.testing.assert_allclose([s["position_mm"] for s in doc["slices"]], z, atol=1e-3)
    # the most suspicious input slice is the one through the sphere's centre
    thickness = abs(ph["affine"][2, 2])
    top = doc["slices"][int(row["top_slice"])]
    assert abs(top["position_mm"] - SPHERE[0][2]) <= thickness / 2 + 2.0
    assert float(row["lesion_probability"]) > 0.5
    assert len(doc["network_slices"]) > 0


class _PolaritySegmenter:
    """Stub predictor behind a contrast-polarity check that always inverts (``polarity="inverted"``), as
    the bundles' chain holds the check under ``.inferer``."""

    def __init__(self) -> None:
        from medmamba.inferers import ContrastPolarityInferer

        self.inferer = ContrastPolarityInferer(lambda x, network: network(x), polarity="inverted")

    def __call__(self, volume: torch.Tensor) -> torch.Tensor:
        return self.inferer(volume, ThresholdSegmenter())


def _t2_like(phantom: dict, path: Path) -> Path:
    """The phantom with its contrast inverted inside the head (sphere darkest, shell brightest)."""
    img = nib.load(phantom["path"])
    data = np.asarray(img.dataobj, dtype=np.float32)
    nib.save(nib.Nifti1Image(np.where(data > 0, 450.0 - data, 0.0).astype(np.float32), img.affine), path)
    return path


def test_both_reports_say_in_which_contrast_polarity_a_scan_was_analysed(phantoms: dict, tmp_path: Path) -> None:
    """``contrast_polarity``: ``inverted`` where the chain's check analysed a T2-like scan inverted, and the
    result is then that of the T1 scan; ``given`` without inversion (the stand-ins hold no check)."""
    from medmamba.apps.classification import VolumeClassifier
    from medmamba.inferers import ContrastPolarityInferer, SliceStackInferer

    ph = phantoms["2mm"]
    t2 = _t2_like(ph, tmp_path / "t2_like.nii.gz")
    _segment(ph["path"], tmp_path / "seg_t1")
    _segment(t2, tmp_path / "seg_t2", predictor=_PolaritySegmenter())
    (t1_row,) = _rows(tmp_path / "seg_t1" / "segmentation.csv").values()
    (t2_row,) = _rows(tmp_path / "seg_t2" / "segmentation.csv").values()
    assert (t1_row["contrast_polarity"], t2_row["contrast_polarity"]) == ("given", "inverted")
    assert float(t2_row["brain_volume_ml"]) == pytest.approx(float(t1_row["brain_volume_ml"]), rel=0.02)
    assert t2_row["voxels.3"] == t1_row["voxels.3"]  # the sphere, found in the inverted T2-like scan

    _classify(ph["path"], tmp_path / "cls_t1")
    inverting = VolumeClassifier(SphereAreaNet(), ContrastPolarityInferer(SliceStackInferer(2, context=2), polarity="inverted"), "max")
    _run_config(CLS_CONFIGS / "inference.json", {"input_path": str(t2), "output_dir": str(tmp_path / "cls_t2"),
                                                  "predictor": inverting, "bright_outlier": False,
                                                  "dark_asymmetry": False})
    (t1_row,) = _rows(tmp_path / "cls_t1" / "probabilities.csv").values()
    (t2_row,) = _rows(tmp_path / "cls_t2" / "probabilities.csv").values()
    assert (t1_row["contrast_polarity"], t2_row["contrast_polarity"]) == ("given", "inverted")
    assert float(t2_row["lesion_probability"]) > 0.5 and t2_row["top_slice"] == t1_row["top_slice"]


def test_two_mm_resampling_is_exactly_a_no_op(phantoms: dict, tmp_path: Path) -> None:
    """At the training spacing the resampling changes nothing: evaluation figures stay as they were."""
    from monai.bundle import ConfigParser

    ph = phantoms["2mm"]
    mask = tmp_path / "mask.nii.gz"
    nib.save(nib.Nifti1Image(ph["truth"]["sphere"].astype(np.float32), ph["affine"]), mask)
    item = {"image": str(ph["path"]), "label": str(mask), "lesion": str(mask), "id": "x"}
    for config in (SEG_CONFIGS / "inference.json", CLS_CONFIGS / "inference.json", SEG_CONFIGS / "evaluate.json",
                   CLS_CONFIGS / "evaluate.json"):
        parser = ConfigParser()
        parser.read_config(str(config))
        assert parser["pixdim"] == [2.0, 2.0, 2.0]
        meta = json.loads((config.parent / "metadata.json").read_text())
        assert meta["network_data_format"]["inputs"]["image"]["pixdim"] == parser["pixdim"]
        targets = [s["_target_"] for s in parser["preprocessing"]["transforms"]]
        resample = "medmamba.transforms.AntiAliasedSpacingd"
        assert targets.count(resample) == 1 and targets.index(resample) == targets.index("Orientationd") + 1
        with_spacing = parser.get_parsed_content("preprocessing")(dict(item))
        steps = parser["preprocessing"]["transforms"]
        parser["preprocessing"]["transforms"] = [s for s in steps if s["_target_"] != resample]
        parser.parse(True)
        without = parser.get_parsed_content("preprocessing")(dict(item))
        assert with_spacing.keys() == without.keys()
        for key, value in without.items():
            if isinstance(value, torch.Tensor):
                assert torch.equal(torch.as_tensor(with_spacing[key]), torch.as_tensor(value)), (config, key)
                if hasattr(value, "affine"):
                    assert torch.equal(with_spacing[key].affine, value.affine), (config, key)


# ------------------------------------------------------------------------------------- bad input
@pytest.fixture(scope="module")
def bad_inputs(phantoms: dict, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from nibabel.testing import data_path
    from pydicom.data import get_testdata_file

    root = tmp_path_factory.mktemp("bad") / "inputs"
    root.mkdir()
    shutil.copy(phantoms["2mm"]["path"], root / "head.nii.gz")
    shutil.copy(Path(data_path) / "example4d.nii.gz", root / "series4d.nii.gz")
    nib.save(nib.Nifti1Image(np.ones((32, 32), np.float32), np.eye(4)), root / "flat2d.nii.gz")
    nib.save(nib.Nifti1Image(np.ones((32, 32, 1), np.float32), np.eye(4)), root / "oneslice.nii.gz")
    for name in ("MR_small", "CT_small"):
        (root / name).mkdir()
        shutil.copy(get_testdata_file(f"{name}.dcm"), root / name / f"{name}.dcm")
    rng = np.random.default_rng(0)
    nib.save(nib.Nifti1Image(rng.random((48, 48, 48)).astype(np.float32), np.diag([2.0, 2.0, 2.0, 1.0])),
             root / "noise.nii.gz")
    ct = np.full((180, 130, 30), -1000.0, np.float32)  # a chest CT: air, a 360 x 240 mm body, lungs
    xx, yy = np.meshgrid(np.arange(180) - 89.5, np.arange(130) - 64.5, indexing="ij")
    ct[((xx / 85) ** 2 + (yy / 60) ** 2 <= 1)] = 40.0
    ct[(((np.abs(xx) - 40) / 30) ** 2 + (yy / 40) ** 2 <= 1)] = -800.0
    nib.save(nib.Nifti1Image(ct, np.diag([2.0, 2.0, 5.0, 1.0])), root / "chest_ct.nii.gz")
    # the wrong series of a study: a T2-weighted DICOM series and a BIDS T2w file; a BIDS T1w passes
    head = nib.load(str(phantoms["2mm"]["path"]))
    write_dicom_series(root / "t2_tse", np.rint(np.asarray(head.dataobj)).astype(np.int16), head.affine,
                       uid_entropy="t2", series_description="t2_tse_tra",
                       extra_attributes={"ScanningSequence": "SE", "EchoTime": "95", "RepetitionTime": "5000"})
    for name in ("sub-01_T2w", "sub-02_T1w"):
        shutil.copy(phantoms["2mm"]["path"], root / f"{name}.nii.gz")
    (root / "sub-02_T1w.json").write_text(json.dumps({"EchoTime": 0.00298, "RepetitionTime": 2.3,
                                                      "InversionTime": 0.9}))
    return root


def _check_bad_rows(rows: dict[str, dict]) -> None:
    assert rows["head"]["status"] == "ok" and rows["head"]["warnings"] == ""
    four_d = rows["series4d"]["reason"]
    assert rows["series4d"]["status"] == "failed" and "ScanLoadError" in four_d
    assert "series4d.nii.gz" in four_d and "2 volumes" in four_d and "(128, 96, 24)" in four_d
    assert "expected one 3D volume" in four_d
    assert rows["flat2d"]["status"] == "failed" and "2D image" in rows["flat2d"]["reason"]
    assert "expected a 3D volume" in rows["flat2d"]["reason"]
    one = rows["oneslice"]["reason"]
    assert "1 voxel(s) along axis 2" in one and "(32, 32, 1)" in one and "at least 5 voxels" in one
    mr = rows["MR_small"]["reason"]
    assert rows["MR_small"]["status"] == "failed" and "2D image" in mr and "MR_small" in mr and "(64, 64)" in mr
    assert "spacing (0.312, 0.312)" in mr
    assert rows["CT_small"]["status"] == "failed" and "modality 'CT'" in rows["CT_small"]["reason"]
    assert rows["noise"]["status"] == "ok" and "% of the field of view" in rows["noise"]["warnings"]
    t2 = rows["t2_tse"]["reason"]
    assert rows["t2_tse"]["status"] == "failed" and "a T2-weighted acquisition" in t2
    assert "TE 95 ms, TR 5000 ms" in t2 and "(DICOM header)" in t2 and "expected a T1-weighted scan" in t2
    bids = rows["sub-01_T2w"]["reason"]
    assert rows["sub-01_T2w"]["status"] == "failed" and "the BIDS file name ends in _T2w" in bids
    assert rows["sub-02_T1w"]["status"] == "ok" and rows["sub-02_T1w"]["warnings"] == ""
    assert rows["sub-02_T1w"]["weighting"] == "T1" and rows["head"]["weighting"] == "unknown"
    chest = rows["chest_ct"]["warnings"]
    assert rows["chest_ct"]["status"] == "ok" and "like air in a CT" in chest and "extends over" in chest


def test_segmentation_bad_inputs_fail_or_are_flagged_and_the_batch_goes_on(bad_inputs: Path, tmp_path: Path) -> None:
    summary = _segment(bad_inputs, tmp_path)
    assert summary["n_ok"] == 4 and summary["n_failed"] == 7, summary
    rows = _rows(tmp_path / "segmentation.csv")
    _check_bad_rows(rows)
    assert "predicted brain volume" in rows["chest_ct"]["warnings"]
    assert float(rows["head"]["brain_volume_ml"]) > 300


def test_classification_bad_inputs_fail_or_are_flagged_and_the_batch_goes_on(bad_inputs: Path, tmp_path: Path) -> None:
    summary = _classify(bad_inputs, tmp_path)
    assert summary["n_ok"] == 4 and summary["n_failed"] == 7, summary
    _check_bad_rows(_rows(tmp_path / "probabilities.csv"))


# ------------------------------------------------------------------------------------- the parts
def test_check_scan_messages_and_arguments() -> None:
    from monai.data import MetaTensor

    ok = MetaTensor(torch.zeros(1, 8, 8, 8), affine=torch.diag(torch.tensor([0.9, 0.9, 5.0, 1.0])))
    assert CheckScan()(ok) is ok
    thick = MetaTensor(torch.zeros(1, 8, 8, 8), affine=torch.diag(torch.tensor([1.0, 1.0, 12.0, 1.0])),
                       meta={"filename_or_obj": "/data/thick.nii.gz"})
    with pytest.raises(ScanLoadError, match=r"thick.nii.gz.*voxels of 12 mm.*at most 10 mm"):
        CheckScan()(thick)
    assert CheckScan(max_spacing_mm=None)(thick) is thick
    with pytest.raises(ValueError, match="min_size must be a positive int"):
        CheckScan(min_size=0)
    with pytest.raises(ValueError, match="max_spacing_mm"):
        CheckScan(max_spacing_mm=-1.0)
    with pytest.raises(ValueError, match="plausibility has unknown keys"):
        CheckScand("image", plausibility={"nonsense": 1})
    d = CheckScand("image")({"image": ok})
    assert d["scan_warnings"] and "foreground" in d["scan_warnings"][0]  # all-zero: "foreground" is everything


def test_scan_plausibility_of_a_head_noise_and_a_ct(phantoms: dict) -> None:
    head = load_scan(phantoms["1mm_las"]["path"])
    report = scan_plausibility(head)
    assert report["warnings"] == [] and 500 < report["foreground_ml"] < 8000
    noise = torch.rand(1, 40, 40, 40)
    assert any("field of view" in w for w in scan_plausibility(noise)["warnings"])
    with pytest.raises(ValueError, match="foreground_ml must be"):
        scan_plausibility(noise, foreground_ml=(10.0, 1.0))
    with pytest.raises(ValueError, match="one channel-first 3D volume"):
        scan_plausibility(torch.rand(2, 4, 4, 4))


def test_brain_mask_keeps_the_largest_component_and_fills_holes() -> None:
    labels = np.zeros((1, 20, 20, 20), np.float32)
    labels[0, 2:12, 2:12, 2:12] = 3
    labels[0, 5:8, 5:8, 5:8] = 0  # a hole
    labels[0, 4, 4, 4] = 1
    labels[0, 15:18, 15:18, 15:18] = 2  # a separate blob
    mask = BrainMask()(torch.as_tensor(labels))
    assert isinstance(mask, torch.Tensor) and mask.shape == labels.shape
    expected = np.zeros_like(labels)
    expected[0, 2:12, 2:12, 2:12] = 1
    np.testing.assert_array_equal(mask.numpy(), expected)
    only_wm = BrainMask(labels=[3], fill_holes=False)(labels)
    assert only_wm[0, 6, 6, 6] == 0 and only_wm[0, 4, 4, 4] == 0 and only_wm[0, 3, 3, 3] == 1
    assert BrainMask()(np.zeros((1, 4, 4, 4))).sum() == 0
    with pytest.raises(ValueError, match="connectivity"):
        BrainMask(connectivity=4)
    with pytest.raises(ValueError, match="one channel|channel-first label map"):
        BrainMask()(np.zeros((2, 4, 4, 4)))


def test_keep_brain_component_clears_islands_and_keeps_labels_and_holes() -> None:
    from monai.data import MetaTensor

    labels = np.zeros((1, 20, 20, 20), dtype=np.float32)
    labels[0, 2:12, 2:12, 2:12] = 3
    labels[0, 2:12, 2:12, 2:4] = 2  # grey matter touching white matter: one component
    labels[0, 5:8, 5:8, 5:8] = 0  # a hole stays a hole
    labels[0, 15:18, 15:18, 15:18] = 1  # an island of "CSF" in the scalp
    labels[0, 13, 13, 13] = 2  # touches the brain at a corner only (connectivity 1: separate)
    meta = MetaTensor(torch.as_tensor(labels), affine=torch.diag(torch.tensor([2.0, 2.0, 2.0, 1.0])))
    out = KeepBrainComponent()(meta)
    assert isinstance(out, MetaTensor) and out.shape == labels.shape
    torch.testing.assert_close(out.affine, meta.affine)
    expected = labels.copy()
    expected[0, 15:18, 15:18, 15:18] = 0
    expected[0, 13, 13, 13] = 0
    np.testing.assert_array_equal(out.numpy(), expected)
    assert set(np.unique(out.numpy())) == {0.0, 2.0, 3.0}
    # with the white matter alone as the brain, the other labels are left as they are
    only_wm = KeepBrainComponent(labels=[3])(labels)
    assert only_wm[0, 15, 15, 15] == 1 and only_wm[0, 3, 3, 3] == 2  # labels not in `labels` are left alone
    d = KeepBrainComponentd(keys="pred")({"pred": meta, "image": 1})
    np.testing.assert_array_equal(d["pred"].numpy(), expected)
    assert d["image"] == 1
    with pytest.raises(ValueError, match="channel-first label map"):
        KeepBrainComponent()(np.zeros((4, 4, 4, 4)))


def test_slices_to_source_mapping() -> None:
    net = np.diag([2.0, 2.0, 2.0, 1.0])
    values = np.arange(10, dtype=float) / 10
    same = slices_to_source(values, net, (8, 8, 10), net, (8, 8, 10))
    assert same["axis"] == 2 and same["values"] == pytest.approx(list(values))
    # 1 mm input slices: the network slice each lies in (both at a boundary)
    fine = np.diag([1.0, 1.0, 1.0, 1.0])
    out = slices_to_source(values, net, (8, 8, 10), fine, (16, 16, 20))
    assert out["values"][:4] == pytest.approx([0.0, 0.1, 0.1, 0.2])
    # 5 mm input slices: the largest of the network slices they overlap; outside: None
    thick = np.diag([1.0, 1.0, 5.0, 1.0])
    thick[2, 3] = 2.0
    out = slices_to_source(values, net, (8, 8, 10), thick, (16, 16, 6))
    assert out["values"][0] == pytest.approx(0.2) and out["values"][1] == pytest.approx(0.5)
    assert out["values"][-1] is None
    # a sagittal source: its slices run along the axis closest to the network's normal
    sag = np.array([[0.0, 0.0, 1.0, 0.0], [1.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0]])
    assert slices_to_source(values, net, (8, 8, 10), sag, (20, 20, 20))["axis"] == 1
    with pytest.raises(ValueError, match="one value per slice"):
        slices_to_source(values[:3], net, (8, 8, 10), net, (8, 8, 10))


def test_source_geometry_is_the_loaded_grid(phantoms: dict) -> None:
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(CLS_CONFIGS / "inference.json"))
    ph = phantoms["aniso_oblique"]
    img = parser.get_parsed_content("preprocessing")({"image": str(ph["path"])})["image"]
    affine, shape = source_geometry(img)
    assert shape == ph["shape"] and img.shape[1:] != ph["shape"]
    np.testing.assert_allclose(affine, ph["affine"], atol=1e-4)
