"""benchmarks/refinement_sweep.py: refinement settings scored on stored, unrefined probabilities."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))


def _write_set(root: Path) -> tuple[Path, Path]:
    """One 1 mm case: a ball brain (CSF rim, grey ribbon with CSF clefts, white core) in air, its
    truth, and blurred probabilities as a 2 mm network would give them, in the bundle's layout."""
    shape = (40, 40, 36)
    idx = np.indices(shape, dtype=np.float32)
    c = (np.asarray(shape, np.float32) - 1) / 2
    r = np.sqrt(sum(((idx[d] - c[d]) / (c[d] - 2)) ** 2 for d in range(3)))
    labels = np.zeros(shape, np.uint8)
    labels[r < 1.0], labels[r < 0.9], labels[r < 0.6] = 1, 2, 3
    angle = np.arctan2(idx[1] - c[1], idx[0] - c[0])
    labels[(np.abs(np.sin(6 * angle)) < 0.12) & (labels == 2)] = 1
    image = np.array([0.0, 0.25, 0.55, 0.85], np.float32)[labels]
    image += 0.03 * np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    onehot = F.one_hot(torch.from_numpy(labels.astype(np.int64)), 4).permute(3, 0, 1, 2).float()
    coarse = 0.9 * F.avg_pool3d(onehot[None], 2) + 0.025
    prob = F.interpolate(coarse, size=shape, mode="trilinear", align_corners=False)[0]
    prob = (prob / prob.sum(0, keepdim=True)).numpy()
    set_dir, pred = root / "data" / "phantom_1mm", root / "unrefined"
    (set_dir / "images").mkdir(parents=True)
    (set_dir / "labels").mkdir()
    (pred / "phantom_1mm" / "case0").mkdir(parents=True)
    affine = np.eye(4)
    nib.save(nib.Nifti1Image(image, affine), set_dir / "images" / "case0.nii.gz")
    nib.save(nib.Nifti1Image(labels, affine), set_dir / "labels" / "case0_tissue.nii.gz")
    nib.save(nib.Nifti1Image(np.moveaxis(prob, 0, -1), affine), pred / "phantom_1mm" / "case0" / "case0_prob.nii.gz")
    datalist = {"test": [{"id": "case0", "image": "images/case0.nii.gz", "label": "labels/case0_tissue.nii.gz"}]}
    (set_dir / "datalist.json").write_text(json.dumps(datalist))
    return set_dir, pred


def test_the_sweep_scores_each_setting_against_the_truth(tmp_path, capsys):
    from refinement_sweep import main

    set_dir, pred = _write_set(tmp_path)
    out = tmp_path / "rows.jsonl"
    variants = {"none": None, "refined": {"iterations": 4}, "thick": {"iterations": 4}}
    assert main(["--sets", str(set_dir), "--predictions", str(pred), "--variants", json.dumps(variants),
                 "--opening-mm", "0", "--out", str(out)]) == 0
    rows = {r["variant"]: r for r in map(json.loads, out.read_text().splitlines())}
    assert set(rows) == {"none", "refined", "thick"} and rows["none"]["case"] == "case0"
    # the clefts a 2 mm prior blurs away come back with the refinement; the brain stays the prior's
    assert rows["none"]["dice"]["1"] < 0.9 < rows["refined"]["dice"]["1"]
    assert rows["refined"]["mean_dice"] > rows["none"]["mean_dice"] + 0.03
    assert rows["refined"]["brain_volume_ratio"] == pytest.approx(rows["none"]["brain_volume_ratio"])
    assert "| phantom_1mm | 1 |" in capsys.readouterr().out
    # voxels thicker than --max-voxel-mm are left unrefined, as the bundle does
    main(["--sets", str(set_dir), "--predictions", str(pred), "--variants", json.dumps({"thick": {}}),
          "--opening-mm", "0", "--max-voxel-mm", "0.5", "--out", str(out)])
    assert json.loads(out.read_text())["mean_dice"] == pytest.approx(rows["none"]["mean_dice"])


def test_missing_probabilities_name_the_command_that_writes_them(tmp_path):
    from refinement_sweep import main

    set_dir, pred = _write_set(tmp_path)
    with pytest.raises(ValueError, match="--write_probabilities true --refine_tissue false"):
        main(["--sets", str(set_dir), "--predictions", str(tmp_path / "elsewhere"), "--variants", '{"none": null}'])
    with pytest.raises(ValueError, match="--sets must be shift-suite set folders with a datalist.json; none in"):
        main(["--sets", str(tmp_path), "--predictions", str(pred), "--variants", '{"none": null}'])
    with pytest.raises(ValueError, match="--variants must be a JSON object"):
        main(["--sets", str(set_dir), "--predictions", str(pred), "--variants", "[1]"])


def test_a_setting_can_close_the_networks_brain_before_the_refinement(tmp_path):
    """0.6.13: ``brain_gap_closing_mm`` in a setting runs CloseBrainGaps first, as the bundle does."""
    from refinement_sweep import main

    set_dir, pred = _write_set(tmp_path)
    path = pred / "phantom_1mm" / "case0" / "case0_prob.nii.gz"
    prob = np.asarray(nib.load(path).dataobj).copy()
    prob[:30, :, 17:19] = np.array([1.0, 0.0, 0.0, 0.0], np.float32)  # two slices of most of the brain dropped
    nib.save(nib.Nifti1Image(prob, np.eye(4)), path)
    out = tmp_path / "rows.jsonl"
    variants = {"refined": {"iterations": 4}, "closed": {"iterations": 4, "brain_gap_closing_mm": 4.0}}
    assert main(["--sets", str(set_dir), "--predictions", str(pred), "--variants", json.dumps(variants),
                 "--opening-mm", "0", "--out", str(out)]) == 0
    rows = {r["variant"]: r for r in map(json.loads, out.read_text().splitlines())}
    assert rows["refined"]["brain_volume_ratio"] < 0.92  # the band is missing (the intact prior: 0.977)
    assert rows["closed"]["brain_volume_ratio"] > 0.97  # and given back to the tissues
    assert rows["closed"]["mean_dice"] > rows["refined"]["mean_dice"] + 0.03
