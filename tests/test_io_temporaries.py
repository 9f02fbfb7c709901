"""Temporaries carry their owner; the next run removes those a killed process left (issue: hostile input)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from medmamba.data import run_batch
from medmamba.io import atomic_write_bytes, write_dicom_series
from medmamba.io.temporaries import owner_tag, remove_stale_temporaries, temporary_prefix


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid  # exited and reaped: no process with this id (until the system reuses it)


def _host() -> str:
    return owner_tag().rsplit("-", 1)[0]


def test_temporary_names_carry_host_and_pid() -> None:
    assert temporary_prefix("scan.nii.gz") == f".scan.nii.gz.{_host()}-{os.getpid()}-"


def test_only_temporaries_of_dead_processes_on_this_host_are_removed(tmp_path: Path) -> None:
    dead = _dead_pid()
    stale_file = tmp_path / f".seg.nii.gz.{_host()}-{dead}-a1b2c3d4.tmp.nii.gz"
    stale_dir = tmp_path / "case" / f".dicom.{_host()}-{dead}-0123456789ab.tmp"
    live = tmp_path / f".seg.nii.gz.{_host()}-{os.getpid()}-a1b2c3d4.tmp.nii.gz"
    foreign = tmp_path / f".seg.nii.gz.otherhost-{dead}-a1b2c3d4.tmp.nii.gz"
    user_files = [tmp_path / "seg.nii.gz", tmp_path / ".hidden.tmp", tmp_path / "case" / "IM1.dcm"]
    stale_dir.mkdir(parents=True)
    (stale_dir / "IM00001.dcm").write_bytes(b"x" * 100)
    for p in (stale_file, live, foreign, *user_files):
        p.write_bytes(b"x")
    assert remove_stale_temporaries(tmp_path) == [stale_file]
    assert sorted(remove_stale_temporaries(tmp_path, recursive=True)) == [stale_dir]
    assert not stale_file.exists() and not stale_dir.exists()
    assert all(p.exists() for p in (live, foreign, *user_files))
    assert remove_stale_temporaries(tmp_path / "missing") == []


def test_a_batch_removes_what_a_killed_earlier_run_left(tmp_path: Path) -> None:
    out = tmp_path / "out"
    leftover = out / "case-a" / f".case-a_seg.nii.gz.{_host()}-{_dead_pid()}-zz99zz99.tmp.nii.gz"
    leftover.parent.mkdir(parents=True)
    leftover.write_bytes(b"\0" * 1000)
    (tmp_path / "a.nii").write_bytes(b"")
    run_batch([tmp_path / "a.nii"], lambda case: {"n": 1}, out)
    assert not leftover.exists()


def test_writers_use_owned_temporaries(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[str] = []
    real_replace = os.replace

    def spy(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
        seen.append(Path(src).name)
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", spy)
    atomic_write_bytes(tmp_path / "f.bin", b"abc")
    write_dicom_series(tmp_path / "series", np.zeros((4, 4, 2), np.int16), np.eye(4))
    prefix = f".{{}}.{owner_tag()}-"
    assert seen[0].startswith(prefix.format("f.bin")) and seen[0].endswith(".tmp.bin")
    assert seen[-1].startswith(prefix.format("series")) and seen[-1].endswith(".tmp")
