"""Hostile folders: special files and folder-link loops next to good scans (issue: hostile input)."""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest

from medmamba.data import find_scans, load_scan, scan_dicom_folder
from medmamba.io.dicom_scan import DicomSkipWarning
from medmamba.io.nifti import write_nifti

from test_data_dicom_loading import write_shuffled_ct_series

pytestmark = pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="FIFOs and device links need a POSIX system")


def _within(seconds: float, call: Callable[[], Any]) -> Any:
    """``call()`` in a thread; fails the test (instead of hanging the suite) if it does not return in time."""
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            box["value"] = call()
        except BaseException as exc:  # noqa: BLE001 - re-raised below
            box["error"] = exc

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    worker.join(seconds)
    assert not worker.is_alive(), f"did not return within {seconds} s (blocked on a special file?)"
    if "error" in box:
        raise box["error"]
    return box["value"]


def _hostile_series(folder: Path) -> dict:
    info = write_shuffled_ct_series(folder, n=4)
    os.mkfifo(folder / "pipe.dcm")  # reading it would block for ever
    os.symlink("/dev/zero", folder / "zeros.dcm")  # reading it would never end
    os.symlink(folder / "missing.dcm", folder / "broken.dcm")
    return info


@pytest.mark.parametrize("recursive", [True, False])
def test_special_files_in_a_series_folder_are_skipped_with_their_reason(tmp_path: Path, recursive: bool) -> None:
    _hostile_series(tmp_path / "series")
    with pytest.warns(DicomSkipWarning):
        scan = _within(20, lambda: scan_dicom_folder(tmp_path / "series", recursive=recursive))
    assert [len(s.instances) for s in scan.series] == [4]
    reasons = {p.name: r for p, r in scan.skipped}
    assert reasons["pipe.dcm"] == "not a regular file (FIFO)"
    assert reasons["zeros.dcm"] == "not a regular file (device)"
    assert reasons["broken.dcm"].startswith("unreadable (FileNotFoundError")


def test_a_series_beside_special_files_loads(tmp_path: Path) -> None:
    info = _hostile_series(tmp_path / "series")
    with pytest.warns(DicomSkipWarning):
        img = _within(30, lambda: load_scan(tmp_path / "series"))
    assert img.shape == (1, 128, 128, 4)
    np.testing.assert_allclose(img.affine.numpy(), info["affine"], atol=1e-4)


def test_folder_link_loops_are_entered_once(tmp_path: Path) -> None:
    root = tmp_path / "in"
    (root / "a").mkdir(parents=True)
    write_nifti(root / "a" / "scan.nii.gz", np.zeros((4, 4, 3), np.float32), np.eye(4))
    os.symlink(root, root / "a" / "up")  # a loop back to the input root
    os.symlink(root / "a", root / "b")  # a second name for a folder already listed
    write_shuffled_ct_series(root / "c" / "series", n=3)
    os.symlink(root / "c", root / "c" / "series_loop")
    cases = _within(20, lambda: find_scans(root))
    assert [c["id"] for c in cases] == ["a_scan", "c_series"]
    with pytest.warns(DicomSkipWarning, match="FIFO"):
        os.mkfifo(root / "c" / "series" / "pipe")
        scan = _within(20, lambda: scan_dicom_folder(root / "c", recursive=True))
    assert [len(s.instances) for s in scan.series] == [3]  # the looped folder's files are not read twice


def _edit(folder: Path, index: int, change: Callable[[Any], None]) -> str:
    import pydicom

    path = sorted(folder.glob("*.dcm"))[index]
    ds = pydicom.dcmread(path)
    change(ds)
    ds.save_as(path)
    return path.name


@pytest.mark.parametrize(
    ("change", "match"),
    [
        (lambda ds: setattr(ds, "PixelSpacing", [0.9, 0.9]), r"PixelSpacing differs within the series: .* in {name}"),
        (lambda ds: delattr(ds, "PixelSpacing"), r"PixelSpacing is missing or invalid in 1 of 4 files \(e.g. {name}\)"),
        (lambda ds: setattr(ds, "ImagePositionPatient", ["nan", 0.0, 0.0]), r"ImagePositionPatient is not three finite numbers in {name}"),
        (lambda ds: delattr(ds, "ImagePositionPatient"), r"missing in 1 of 4 files \(e.g. {name}\) while the others have them"),
    ],
)
def test_per_slice_geometry_that_disagrees_is_refused_naming_the_file(tmp_path: Path, change: Any, match: str) -> None:
    import re

    from medmamba.data import ScanLoadError

    write_shuffled_ct_series(tmp_path / "s", n=4)
    name = _edit(tmp_path / "s", 2, change)
    with pytest.raises(ScanLoadError, match=match.format(name=re.escape(name))):
        load_scan(tmp_path / "s")


def test_a_few_kilobytes_declaring_billions_of_voxels_are_refused_before_decoding(tmp_path: Path) -> None:
    import pydicom
    from pydicom.data import get_testdata_file

    from medmamba.data import ScanLoadError

    frames = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    frames.NumberOfFrames = 2**31 - 1  # a 39 KB file claiming 2**31 - 1 frames
    frames.save_as(tmp_path / "frames.dcm")
    with pytest.raises(ScanLoadError, match=r"declares 2147483647 frame\(s\) of 128 x 128 x 1 = \d+ voxels, more than the limit"):
        _within(20, lambda: load_scan(tmp_path / "frames.dcm"))
    truncated = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    truncated.NumberOfFrames = 40  # 40 frames declared, one stored
    truncated.save_as(tmp_path / "short.dcm")
    with pytest.raises(ScanLoadError, match=r"declares 40 frame\(s\) .* but the file holds \d+ bytes"):
        load_scan(tmp_path / "short.dcm")
    rle = pydicom.dcmread(get_testdata_file("MR_small_RLE.dcm"))
    rle.Rows = rle.Columns = 65535  # a compressed file asking for 65535 x 65535 pixels
    rle.save_as(tmp_path / "rle.dcm")
    with pytest.raises(ScanLoadError, match=r"65535 x 65535 x 1 = 4294836225 voxels, more than the limit"):
        _within(20, lambda: load_scan(tmp_path / "rle.dcm"))


@pytest.mark.parametrize("exists", [False, True])
def test_a_dicom_series_write_that_fails_part_way_leaves_no_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, exists: bool) -> None:
    import medmamba.io.dicom_series as series_module
    from medmamba.io.dicom_series import write_dicom_series

    out = tmp_path / "series"
    if exists:
        out.mkdir()
        (out / "keep.txt").write_text("a user's file")
    real = series_module.dataset_to_bytes
    calls = {"n": 0}

    def disk_full_at_the_third(ds):  # noqa: ANN001, ANN202
        calls["n"] += 1
        if calls["n"] == 3:
            raise OSError(28, "No space left on device")
        return real(ds)

    monkeypatch.setattr(series_module, "dataset_to_bytes", disk_full_at_the_third)
    stored = np.arange(8 * 8 * 5, dtype=np.int16).reshape(8, 8, 5)
    with pytest.raises(OSError, match="No space left"):
        write_dicom_series(out, stored, np.eye(4))
    assert sorted(p.name for p in tmp_path.iterdir()) == (["series"] if exists else [])  # no hidden staging left
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"] if exists else not out.exists()
    monkeypatch.setattr(series_module, "dataset_to_bytes", real)
    paths = write_dicom_series(out, stored, np.eye(4))
    assert len(paths) == 5 and all(p.parent == out and p.is_file() for p in paths)
    assert load_scan(out).shape == (1, 8, 8, 5)


def test_a_failed_case_leaves_none_of_its_outputs_and_keeps_an_earlier_runs(tmp_path: Path) -> None:
    import time

    from medmamba.data import run_batch

    def process(case):  # noqa: ANN001, ANN202
        (case.out_dir / "seg.nii.gz").write_bytes(b"written before the failure")
        if case.case_id != "good":
            raise RuntimeError("failed after its first output")
        return {}

    out = tmp_path / "out"
    (out / "rerun").mkdir(parents=True)
    (out / "rerun" / "earlier.json").write_text("{}")  # a file of an earlier run of that case
    old = time.time_ns() - 10**10
    os.utime(out / "rerun" / "earlier.json", ns=(old, old))
    report = run_batch([{"image": "a", "id": "good"}, {"image": "b", "id": "new"}, {"image": "c", "id": "rerun"}], process, out)
    assert report.n_ok == 1 and sorted(report.failed) == ["new", "rerun"]
    assert (out / "good" / "seg.nii.gz").is_file()
    assert not (out / "new").exists()  # created by the failed case: removed whole
    assert sorted(p.name for p in (out / "rerun").iterdir()) == ["earlier.json"]  # its partial output removed


def test_a_nifti_with_a_singular_affine_is_refused_with_the_reason(tmp_path: Path) -> None:
    import nibabel as nib

    from medmamba.data import ScanLoadError

    header = nib.Nifti1Header()  # a zero third voxel size in the sform (no qform), written as is
    header.set_data_shape((4, 4, 3))
    header.set_data_dtype(np.float32)
    header["srow_x"], header["srow_y"], header["srow_z"] = [2, 0, 0, 0], [0, 2, 0, 0], [0, 0, 0, 0]
    header["sform_code"], header["qform_code"] = 1, 0
    nib.save(nib.Nifti1Image(np.ones((4, 4, 3), np.float32), None, header=header), tmp_path / "flat.nii.gz")
    with pytest.raises(ScanLoadError, match=r"the affine is singular \(voxel sizes \[2\.0, 2\.0, 0\.0\]"):
        load_scan(tmp_path / "flat.nii.gz")
    good = nib.Nifti1Image(np.ones((4, 4, 3), np.float32), np.diag([2.0, 2.0, 2.0, 1.0]))
    nib.save(good, tmp_path / "good.nii.gz")
    assert load_scan(tmp_path / "good.nii.gz").shape == (1, 4, 4, 3)


def test_a_single_corrupt_file_is_named_once(tmp_path: Path) -> None:
    import pydicom
    from pydicom.data import get_testdata_file

    from medmamba.data import ScanLoadError

    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    ds.PixelData = ds.PixelData[:100]  # truncated pixel data
    ds.save_as(tmp_path / "one.dcm")
    with pytest.raises(ScanLoadError) as info:
        load_scan(tmp_path / "one.dcm")
    assert "one.dcm" in str(info.value) and "one.dcm/one.dcm" not in str(info.value)


def _gz_image(path: Path) -> bytes:
    data = np.random.default_rng(0).random((20, 16, 12)).astype(np.float32)
    return write_nifti(path, data, np.diag([2.0, 2.0, 2.0, 1.0])).read_bytes()


@pytest.mark.parametrize(
    "damage, match",
    [
        (lambda b: b[:-8], "ends before its end-of-stream marker and trailer"),  # trailer cut: voxels complete
        (lambda b: b[:-6] + bytes([b[-6] ^ 1]) + b[-5:], "incorrect data check"),  # CRC-32 damaged
        (lambda b: b[:-2] + bytes([b[-2] ^ 1]) + b[-1:], "incorrect length check"),  # ISIZE damaged
        (lambda b: b + b"junk", "bytes after the gzip stream that are not a gzip member"),
        (lambda b: b"", "the file is empty"),
    ],
)
def test_a_damaged_gzip_nifti_is_refused_even_when_its_voxels_are_complete(tmp_path: Path, damage: Any, match: str) -> None:
    from medmamba.data import ScanLoadError

    raw = _gz_image(tmp_path / "good.nii.gz")
    (tmp_path / "bad.nii.gz").write_bytes(damage(raw))
    with pytest.raises(ScanLoadError, match=match) as info:
        load_scan(tmp_path / "bad.nii.gz")
    assert "bad.nii.gz" in str(info.value)
    assert load_scan(tmp_path / "good.nii.gz").shape == (1, 20, 16, 12)


def test_gzip_check_accepts_several_members_and_zero_padding(tmp_path: Path) -> None:
    import gzip

    from medmamba.data.gzip_integrity import check_gzip_integrity

    (tmp_path / "two.gz").write_bytes(gzip.compress(b"a" * 3_000_000) + gzip.compress(b"bc") + b"\0" * 64)
    assert check_gzip_integrity(tmp_path / "two.gz") == 3_000_002


def test_a_hostile_folder_processes_the_good_scans_and_reports_the_rest_in_bounded_time_and_memory(tmp_path: Path) -> None:
    """The issue's whole case: special files, a loop, corrupt, bomb and mixed files beside good scans."""
    import json
    import subprocess
    import sys

    import pydicom
    from pydicom.data import get_testdata_file

    from test_data_dicom_stacks import _add_localizer

    root = tmp_path / "in"
    good = write_shuffled_ct_series(root / "good_series", n=4)
    write_nifti(root / "good.nii.gz", np.zeros((8, 8, 6), np.float32) + 1.0, np.eye(4))
    os.mkfifo(root / "pipe.nii")
    os.symlink("/dev/zero", root / "zeros.dcm")
    os.symlink(root, root / "loop")
    (root / "corrupt.nii.gz").write_bytes((root / "good.nii.gz").read_bytes()[:40])
    bomb = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    bomb.NumberOfFrames = 2**31 - 1
    bomb.save_as(root / "bomb.dcm")
    write_shuffled_ct_series(root / "mixed_series", n=4, series_uid=str(good["uid"]) + ".9")
    _add_localizer(root / "mixed_series", str(good["uid"]) + ".9")
    proc = subprocess.run(
        [sys.executable, str(Path(__file__).parent / "hostile_batch_worker.py"), str(root), str(tmp_path / "out"),
         str(2 * 1024**3)],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert sorted(result["ids"]) == ["bomb", "corrupt", "good", "good_series", "mixed_series"]  # no pipe, device, loop
    assert result["n_ok"] == 2
    reasons = result["failed"]
    assert sorted(reasons) == ["bomb", "corrupt", "mixed_series"]
    assert "more than the limit" in reasons["bomb"]
    assert "on_mixed='largest'" in reasons["mixed_series"]
    assert "gzip stream ends before its end-of-stream marker" in reasons["corrupt"]
    assert all(r.startswith("ScanLoadError: ") and "<inputs>/" in r for r in reasons.values())  # input root redacted
