"""The dark-asymmetry rule (medmamba.inferers.dark_asymmetry) and the classification bundle deciding with two
lesion rules: the report columns and the OR decision (classify, ClassificationReport), both thresholds set with
the network's (calibrate) and read back (release_rule_threshold), the configs' switches."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from medmamba.apps.calibration import calibrate
from medmamba.apps.classification import classify
from medmamba.bundle import dark_asymmetry_rule, lesion_rule, release_rule_threshold
from medmamba.inferers import BrightOutlierRule, DarkAsymmetryRule, dark_asymmetry_score

from lesion_rule_stand_ins import network, parsed_config, preprocessing, recorded_chain, write_scan

BLOB = (slice(8, 11), slice(10, 13), slice(10, 13))  # left of the mirror plane (x = 15.5)
MIRROR_OF_BLOB = (slice(21, 24), slice(10, 13), slice(10, 13))


def _phantom(shape=(32, 24, 24), symmetric: bool = False):
    """A box brain of white matter with a 27-voxel non-white-matter blob (and its mirror image if ``symmetric``)."""
    brain = np.zeros(shape, dtype=bool)
    brain[2:-2, 2:-2, 2:-2] = True
    wm = brain.astype(np.float32)
    wm[BLOB] = 0.0
    if symmetric:
        wm[MIRROR_OF_BLOB] = 0.0
    return wm, brain


def test_score_counts_a_one_sided_dark_spot_the_network_marks() -> None:
    wm, brain = _phantom()
    contrast = np.full(brain.shape, -5.0, dtype=np.float32)
    assert dark_asymmetry_score(wm, brain, contrast) == 0  # the network does not mark it: gated out
    contrast[BLOB] = 6.0
    assert dark_asymmetry_score(wm, brain, contrast) == 27
    assert dark_asymmetry_score(wm, brain, contrast, min_log_odds=8.0) == 0
    wm_sym, _ = _phantom(symmetric=True)
    assert dark_asymmetry_score(wm_sym, brain, contrast) == 0  # the other hemisphere has it too: anatomy
    edge = np.full(brain.shape, -5.0, dtype=np.float32)
    wm_edge = wm.copy()
    wm_edge[2:4, 10:13, 10:13] = 0.0
    edge[2:4, 10:13, 10:13] = 6.0
    assert dark_asymmetry_score(wm_edge, brain, edge) == 0  # next to the brain's edge: outside the core


def test_score_errors_name_the_argument() -> None:
    wm, brain = _phantom()
    contrast = np.zeros(brain.shape, dtype=np.float32)
    with pytest.raises(ValueError, match=r"lesion_contrast \(31, 24, 24\) must be the same 3D grid"):
        dark_asymmetry_score(wm, brain, contrast[:-1])
    with pytest.raises(ValueError, match="solid must be an int >= 0, got -1"):
        dark_asymmetry_score(wm, brain, contrast, solid=-1)
    with pytest.raises(ValueError, match="core must be an int >= 0, got 1.5"):
        DarkAsymmetryRule(core=1.5)  # type: ignore[arg-type]


def _predictor(wm: np.ndarray, brain: np.ndarray, contrast: np.ndarray, polarity: str | None = None, plane=None):
    """A predictor chain whose last call kept ``brain``, tissue logits with white matter ``wm`` and ``contrast``."""
    return recorded_chain(brain, wm, torch.from_numpy(contrast), torch.from_numpy(contrast), polarity, plane)[0]


def test_rule_scores_the_last_call_as_the_function_does() -> None:
    wm, brain = _phantom()
    contrast = np.full(brain.shape, -5.0, dtype=np.float32)
    contrast[BLOB] = 6.0
    rule = DarkAsymmetryRule()
    assert rule.settings() == {"solid": 2, "core": 2, "min_log_odds": 4.0, "min_voxels": 8}
    assert rule(None, _predictor(wm, brain, contrast)) == 27 == dark_asymmetry_score(wm, brain, contrast)
    assert rule(None, _predictor(wm, brain, contrast, polarity="inverted")) is None  # set on T1 contrast only
    assert rule(None, _predictor(wm, brain, contrast, polarity="given")) == 27
    assert rule(None, _predictor(0 * wm, brain, contrast)) is None  # no white matter found
    with pytest.raises(ValueError, match="last call holds no volume 1"):
        rule(None, _predictor(wm, brain, contrast), index=1)

    class _NoReadout:
        inferer = _predictor(wm, brain, contrast).inferer.inferer

    with pytest.raises(ValueError, match=r"dark-asymmetry rule needs a mirror read-out.*--dark_asymmetry false"):
        rule(None, _NoReadout())


def test_rule_takes_the_plane_the_read_out_fitted() -> None:
    """With the aligned read-out the rule reuses its plane (fitted to the same core) instead of fitting it again."""
    wm, brain = _phantom()
    contrast = np.full(brain.shape, -5.0, dtype=np.float32)
    contrast[BLOB] = 6.0
    off_grid = (np.array([40.0, 0.0, 0.0]), np.array([1.0, 0.0, 0.0]))  # mirrors every voxel off the grid
    predictor = _predictor(wm, brain, contrast, plane=off_grid)
    record = DarkAsymmetryRule().record(predictor)
    assert record.plane_core == 2 and record.mirror_plane is off_grid
    assert DarkAsymmetryRule()(None, predictor) == 0  # no mirror location: the read-out's plane was used
    assert DarkAsymmetryRule(core=1)(None, predictor) == 27  # fitted to another core: the rule fits its own
    predictor.inferer.white_matter_channel = 2  # the read-out's plane fitted to another tissue map
    assert DarkAsymmetryRule().record(predictor).mirror_plane is None
    assert DarkAsymmetryRule()(None, predictor) == 27  # so the rule fits its own
    assert DarkAsymmetryRule()(None, _predictor(wm, brain, contrast)) == 27  # upright read-out: the rule fits its own


# ------------------------------------------------------------------ deciding with two rules
class _Bright(BrightOutlierRule):
    """Stand-in: the cluster is the scan's largest value."""

    def __call__(self, image, predictor, index=0):
        return int(torch.as_tensor(image).max())


class _Dark(DarkAsymmetryRule):
    """Stand-in: the cluster is minus the scan's smallest value (0 for a scan without negative values)."""

    def __call__(self, image, predictor, index=0):
        return max(0, -int(torch.as_tensor(image).min()))


def test_classify_decides_with_the_network_or_either_rule(tmp_path: Path) -> None:
    for name, value, peak, dip in (("net", 20.0, 0.0, 20.0), ("bright", 1.0, 30.0, 1.0), ("dark", 1.0, 1.0, -25.0),
                                   ("both", 1.0, 30.0, -25.0), ("none", 1.0, 5.0, -5.0)):
        write_scan(tmp_path / f"{name}.nii.gz", value, peak, dip)
    summary = classify(tmp_path, tmp_path / "out", network, preprocessing, threshold_log_odds=10.0,
                       write_slice_probabilities=False, rules=[_Bright(), _Dark()],
                       rule_thresholds={"bright_outlier": 9, "dark_asymmetry": 12})
    with open(summary["report"], newline="") as f:
        rows = {r["case_id"]: (r["label"], r["bright_outlier_voxels"], r["dark_asymmetry_voxels"], r["decided_by"])
                for r in csv.DictReader(f)}
    assert rows == {"net": ("1", "20", "0", "network and bright-outlier rule"), "bright": ("1", "30", "0", "bright-outlier rule"),
                    "dark": ("1", "1", "25", "dark-asymmetry rule"),
                    "both": ("1", "30", "25", "bright-outlier rule and dark-asymmetry rule"), "none": ("0", "5", "5", "")}
    only_bright = classify(tmp_path, tmp_path / "out2", network, preprocessing, threshold_log_odds=10.0,
                           write_slice_probabilities=False, rules=[_Bright(), _Dark()],
                           rule_thresholds={"bright_outlier": 9, "dark_asymmetry": None})  # the dark rule reported only
    with open(only_bright["report"], newline="") as f:
        assert {r["case_id"]: r["label"] for r in csv.DictReader(f)}["dark"] == "0"


def test_calibrate_sets_each_rules_threshold(tmp_path: Path) -> None:
    (tmp_path / "neg").mkdir()
    (tmp_path / "pos").mkdir()
    for i, (value, peak, dip) in enumerate([(3.0, 4.0, -7.0), (5.0, 12.0, 1.0), (9.5, 0.0, -2.0)]):
        write_scan(tmp_path / "neg" / f"n{i}.nii.gz", value, peak, dip)
    for i, (value, peak, dip) in enumerate([(12.0, 0.0, 1.0), (1.0, 40.0, 1.0), (1.0, 1.0, -30.0), (1.0, 11.0, -6.0)]):
        write_scan(tmp_path / "pos" / f"p{i}.nii.gz", value, peak, dip)
    doc = calibrate(tmp_path / "neg", tmp_path / "out", network, preprocessing, positive_path=tmp_path / "pos",
                    specificity=1.0, threshold_file=tmp_path / "t.json", rules=[_Bright(), _Dark()])
    bright, dark = doc["bright_outlier"], doc["dark_asymmetry"]
    # the dark rule's largest lesion-free cluster is 7, its threshold the rule's floor min_voxels = 8
    assert (bright["threshold_voxels"], dark["threshold_voxels"], dark["negative_max"], dark["n_negatives"]) == (12, 8, 7, 3)
    assert (bright["sensitivity_with_network"], dark["sensitivity_with_network"]) == (0.5, 0.5)
    assert doc["decision_sensitivity"] == 0.75  # the network, the bright rule, the dark rule; the fourth by none
    assert doc["inference_override"] == ("--threshold_log_odds 9.5001 --bright_outlier_threshold_voxels 12 "
                                         "--dark_asymmetry_threshold_voxels 8")
    written = json.loads((tmp_path / "t.json").read_text())
    assert written["dark_asymmetry"] == {**DarkAsymmetryRule().settings(), **{k: dark[k] for k in (
        "threshold_voxels", "negative_max", "negative_max_case", "n_negatives", "sensitivity_with_network")}}
    assert (dark["negative_max_case"], bright["negative_max_case"]) == ("n0", "n1")  # the scans that set them
    assert "decision_sensitivity" not in written  # calibration.json only
    assert release_rule_threshold(tmp_path / "t.json", _Dark()) == 8.0
    with pytest.raises(ValueError, match=r"dark-asymmetry rule threshold set with other settings \(solid=2 in the file, 3 asked"):
        release_rule_threshold(tmp_path / "t.json", DarkAsymmetryRule(solid=3))


def test_evaluation_report_decides_with_both_rules(tmp_path: Path) -> None:
    from types import SimpleNamespace

    from medmamba.handlers import ClassificationReport

    report = ClassificationReport(tmp_path, threshold=float(torch.sigmoid(torch.tensor(10.0, dtype=torch.float64))),
                                  rules=[_Bright(), _Dark()], rule_thresholds={"bright_outlier": 9, "dark_asymmetry": 12},
                                  inferer=object())
    engine = SimpleNamespace(state=SimpleNamespace(metrics={"volume_auc": 1.0}))
    report._on_started(engine)
    for case, label, peak, dip in (("a", 1, 0.0, -20.0), ("b", 1, 0.0, 0.0), ("c", 0, 5.0, -5.0), ("d", 0, 0.0, -13.0)):
        pred = torch.stack([torch.zeros(1, 4), torch.full((1, 4), 2.0)], dim=1)
        image = torch.zeros(1, 1, 4, 4, 4)
        image[0, 0, 0, 0, 0], image[0, 0, 1, 1, 1] = peak, dip
        engine.state.output = {"pred": pred, "label": torch.full((1, 4), label)}
        engine.state.batch = {"id": [case], "unnormalised_image": image}
        report._on_iteration(engine)
    report._on_completed(engine)
    with open(tmp_path / "predictions.csv", newline="") as f:
        rows = {r["id"]: (r["predicted"], r["dark_asymmetry_voxels"]) for r in csv.DictReader(f)}
    assert rows == {"a": ("1", "20"), "b": ("0", "0"), "c": ("0", "5"), "d": ("1", "13")}
    doc = json.loads((tmp_path / "metrics.json").read_text())
    assert (doc["decision_sensitivity"], doc["decision_specificity"]) == (0.5, 0.5)
    assert (doc["bright_outlier_threshold_voxels"], doc["dark_asymmetry_threshold_voxels"]) == (9.0, 12.0)


@pytest.mark.parametrize("config", ["inference.json", "evaluate.json"])
def test_bundle_configs_switch_each_rule(tmp_path: Path, config: str) -> None:
    from monai.transforms import CopyItemsd

    def parsed(**overrides):
        return parsed_config(config, tmp_path, **overrides)

    (tmp_path / "threshold.json").write_text(json.dumps({
        "threshold_log_odds": 12.0, "volume_readout": "mirror",
        "bright_outlier": {**BrightOutlierRule().settings(), "threshold_voxels": 9},
        "dark_asymmetry": {**DarkAsymmetryRule().settings(), "threshold_voxels": 13}}))
    parser = parsed()
    assert [r.name for r in parser.get_parsed_content("lesion_rules")] == ["bright_outlier", "dark_asymmetry"]
    assert parser.get_parsed_content("lesion_rule_thresholds") == {"bright_outlier": 9.0, "dark_asymmetry": 13.0}
    assert parser.get_parsed_content("dark_asymmetry_rule").settings() == DarkAsymmetryRule().settings()
    dark_only = parsed(bright_outlier=False)
    assert [r.name for r in dark_only.get_parsed_content("lesion_rules")] == ["dark_asymmetry"]
    assert any(isinstance(t, CopyItemsd) for t in dark_only.get_parsed_content("preprocessing").transforms)
    off = parsed(dark_asymmetry="false")
    assert off.get_parsed_content("dark_asymmetry_rule") is None
    assert off.get_parsed_content("lesion_rule_thresholds") == {"bright_outlier": 9.0, "dark_asymmetry": None}
    assert parsed(brain_extraction=False).get_parsed_content("lesion_rules") == []  # "auto": nothing to read
    (tmp_path / "threshold.json").write_text(json.dumps({"threshold_log_odds": 12.0, "volume_readout": "mirror"}))
    assert parsed().get_parsed_content("lesion_rule_thresholds") == {"bright_outlier": None, "dark_asymmetry": None}


def test_lesion_rule_switch() -> None:
    assert isinstance(dark_asymmetry_rule("auto", True, "mirror", solid=3), DarkAsymmetryRule)
    assert dark_asymmetry_rule("auto", True, "maximum") is None and dark_asymmetry_rule(False) is None
    with pytest.raises(TypeError, match="kind must be a LesionRule subclass"):
        lesion_rule(dict, True)
