"""The bright-outlier rule (medmamba.inferers.bright_outlier) and how the classification bundle decides with it:
the report column and the OR decision (classify, ClassificationReport), its threshold set with the network's
(calibrate, rule_threshold) and read back (release_rule_threshold)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from medmamba.apps.calibration import calibrate, rule_threshold
from medmamba.apps.classification import classify
from medmamba.bundle import bright_outlier_rule, release_rule_threshold
from medmamba.inferers import BrightOutlierRule, bright_outlier_score, local_white_matter_ratio

from lesion_rule_stand_ins import network, parsed_config, preprocessing, recorded_chain, write_scan



def _phantom(shape=(24, 24, 24)):
    """A brain box of white matter (100) with a grey-matter slab (60); white-matter probability 1 / 0."""
    brain = np.zeros(shape, dtype=bool)
    brain[2:-2, 2:-2, 2:-2] = True
    image = np.where(brain, 100.0, 0.0).astype(np.float32)
    image[2:-2, 2:-2, 2:5] = 60.0
    wm = (image == 100.0).astype(np.float32)
    return image, wm, brain


def test_ratio_is_one_in_white_matter_and_the_contrast_elsewhere() -> None:
    image, wm, brain = _phantom()
    ratio = local_white_matter_ratio(image, wm > 0.5, sigma=3.0)
    assert ratio[12, 12, 12] == pytest.approx(1.0, abs=1e-4)
    assert ratio[12, 12, 3] == pytest.approx(0.6, abs=1e-3)  # grey matter over the white matter next to it
    # a smooth multiplicative bias cancels: the level follows it
    bias = np.linspace(0.7, 1.3, image.shape[0], dtype=np.float32)[:, None, None]
    assert local_white_matter_ratio(image * bias, wm > 0.5, sigma=3.0)[12, 12, 12] == pytest.approx(1.0, abs=0.01)


def test_ratio_errors_name_the_argument() -> None:
    image, wm, _ = _phantom()
    with pytest.raises(ValueError, match="same 3D grid"):
        local_white_matter_ratio(image, wm[:-1] > 0.5)
    with pytest.raises(ValueError, match="white_matter is empty"):
        local_white_matter_ratio(image, np.zeros_like(wm, dtype=bool))
    with pytest.raises(ValueError, match="sigma must be > 0, got 0"):
        local_white_matter_ratio(image, wm > 0.5, sigma=0)


def test_score_is_the_size_of_the_bright_cluster_inside_the_core() -> None:
    image, wm, brain = _phantom()
    assert bright_outlier_score(image, wm, brain, smooth=0.0) == 0  # lesion-free: nothing above 1.25x
    lesion = image.copy()
    lesion[10:13, 10:13, 10:13] = 150.0  # 27 voxels at 1.5x white matter
    lesion[14, 14, 14] = 150.0  # a single voxel, its own cluster
    assert bright_outlier_score(lesion, wm, brain, smooth=0.0) == 27
    assert bright_outlier_score(lesion, wm, brain, ratio=1.6, smooth=0.0) == 0  # not bright enough for 1.6x
    edge = image.copy()
    edge[2:4, 10:13, 10:13] = 150.0  # bright voxels within 2 voxels of the brain's edge: left out
    assert bright_outlier_score(edge, wm, brain, smooth=0.0, core=2) == 0
    assert bright_outlier_score(edge, wm, brain, smooth=0.0, core=0) == 18


def test_gated_score_counts_only_clusters_where_the_network_agrees() -> None:
    image, wm, brain = _phantom()
    lesion = image.copy()
    lesion[10:13, 10:13, 10:13] = 150.0  # 27 voxels
    lesion[15:17, 15:17, 15:17] = 150.0  # 8 voxels
    log_odds = np.full(image.shape, -5.0, dtype=np.float32)
    assert bright_outlier_score(lesion, wm, brain, smooth=0.0, lesion_log_odds=log_odds) == 0
    log_odds[16, 16, 16] = 9.0  # the network marks the small cluster only
    assert bright_outlier_score(lesion, wm, brain, smooth=0.0, lesion_log_odds=log_odds) == 8
    assert bright_outlier_score(lesion, wm, brain, smooth=0.0, lesion_log_odds=log_odds, min_log_odds=10.0) == 0
    log_odds[11, 11, 11] = 12.0
    assert bright_outlier_score(lesion, wm, brain, smooth=0.0, lesion_log_odds=log_odds) == 27
    with pytest.raises(ValueError, match="lesion_log_odds .* must be on the image's grid"):
        bright_outlier_score(lesion, wm, brain, lesion_log_odds=log_odds[:-1])


def test_score_errors_name_the_argument() -> None:
    image, wm, brain = _phantom()
    with pytest.raises(ValueError, match="must be the same 3D grid"):
        bright_outlier_score(image, wm[:-1], brain)
    with pytest.raises(ValueError, match="ratio must be > 1"):
        bright_outlier_score(image, wm, brain, ratio=1.0)
    with pytest.raises(ValueError, match="core must be an int >= 0, got -1"):
        bright_outlier_score(image, wm, brain, core=-1)
    with pytest.raises(ValueError, match="smooth must be >= 0, got -0.5"):
        bright_outlier_score(image, wm, brain, smooth=-0.5)
    with pytest.raises(ValueError, match="white_matter_channel must be an int >= 0, got -1"):
        BrightOutlierRule(white_matter_channel=-1)


# ------------------------------------------------------------------ the rule read from a classifier's last call
def _chain(image_shape=(24, 24, 24), polarity: str | None = None):
    """A predictor chain (mirror read-out -> [polarity check ->] skull stripping) whose last call is the phantom's:
    the stripping inferer holds the brain, its extractor the tissue logits, the read-out the lesion map."""
    image, wm, brain = _phantom(image_shape)
    predictor, readout, stripping = recorded_chain(brain, wm, torch.full(image.shape, -5.0), torch.full(image.shape, -5.0),
                                                   polarity)
    return image, wm, brain, predictor, readout, stripping


def test_rule_scores_the_last_call_as_the_function_does() -> None:
    image, wm, brain, predictor, readout, stripping = _chain()
    lesion = image.copy()
    lesion[10:13, 10:13, 10:13] = 150.0
    rule = BrightOutlierRule(smooth=0.0)
    assert rule(lesion, predictor) == 0  # the network does not mark it: gated out
    readout.last_lesion_maps[0][11, 11, 11] = 9.0
    assert rule(torch.from_numpy(lesion)[None], predictor) == 27  # (1, H, W, D) as the preprocessing keeps it
    assert rule(lesion, predictor) == bright_outlier_score(lesion, wm, brain, smooth=0.0,
                                                          lesion_log_odds=readout.last_lesion_maps[0].numpy())
    stripping.extractor.last_tissue_logits[0, 3] = -10.0  # no white matter found: no level, the rule does not apply
    assert rule(lesion, predictor) is None
    stripping.last_brain_voxels = [10]  # a brain too small to strip to: nor does it
    assert rule(lesion, predictor) is None
    with pytest.raises(ValueError, match=r"image \(23, 24, 24\) must be on the grid the classifier ran on"):
        BrightOutlierRule()(lesion[:-1], _chain()[3])
    with pytest.raises(ValueError, match="last call holds no volume 1"):
        rule(lesion, predictor, index=1)


def test_rule_does_not_apply_to_an_inverted_contrast_and_needs_its_chain() -> None:
    image, _, _, predictor, readout, _ = _chain(polarity="inverted")
    readout.last_lesion_maps[0][:] = 20.0
    assert BrightOutlierRule()(image, predictor) is None  # a T2-like scan: CSF is the brightest tissue
    image, _, _, given, readout, _ = _chain(polarity="given")
    readout.last_lesion_maps[0][:] = 20.0
    assert BrightOutlierRule()(image, given) == 0  # as given: scored (nothing bright in the phantom)

    class _NoReadout:
        inferer = given.inferer.inferer  # the polarity check without the mirror read-out

    with pytest.raises(ValueError, match=r"needs a mirror read-out \(--volume_readout aligned_mirror or mirror\).*--bright_outlier false"):
        BrightOutlierRule()(image, _NoReadout())


# ------------------------------------------------------------------ thresholds
def test_rule_threshold_keeps_the_wanted_share_of_negatives_uncalled() -> None:
    assert rule_threshold([0, 9, 3, 0], 1.0) == 9  # called above it: every lesion-free volume stays uncalled
    assert rule_threshold(list(range(10)), 0.9) == 8  # 9 of 10 at or below
    with pytest.raises(ValueError, match="at least one lesion-free cluster size"):
        rule_threshold([], 1.0)
    with pytest.raises(ValueError, match=r"specificity must be in \(0, 1\], got 0"):
        rule_threshold([1], 0)


def test_release_threshold_of_the_rule(tmp_path: Path) -> None:
    path = tmp_path / "threshold.json"
    rule = BrightOutlierRule()
    assert release_rule_threshold(path, rule) is None  # no file: the rule does not decide
    path.write_text(json.dumps({"threshold_log_odds": 13.9, "volume_readout": "mirror"}))  # a release before the rule
    assert release_rule_threshold(path, rule) is None
    path.write_text(json.dumps({"threshold_log_odds": 13.9, "bright_outlier": {**rule.settings(), "threshold_voxels": 9}}))
    assert release_rule_threshold(path, rule) == 9.0
    assert release_rule_threshold(path, None) is None  # switched off
    assert release_rule_threshold(path, rule, threshold_voxels=20) == 20.0  # the user's wins
    assert release_rule_threshold(path, rule, threshold_log_odds=12.0) is None  # a site's network threshold alone
    with pytest.raises(ValueError, match=r"other settings \(ratio=1.25 in the file, 1.3 asked for\)"):
        release_rule_threshold(path, BrightOutlierRule(ratio=1.3))
    path.write_text(json.dumps({"bright_outlier": {**rule.settings(), "threshold_voxels": None}}))
    with pytest.raises(ValueError, match="must hold a finite bright_outlier 'threshold_voxels', got None"):
        release_rule_threshold(path, rule)
    assert bright_outlier_rule("false") is None and isinstance(bright_outlier_rule(True, ratio=1.3), BrightOutlierRule)
    # "auto": on where the bundle runs what the rule reads (brain extraction, the mirror read-out)
    assert isinstance(bright_outlier_rule("auto", "true", "mirror"), BrightOutlierRule)
    assert bright_outlier_rule("auto", "false", "mirror") is None and bright_outlier_rule("auto", True, "maximum") is None


# ------------------------------------------------------------------ the decision: classify and calibrate
class _FixedRule(BrightOutlierRule):
    """A rule whose cluster is the scan's largest value (the stand-in predictor's score is its mean)."""

    def __call__(self, image, predictor, index=0):
        top = int(torch.as_tensor(image).max())
        return None if top < 0 else top


def test_classify_calls_a_lesion_where_the_network_or_the_rule_is_above_its_threshold(tmp_path: Path) -> None:
    for name, value, peak in (("net", 20.0, 0.0), ("rule", 1.0, 30.0), ("neither", 1.0, 5.0), ("inverted", -1.0, -1.0)):
        write_scan(tmp_path / f"{name}.nii.gz", value, peak)
    summary = classify(tmp_path, tmp_path / "out", network, preprocessing, threshold_log_odds=10.0,
                       write_slice_probabilities=False, rules=[_FixedRule()], rule_thresholds={"bright_outlier": 9})
    with open(summary["report"], newline="") as f:
        rows = {r["case_id"]: r for r in csv.DictReader(f)}
    assert {k: (r["label"], r["bright_outlier_voxels"], r["decided_by"]) for k, r in rows.items()} == {
        "net": ("1", "20", "network and bright-outlier rule"), "rule": ("1", "30", "bright-outlier rule"),
        "neither": ("0", "5", ""), "inverted": ("0", "", "")}
    reported = classify(tmp_path, tmp_path / "out2", network, preprocessing, threshold_log_odds=10.0,
                        write_slice_probabilities=False, rules=[_FixedRule()])  # no threshold: reported only
    with open(reported["report"], newline="") as f:
        row = {r["case_id"]: r for r in csv.DictReader(f)}["rule"]
    assert row["label"] == "0" and row["bright_outlier_voxels"] == "30" and "decided_by" not in row
    with pytest.raises(ValueError, match="gives bright_outlier=9, but no bright_outlier rule is scored"):
        classify(tmp_path, tmp_path / "x", network, preprocessing, rule_thresholds={"bright_outlier": 9})
    with pytest.raises(TypeError, match="rules must hold LesionRule objects, got function"):
        classify(tmp_path, tmp_path / "x", network, preprocessing, rules=[lambda *a: 0])
    with pytest.raises(ValueError, match="rules must have different names"):
        classify(tmp_path, tmp_path / "x", network, preprocessing, rules=[_FixedRule(), _FixedRule()])
    with pytest.raises(ValueError, match=r"rule_thresholds\['bright_outlier'\] must be a finite number of voxels or None, got nan"):
        classify(tmp_path, tmp_path / "x", network, preprocessing, rules=[_FixedRule()],
                 rule_thresholds={"bright_outlier": float("nan")})
    failed = classify(tmp_path, tmp_path / "y", network, lambda d: {"image": preprocessing(d)["image"]},
                      rules=[_FixedRule()], write_slice_probabilities=False)
    assert failed["n_failed"] == 4 and "before its intensity normalisation under unnormalised_key" in failed["failed"]["rule"]


def test_calibrate_sets_the_rules_threshold_with_the_networks(tmp_path: Path) -> None:
    (tmp_path / "neg").mkdir()
    (tmp_path / "pos").mkdir()
    for i, (value, peak) in enumerate([(3.0, 4.0), (5.0, 12.0), (9.5, 0.0)]):
        write_scan(tmp_path / "neg" / f"n{i}.nii.gz", value, peak)
    for i, (value, peak) in enumerate([(12.0, 0.0), (1.0, 40.0), (1.0, 11.0)]):
        write_scan(tmp_path / "pos" / f"p{i}.nii.gz", value, peak)
    doc = calibrate(tmp_path / "neg", tmp_path / "out", network, preprocessing, positive_path=tmp_path / "pos",
                    specificity=1.0, threshold_file=tmp_path / "t.json", rules=[_FixedRule()])
    rule = doc["bright_outlier"]
    assert (rule["threshold_voxels"], rule["negative_max"], rule["n_negatives"]) == (12, 12, 3)
    # which lesion-free scan set each threshold: n1 the rule's (cluster 12), n2 the network's (9.5)
    assert (rule["negative_max_case"], doc["negative_max_case"]) == ("n1", "n2")
    assert rule["sensitivity_with_network"] == pytest.approx(2 / 3)  # 12 by the network, 40 by the rule; 11 by neither
    assert doc["sensitivity"] == pytest.approx(1 / 3)  # the network alone
    assert doc["inference_override"] == "--threshold_log_odds 9.5001 --bright_outlier_threshold_voxels 12"
    written = json.loads((tmp_path / "t.json").read_text())
    assert written["bright_outlier"] == rule
    assert release_rule_threshold(tmp_path / "t.json", _FixedRule()) == 12.0


@pytest.mark.parametrize("config", ["inference.json", "evaluate.json"])
def test_bundle_configs_decide_with_the_rule_of_the_run(tmp_path: Path, config: str) -> None:

    def parsed(**overrides):
        return parsed_config(config, tmp_path, **overrides)

    rule = BrightOutlierRule()
    (tmp_path / "threshold.json").write_text(json.dumps(
        {"threshold_log_odds": 12.0, "volume_readout": "mirror", "bright_outlier": {**rule.settings(), "threshold_voxels": 9}}))
    parser = parsed()
    assert parser.get_parsed_content("bright_outlier_threshold") == 9.0
    assert parser.get_parsed_content("bright_outlier_rule").settings() == rule.settings()  # the settings it was set with
    from monai.transforms import CopyItemsd

    transforms = [type(t).__name__ for t in parser.get_parsed_content("preprocessing").transforms]
    copy = transforms.index("CopyItemsd")
    assert transforms[copy + 1] == "MRNormalized"  # kept right before the normalisation
    assert list(parser.get_parsed_content("preprocessing").transforms[copy].names) == ["unnormalised_image"]
    assert parsed(brain_extraction=False).get_parsed_content("bright_outlier_rule") is None  # "auto"
    off = parsed(bright_outlier=False, dark_asymmetry=False)
    assert off.get_parsed_content("bright_outlier_rule") is None and off.get_parsed_content("bright_outlier_threshold") is None
    assert not any(isinstance(t, CopyItemsd) for t in off.get_parsed_content("preprocessing").transforms)


def test_evaluation_report_decides_as_inference_does(tmp_path: Path) -> None:
    from types import SimpleNamespace

    from medmamba.handlers import ClassificationReport

    report = ClassificationReport(tmp_path, threshold=float(torch.sigmoid(torch.tensor(10.0, dtype=torch.float64))),
                                  rules=[_FixedRule()], rule_thresholds={"bright_outlier": 9}, inferer=object())
    engine = SimpleNamespace(state=SimpleNamespace(metrics={"volume_auc": 1.0}))
    report._on_started(engine)
    # (case, slice log-odds, lesion present, the unnormalised image's peak = the stand-in rule's cluster)
    for case, z, label, peak in (("a", 20.0, 1, 0.0), ("b", 2.0, 1, 30.0), ("c", 2.0, 0, 5.0), ("d", 2.0, 0, 12.0)):
        pred = torch.stack([torch.zeros(1, 4), torch.full((1, 4), z)], dim=1)  # (B, K, S) logits
        image = torch.zeros(1, 1, 4, 4, 4)
        image[0, 0, 0, 0, 0] = peak
        engine.state.output = {"pred": pred, "label": torch.full((1, 4), label)}
        engine.state.batch = {"id": [case], "unnormalised_image": image}
        report._on_iteration(engine)
    report._on_completed(engine)
    with open(tmp_path / "predictions.csv", newline="") as f:
        rows = {r["id"]: (r["predicted"], r["bright_outlier_voxels"]) for r in csv.DictReader(f)}
    assert rows == {"a": ("1", "0"), "b": ("1", "30"), "c": ("0", "5"), "d": ("1", "12")}
    doc = json.loads((tmp_path / "metrics.json").read_text())
    assert (doc["decision_sensitivity"], doc["decision_specificity"], doc["bright_outlier_threshold_voxels"]) == (1.0, 0.5, 9.0)
    assert doc["volume_auc"] == 1.0  # the network's metrics are kept as the evaluator computed them
    with pytest.raises(ValueError, match="rules need inferer"):
        ClassificationReport(tmp_path, rules=[_FixedRule()])
    engine.state.batch = {"id": ["e"]}
    with pytest.raises(KeyError, match="unnormalised volumes under 'unnormalised_image'"):
        report._on_iteration(engine)
