"""The shift suite's evaluation sets and scoring (a fast slice of benchmarks/shift_suite.py)."""

from __future__ import annotations

import json
import sys
from dataclasses import replace
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from medmamba.data.shift_suite import SHIFT_SETTINGS, make_shift_set, plant_ellipsoid_lesions, thick_slices
from medmamba.data.synthetic import load_mni_template, tissue_labels

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))


@pytest.fixture(scope="module")
def template():
    return load_mni_template(2, downsample=2)  # 4 mm: fast


def _set(tmp: Path, name: str, template, **changes) -> tuple[dict, Path]:
    setting = replace(SHIFT_SETTINGS[name], resolution_mm=4, **changes)
    path = make_shift_set(tmp, setting, 2, seed=1, template=template)
    return json.loads(path.read_text()), path.parent


def test_every_setting_is_described_and_the_template_resolution_is_checked(template, tmp_path: Path) -> None:
    assert {"t1_head_1mm", "t1_head_5mm_axial", "t2_head_2mm", "t1_stripped_2mm"} <= set(SHIFT_SETTINGS)
    assert all(s.description for s in SHIFT_SETTINGS.values())
    with pytest.raises(ValueError, match="needs 2 mm"):
        make_shift_set(tmp_path, "t1_head_2mm", 1, template=template)
    with pytest.raises(ValueError, match="not a shift setting"):
        make_shift_set(tmp_path, "nope", 1, template=template)


def test_thick_slice_set_has_the_slice_spacing_and_matching_truth(template, tmp_path: Path) -> None:
    data, root = _set(tmp_path, "t1_head_5mm_axial", template, slice_mm=10.0)
    item = data["test"][0]
    img, lab = nib.load(root / item["image"]), nib.load(root / item["label"])
    assert img.header.get_zooms()[:3] == pytest.approx((4.0, 4.0, 10.0))
    assert img.shape == lab.shape
    np.testing.assert_allclose(img.affine, lab.affine)
    assert set(np.unique(np.asarray(lab.dataobj))) <= {0, 1, 2, 3}


def test_t2_set_inverts_the_contrast_and_stripped_set_has_no_head(template, tmp_path: Path) -> None:
    data, root = _set(tmp_path, "t2_head_2mm", template)
    item = data["test"][0]
    img, lab = np.asarray(nib.load(root / item["image"]).dataobj), np.asarray(nib.load(root / item["label"]).dataobj)
    assert np.median(img[lab == 1]) > np.median(img[lab == 2]) > np.median(img[lab == 3])  # CSF > GM > WM
    data, root = _set(tmp_path, "t1_stripped_2mm", template)
    item = data["test"][0]
    img, lab = np.asarray(nib.load(root / item["image"]).dataobj), np.asarray(nib.load(root / item["label"]).dataobj)
    assert np.median(img[lab == 3]) > np.median(img[lab == 1])  # T1
    assert np.mean(img[lab == 0] > 0.2 * np.median(img[lab == 3])) < 0.05  # no head around the brain
    assert [i["has_lesion"] for i in data["test"]] == [1, 0]


def test_thick_slices_rejects_thinner_slices() -> None:
    with pytest.raises(ValueError, match="must exceed the current slice spacing"):
        thick_slices(np.zeros((4, 4, 4)), np.diag([2.0, 2.0, 2.0, 1.0]), 1.0)


def test_planted_lesions_are_ellipsoids_in_white_matter(template) -> None:
    tissue = tissue_labels(template.gm, template.wm, template.mask)
    image = template.t1 * 1000.0
    out, mask = plant_ellipsoid_lesions(image, tissue, np.random.default_rng(0), 4.0, n_lesions=1, radius_mm=(6.0, 6.0), factor=0.5)
    assert mask.sum() > 0 and np.all(tissue[mask > 0] > 0)
    wm_level = np.median(image[tissue == 3])
    assert abs(np.median(out[mask > 0]) - 0.5 * wm_level) < 0.15 * wm_level
    np.testing.assert_array_equal(out[mask == 0][np.abs(out[mask == 0] - image[mask == 0]) > 1e-3].size < 0.05 * out.size, True)


def test_planted_lesions_follow_where_and_clip_to(template) -> None:
    from scipy import ndimage

    from medmamba.data.synthetic import white_matter_rim

    tissue = tissue_labels(template.gm, template.wm, template.mask)
    image = template.t1 * 1000.0
    left = np.zeros(tissue.shape, bool)
    left[: tissue.shape[0] // 2] = True
    rim = white_matter_rim(tissue)
    for seed in range(3):
        _, mask = plant_ellipsoid_lesions(image, tissue, np.random.default_rng(seed), 4.0, n_lesions=1,
                                          radius_mm=(8.0, 16.0), where=left, clip_to=rim)
        centre = np.round(ndimage.center_of_mass(mask)).astype(int)
        assert mask.sum() > 0 and np.all(rim[mask > 0])  # clipped to the white matter and its rim
        assert centre[0] < tissue.shape[0] // 2 + 2  # centred in 'where' (the blob's mass near its centre)
    # without clip_to, the same draw reaches past the rim for some lesion of these radii
    spills = [plant_ellipsoid_lesions(image, tissue, np.random.default_rng(s), 4.0, n_lesions=1, radius_mm=(8.0, 16.0))[1]
              for s in range(3)]
    assert any(np.any(m.astype(bool) & ~rim) for m in spills)
    with pytest.raises(ValueError, match="inside 'where'"):
        plant_ellipsoid_lesions(image, tissue, np.random.default_rng(0), 4.0, where=np.zeros(tissue.shape, bool))
    with pytest.raises(ValueError, match="clip_to has shape"):
        plant_ellipsoid_lesions(image, tissue, np.random.default_rng(0), 4.0, clip_to=rim[:-1])


def test_scoring_reads_bundle_outputs(tmp_path: Path) -> None:
    from shift_suite import score_classification, score_segmentation

    truth = np.zeros((6, 6, 6), np.uint8)
    truth[1:5, 1:5, 1:5] = 3
    truth[2:4, 2:4, 2:4] = 2
    affine = np.eye(4)
    (tmp_path / "labels").mkdir()
    nib.save(nib.Nifti1Image(truth, affine), tmp_path / "labels" / "a_tissue.nii.gz")
    (tmp_path / "out" / "a").mkdir(parents=True)
    nib.save(nib.Nifti1Image(truth, affine), tmp_path / "out" / "a" / "a_seg.nii.gz")
    datalist = {"test": [{"id": "a", "label": "labels/a_tissue.nii.gz", "has_lesion": 0}]}
    seg = score_segmentation(datalist, tmp_path, tmp_path / "out")
    assert seg["n_cases"] == 1 and seg["mean_dice"].value == 1.0 and seg["within_10pct"] == 1.0
    assert seg["brain_dice"].value == 1.0
    grown = truth.copy()
    grown[0, 1:5, 1:5] = 1  # 16 voxels of "CSF" outside the true brain (64 voxels)
    nib.save(nib.Nifti1Image(grown, affine), tmp_path / "out" / "a" / "a_seg.nii.gz")
    seg = score_segmentation(datalist, tmp_path, tmp_path / "out")
    assert seg["brain_dice"].value == pytest.approx(2 * 64 / (80 + 64))
    assert seg["brain_volume_ratio"].value == pytest.approx(80 / 64)
    # the rim of "CSF" outside the true brain costs the plain Dice (CSF 0, grey and white matter 1), not the
    # Dice inside the true brain
    assert seg["mean_dice"].value == pytest.approx(2 / 3) and seg["mean_dice_in_brain"].value == 1.0
    inner = grown.copy()
    inner[2, 2, 2] = 3  # a grey-matter voxel called white matter, inside the brain
    nib.save(nib.Nifti1Image(inner, affine), tmp_path / "out" / "a" / "a_seg.nii.gz")
    seg = score_segmentation(datalist, tmp_path, tmp_path / "out")
    assert seg["mean_dice_in_brain"].value == pytest.approx((2 * 7 / 15 + 2 * 56 / 113) / 2)
    rows = [{"case_id": "p1", "lesion_probability": 0.9}, {"case_id": "p2", "lesion_probability": 0.2},
            {"case_id": "n1", "lesion_probability": 0.6}, {"case_id": "n2", "lesion_probability": 0.1}]
    (tmp_path / "cls").mkdir()
    (tmp_path / "cls" / "probabilities.json").write_text(json.dumps(rows))
    datalist = {"test": [{"id": i, "has_lesion": int(i.startswith("p"))} for i in ("p1", "p2", "n1", "n2")]}
    cls = score_classification(datalist, tmp_path / "cls")
    assert cls["auc"].value == 0.75 and cls["false_positive_rate"].value == 0.5 and cls["miss_rate"].value == 0.5


def test_scoring_uses_the_bundle_decisions(tmp_path: Path) -> None:
    """A bundle with a calibrated threshold writes its own labels; the false-positive rate counts those."""
    from shift_suite import score_classification

    rows = [{"case_id": "p1", "lesion_probability": 0.9, "label": 1}, {"case_id": "n1", "lesion_probability": 0.6, "label": 0},
            {"case_id": "n2", "lesion_probability": 0.1, "label": 0}]
    (tmp_path / "probabilities.json").write_text(json.dumps({"cases": rows}))
    datalist = {"test": [{"id": i, "has_lesion": int(i.startswith("p"))} for i in ("p1", "n1", "n2")]}
    assert score_classification(datalist, tmp_path)["false_positive_rate"].value == 0.0
    assert score_classification(datalist, tmp_path, threshold=0.5)["false_positive_rate"].value == 0.5


def test_scoring_ranks_by_log_odds_where_probabilities_tie_at_one(tmp_path: Path) -> None:
    from shift_suite import score_classification

    rows = [{"case_id": "p1", "lesion_probability": 1.0, "lesion_log_odds": 25.0, "label": 1},
            {"case_id": "n1", "lesion_probability": 1.0, "lesion_log_odds": 18.0, "label": 1},
            {"case_id": "n2", "lesion_probability": 0.5, "lesion_log_odds": 0.0, "label": 0}]
    (tmp_path / "probabilities.json").write_text(json.dumps({"cases": rows}))
    datalist = {"test": [{"id": i, "has_lesion": int(i.startswith("p"))} for i in ("p1", "n1", "n2")]}
    res = score_classification(datalist, tmp_path)
    assert res["auc"].value == 1.0  # by the probabilities p1 and n1 would tie (AUC 0.75)
    assert res["per_case"] == {"p1": 25.0, "n1": 18.0, "n2": 0.0}
    assert res["false_positive_rate"].value == 0.5  # the bundle's own labels


def test_lesion_placement_probe_explains_each_lesion_by_the_classes_of_its_voxels(tmp_path: Path, capsys) -> None:
    from lesion_placement_probe import DENSE_CLASSES, explain_cases, print_explanations

    free = np.zeros((8, 8, 6), dtype=np.float32)
    shape = free.shape

    class FakeReader:  # stands in for LesionMapReader: a fixed input, classes and lesion map per image
        def __init__(self) -> None:
            self.images = {"lesion_free": free}
            called_csf = free.copy()
            called_csf[2:4, 2:4, 2] = -1.2  # 4 darker voxels (the lesion), 0.2 below the change: not lesion
            called_csf[5, 5, 2] = -0.2
            self.images["near0"] = called_csf
            self.images["far0"] = free.copy()
            self.images["far0"][1:3, 1:3, 3] = 2.0  # 4 voxels
            self.images["odd"] = np.zeros((8, 8, 5), dtype=np.float32)  # another grid: not comparable

        def dense(self, path: Path):
            x = self.images[path.name.split(".")[0]]
            classes = np.full(x.shape, 3)
            lesion_map = np.full(x.shape, -5.0, dtype=np.float32)
            if path.name.startswith("near0"):
                classes[2:4, 2:4, 2] = 1
                classes[2, 2, 2] = 2
                lesion_map[2:4, 2:4, 2] = [[0.5, 1.5], [-1.0, 2.5]]
                lesion_map[0, 0, 0] = 30.0  # outside the lesion: not the lesion's own
            if path.name.startswith("far0"):
                classes[1:3, 1:3, 3] = 4
                lesion_map[1:3, 1:3, 3] = 20.0
            if path.name.startswith("lesion_free"):
                classes[4, 4, 1] = 1  # one CSF voxel, two voxels from the peak
                lesion_map[4, 2, 1] = 9.0
            return x, classes, lesion_map

    records = [{"id": "lesion_free", "placement": "-", "scan": "s", "resolution": "2mm", "log_odds": 9.5},
               {"id": "near0", "placement": "near", "factor": 0.45, "scan": "s", "resolution": "2mm", "log_odds": 3.0},
               {"id": "far0", "placement": "far", "factor": 1.45, "scan": "s", "resolution": "2mm", "log_odds": 21.0},
               {"id": "odd", "placement": "any", "factor": 0.45, "scan": "s", "resolution": "2mm", "log_odds": 1.0}]
    explain_cases(FakeReader(), tmp_path, records, change=0.5)
    assert records[1]["lesion_max_log_odds"] == 2.5  # the lesion's own voxels only
    assert records[1]["called"] == {"background": 0.0, "csf": 0.75, "gm": 0.25, "wm": 0.0, "lesion": 0.0}
    assert records[2]["lesion_max_log_odds"] == 20.0 and records[2]["called"]["lesion"] == 1.0
    assert records[3]["lesion_max_log_odds"] is None and records[3]["called"] is None
    assert "called" not in records[0] and tuple(records[1]["called"]) == DENSE_CLASSES
    # the lesion-free image's own peak: voxel, place in the brain's box (every voxel is brain here), class, CSF distance
    assert records[0]["peak"] == {"log_odds": 9.0, "voxel": [4, 2, 1], "box_fraction": [0.57, 0.29, 0.2],
                                  "called": "wm", "csf_voxels": 2.0}
    print_explanations(records, threshold=12.0)
    out = capsys.readouterr().out
    assert "| s | 2mm | near0 | 0.45 | no | 3.00 | 2.50 | 0 / 75 / 25 / 0 / 0 |" in out
    assert "missed: 1 lesions, median share of voxels called background / csf / gm / wm / lesion: 0 / 75 / 25 / 0 / 0 %" in out
    assert "found: 1 lesions" in out and "at or above the threshold: 1 of 1" in out
    assert "| s | 2mm | 9.00 | (4, 2, 1) | (0.57, 0.29, 0.2) | wm | 2.0 |" in out


def test_lesion_free_peak_is_placed_in_the_brains_box() -> None:
    from lesion_placement_probe import lesion_free_peak

    classes = np.zeros((10, 12, 8), dtype=np.int64)
    classes[2:8, 1:11, 2:7] = 3  # the brain's box: x 2-7, y 1-10, z 2-6
    lesion_map = np.full(classes.shape, -4.0, dtype=np.float32)
    lesion_map[5, 3, 3] = 14.5  # near the midline, posterior, low: where a fourth ventricle lies
    peak = lesion_free_peak(classes, lesion_map)
    assert peak == {"log_odds": 14.5, "voxel": [5, 3, 3], "box_fraction": [0.6, 0.22, 0.25], "called": "wm", "csf_voxels": None}
    with pytest.raises(ValueError, match=r"classes \(10, 12, 8\) and lesion_map \(10, 12\) must be the same 3D grid"):
        lesion_free_peak(classes, lesion_map[..., 0])


def test_lesion_placement_probe_places_near_and_far_from_csf(template, tmp_path: Path, monkeypatch) -> None:
    import medmamba.data.registry_scans as registry
    from lesion_placement_probe import make_probe_set

    from medmamba.io.nifti import write_nifti

    # a stand-in "registry scan": the 4 mm template as a NIfTI file, its mask as the cached ROBEX mask
    cache = tmp_path / "cache"
    write_nifti(cache / "tpl.nii.gz", (template.t1 * 1000.0).astype(np.float32), template.affine, dtype=np.float32, xform_code=1)
    write_nifti(cache / "tpl_robex_mask.nii.gz", (template.mask > 0.5).astype(np.uint8), template.affine, dtype=np.uint8, xform_code=1)
    monkeypatch.setattr(registry, "fetch_registry_scans", lambda c, names: {n: Path(c) / f"{n}.nii.gz" for n in names})
    records = make_probe_set(tmp_path / "hypo", "tpl", "native", cache, per_bin=2, seed=1, near_mm=8.0, far_mm=14.0)
    assert [r["id"] for r in records] == ["lesion_free", "near0", "near1", "far0", "far1", "any0", "any1"]
    assert all((tmp_path / "hypo" / "images" / f"{r['id']}.nii.gz").is_file() for r in records)
    near = [r["csf_mm"] for r in records if r["placement"] == "near"]
    far = [r["csf_mm"] for r in records if r["placement"] == "far"]
    assert max(near) < min(far)  # the lesions' voxels lie nearer the CSF when their centres do
    assert all(r["factor"] == 0.45 for r in records[1:])
    free = nib.load(str(tmp_path / "hypo" / "images" / "lesion_free.nii.gz")).get_fdata()
    planted = nib.load(str(tmp_path / "hypo" / "images" / "near0.nii.gz")).get_fdata()
    assert (planted < free - 1.0).sum() >= records[1]["voxels"] // 2 and not (planted > free + 1.0).any()  # darker only
    default = make_probe_set(tmp_path / "dd", "tpl", "native", cache, per_bin=3, seed=1, near_mm=8.0, far_mm=14.0, kind="default-data")
    assert {r["placement"] for r in default[1:]} == {"any"} and len(default) >= 3
    assert all(0.35 <= r["factor"] <= 0.6 or 1.3 <= r["factor"] <= 1.6 for r in default[1:])
