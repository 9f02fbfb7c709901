"""Hostile folders: special files and folder-link loops next to good scans (issue: hostile input)."""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest

from medmamba.data import find_scans, load_scan, scan_dicom_folder
from medmamba.data.dicom_scan import DicomSkipWarning
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
