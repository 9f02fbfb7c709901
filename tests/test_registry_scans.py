"""The registry-scan checks (real whole-head T1s from npm / PyPI packages): format, resampling, sets.

Nothing is downloaded here: the BrainBrowser format is checked on a small volume written by the
test, the check sets on a synthetic head.
"""

from __future__ import annotations

import gzip
import json

import numpy as np
import pytest

from medmamba.data.registry_scans import (
    REGISTRY_CHECKS,
    fetch_registry_scans,
    make_registry_check,
    make_registry_scan_checks,
    read_brainbrowser_volume,
    to_isotropic_2mm,
)


def _write_brainbrowser(folder, data_zyx: np.ndarray, header_extra: dict) -> object:
    header = {"order": ["zspace", "yspace", "xspace"]}
    for axis, n in zip(header["order"], data_zyx.shape):
        header[axis] = {"space_length": n, **header_extra[axis]}
    path = folder / "vol.mnc.header.gz"
    path.write_bytes(gzip.compress(json.dumps(header).encode()))
    (folder / "vol.mnc.raw.gz").write_bytes(gzip.compress(data_zyx.astype(np.uint8).tobytes()))
    return path


def test_brainbrowser_volumes_are_read_in_xyz_order_with_their_world_affine(tmp_path) -> None:
    data = np.arange(4 * 3 * 2, dtype=np.uint8).reshape(4, 3, 2)  # (z, y, x), z slowest
    extra = {
        "xspace": {"step": 1.0, "start": -10.0, "direction_cosines": [1, 0, 0]},
        "yspace": {"step": 2.0, "start": 5.0, "direction_cosines": [0, 1, 0]},
        "zspace": {"step": 1.5, "start": 0.0, "direction_cosines": [0, 0, 1]},
    }
    volume, affine = read_brainbrowser_volume(_write_brainbrowser(tmp_path, data, extra))
    assert volume.shape == (2, 3, 4) and volume.dtype == np.float32
    assert volume[1, 2, 3] == data[3, 2, 1]
    np.testing.assert_allclose(affine @ [1, 2, 3, 1], [-10 + 1, 5 + 4, 4.5, 1])
    (tmp_path / "vol.mnc.raw.gz").write_bytes(gzip.compress(bytes(5)))
    with pytest.raises(ValueError, match="5 voxels, the header's shape"):
        read_brainbrowser_volume(tmp_path / "vol.mnc.header.gz")


def test_resampling_to_2mm_keeps_the_field_of_view() -> None:
    affine = np.diag([1.0, 1.0, 1.5, 1.0])
    affine[:3, 3] = [-40, -50, -30]
    volume = np.ones((80, 100, 60), np.float32)
    mask = np.zeros_like(volume, bool)
    mask[20:60, 30:70, 10:50] = True
    out, out_mask, out_affine = to_isotropic_2mm(volume, mask, affine)
    assert out.shape == (40, 50, 45)
    np.testing.assert_allclose(np.sqrt((out_affine[:3, :3] ** 2).sum(0)), [2.0, 2.0, 2.0])
    # the outer corner of the first voxel stays where it was
    np.testing.assert_allclose(out_affine @ [-0.5, -0.5, -0.5, 1], affine @ [-0.5, -0.5, -0.5, 1])
    assert abs(out_mask.sum() * 8 - mask.sum() * 1.5) / (mask.sum() * 1.5) < 0.05


def test_check_sets_hold_the_scan_and_planted_copies_with_mixture_tissue(tmp_path) -> None:
    import nibabel as nib

    shape = (64, 64, 64)
    z, y, x = np.indices(shape)
    r = np.sqrt((x - 32) ** 2 + (y - 32) ** 2 + (z - 32) ** 2)
    volume = np.where(r < 14, 100.0, np.where(r < 20, 60.0, np.where(r < 23, 20.0, np.where(r < 27, 80.0, 0.0))))
    volume = (volume + np.random.default_rng(0).normal(0, 2, shape)).astype(np.float32)
    brain = r < 23
    affine = np.diag([1.0, 1.0, 1.0, 1.0])
    path = make_registry_scan_checks(tmp_path, "toy", volume, brain, affine, head=False, seed=3)
    items = json.loads(path.read_text())["test"]
    assert [i["id"] for i in items] == ["real_toy", "real_toy_planted0_hypo", "real_toy_planted1_hyper",
                                        "real_toy_planted2_hypo", "real_toy_planted3_hyper"]
    assert [i["has_lesion"] for i in items] == [0, 1, 1, 1, 1]
    root = path.parent
    tissue = np.asarray(nib.load(str(root / items[0]["label"])).dataobj)
    assert (tissue[r < 13] == 3).all() and (tissue[(r > 15) & (r < 19)] == 2).all() and (tissue[r > 24] == 0).all()
    stripped = np.asarray(nib.load(str(root / items[0]["image"])).dataobj)
    assert (stripped[r > 24] == 0).all()  # skull-stripped by the mask
    assert path.parent.name == "real_toy_brain_native"
    with pytest.raises(ValueError, match="resolution must be 'native' or '2mm'"):
        make_registry_scan_checks(tmp_path, "toy", volume, brain, affine, resolution="1mm")


def test_unknown_scans_and_settings_are_refused(tmp_path) -> None:
    assert sorted(REGISTRY_CHECKS)[:2] == ["real_bb1_brain_2mm", "real_bb1_brain_native"] and len(REGISTRY_CHECKS) == 12
    with pytest.raises(ValueError, match="unknown scans \\['mricron'\\]"):
        fetch_registry_scans(tmp_path, ["mricron"])
    with pytest.raises(ValueError, match="is not a registry-scan check"):
        make_registry_check(tmp_path, "real_bb1_head_1mm", tmp_path)
