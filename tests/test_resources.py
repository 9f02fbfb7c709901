"""What a process may use (:mod:`medmamba.resources`): cores from affinity and cgroup quotas, the
thread count and its settings, data-loader workers, the run's log line."""

from __future__ import annotations

import logging
import os
import platform
from pathlib import Path

import pytest
import torch

import medmamba.resources as resources
from medmamba.resources import (
    cgroup_cpu_limit,
    configure_threads,
    dataloader_workers,
    resolve_threads,
    run_setup_line,
    thread_env,
    usable_cores,
)


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


def _v2(root: Path, cpu_max: str | None, own: str = "/", nested: dict[str, str] | None = None) -> Path:
    """A cgroup v2 tree at ``root`` (``cpu.max`` at the top, optional nested ones) and its /proc/self/cgroup."""
    _write(root / "cgroup.controllers", "cpu memory\n")
    if cpu_max is not None:
        _write(root / "cpu.max", cpu_max + "\n")
    for rel, text in (nested or {}).items():
        _write(root / rel / "cpu.max", text + "\n")
    self_cgroup = root.parent / "self_cgroup"
    _write(self_cgroup, f"0::{own}\n")
    return self_cgroup


@pytest.fixture(autouse=True)
def _no_torchrun(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)


# -------------------------------------------------------------------------------------------- cgroups
@pytest.mark.parametrize(("cpu_max", "limit"), [("max 100000", None), ("150000 100000", 1.5), ("200000 100000", 2.0),
                                                ("50000 100000", 0.5), ("garbage", None)])
def test_cgroup_v2_cpu_max(tmp_path: Path, cpu_max: str, limit: float | None) -> None:
    self_cgroup = _v2(tmp_path / "cg", cpu_max)
    assert cgroup_cpu_limit(tmp_path / "cg", self_cgroup) == limit


def test_cgroup_v2_the_smallest_quota_along_the_process_cgroup_wins(tmp_path: Path) -> None:
    root = tmp_path / "cg"
    self_cgroup = _v2(root, "max 100000", own="/a/b", nested={"a": "300000 100000", "a/b": "max 100000",
                                                             "other": "100000 100000"})
    assert cgroup_cpu_limit(root, self_cgroup) == 3.0  # a/b's parent a; the unrelated "other" is ignored


def test_cgroup_v2_on_a_hybrid_system_under_unified(tmp_path: Path) -> None:
    root = tmp_path / "cg"
    self_cgroup = _v2(root / "unified", "400000 100000")
    assert cgroup_cpu_limit(root, self_cgroup) == 4.0


@pytest.mark.parametrize(("quota", "limit"), [("-1", None), ("250000", 2.5), ("100000", 1.0)])
@pytest.mark.parametrize("mount", ["cpu", "cpu,cpuacct"])
def test_cgroup_v1_cfs_quota(tmp_path: Path, quota: str, limit: float | None, mount: str) -> None:
    root = tmp_path / "cg"
    _write(root / mount / "cpu.cfs_quota_us", quota + "\n")
    _write(root / mount / "cpu.cfs_period_us", "100000\n")
    self_cgroup = tmp_path / "self_cgroup"
    _write(self_cgroup, "4:memory:/x\n1:cpu,cpuacct:/\n0::/\n")
    assert cgroup_cpu_limit(root, self_cgroup) == limit


def test_cgroup_v1_quota_of_the_process_own_cgroup(tmp_path: Path) -> None:
    root = tmp_path / "cg"
    _write(root / "cpu" / "cpu.cfs_quota_us", "-1\n")
    _write(root / "cpu" / "cpu.cfs_period_us", "100000\n")
    _write(root / "cpu" / "docker" / "abc" / "cpu.cfs_quota_us", "300000\n")
    _write(root / "cpu" / "docker" / "abc" / "cpu.cfs_period_us", "100000\n")
    self_cgroup = tmp_path / "self_cgroup"
    _write(self_cgroup, "2:cpu:/docker/abc\n")
    assert cgroup_cpu_limit(root, self_cgroup) == 3.0


def test_no_cgroup_files_means_no_limit(tmp_path: Path) -> None:
    assert cgroup_cpu_limit(tmp_path / "missing", tmp_path / "missing_self") is None


# ------------------------------------------------------------------------------------------- cores
@pytest.mark.parametrize(
    ("affinity", "cpu_max", "cores"),
    [
        (range(16), "max 100000", 16),
        (range(16), "400000 100000", 4),
        (range(2), "400000 100000", 2),  # affinity is the tighter limit
        (range(8), "150000 100000", 1),  # a fractional quota rounds down
        (range(8), "250000 100000", 2),
        (range(8), "50000 100000", 1),  # never below 1
        ([3], None, 1),
        ([], None, 1),
    ],
)
def test_usable_cores_is_affinity_capped_by_the_quota(tmp_path: Path, affinity, cpu_max: str | None, cores: int) -> None:
    root = tmp_path / "cg"
    self_cgroup = _v2(root, cpu_max)
    assert usable_cores(affinity=list(affinity), cgroup_root=root, self_cgroup=self_cgroup) == cores


def test_usable_cores_of_this_process_reads_its_affinity(tmp_path: Path) -> None:
    expected = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    assert usable_cores(cgroup_root=tmp_path / "none", self_cgroup=tmp_path / "none") == expected


# ----------------------------------------------------------------------------------------- threads
@pytest.mark.parametrize(
    ("num_threads", "cores", "processes", "expected"),
    [
        ("auto", 16, 1, 16),
        (0, 16, 1, 16),
        ("0", 4, 1, 4),
        ("auto", 16, 4, 4),  # torchrun --nproc_per_node 4: each its share
        ("auto", 3, 2, 1),
        ("auto", 1, 4, 1),
        (1, 16, 1, 1),
        ("2", 16, 1, 2),
        (8, 2, 1, 2),  # capped at the usable cores
    ],
)
def test_resolve_threads(num_threads, cores: int, processes: int, expected: int) -> None:
    assert resolve_threads(num_threads, cores=cores, processes=processes) == expected


def test_auto_threads_share_the_node_among_torchrun_processes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    assert resolve_threads("auto", cores=8) == 4


def test_more_threads_than_cores_is_capped_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="medmamba.resources"):
        assert resolve_threads(8, cores=2) == 2
    assert "num_threads=8 is more than the 2 CPU core(s)" in caplog.text


@pytest.mark.parametrize("bad", [-1, "-2", "many", 1.5, None, True])
def test_bad_thread_counts_name_the_argument(bad) -> None:
    error = ValueError if isinstance(bad, (int, str)) and not isinstance(bad, bool) else TypeError
    with pytest.raises(error, match="num_threads"):
        resolve_threads(bad, cores=4)


def test_thread_env() -> None:
    assert thread_env(3) == {"OMP_NUM_THREADS": "3", "MKL_NUM_THREADS": "3"}  # OpenMP's default wait policy
    assert thread_env(1, "active")["OMP_WAIT_POLICY"] == "ACTIVE"
    assert thread_env(2, "passive")["OMP_WAIT_POLICY"] == "PASSIVE"
    with pytest.raises(ValueError, match="wait_policy must be None, 'PASSIVE' or 'ACTIVE', got 'lazy'"):
        thread_env(2, "lazy")
    with pytest.raises(ValueError, match="num_threads"):
        thread_env(0)
    with pytest.raises(ValueError, match="wait_policy"):
        thread_env(1, "spin")


def test_configure_threads_sets_torch_threads_within_the_usable_cores(monkeypatch: pytest.MonkeyPatch) -> None:
    before = torch.get_num_threads()
    environment = dict(os.environ)
    monkeypatch.setattr(resources, "usable_cores", lambda *a, **k: 1)
    try:
        assert configure_threads("auto") == 1
        assert torch.get_num_threads() == 1
        assert configure_threads(4) == 1  # never more than the usable cores
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
    assert dict(os.environ) == environment  # the running process's environment is left alone
    with pytest.raises(ValueError, match="interop_threads"):
        configure_threads(1, interop_threads=0)


# -------------------------------------------------------------------------------------------- workers
def test_dataloader_workers() -> None:
    assert dataloader_workers("cpu", 1, cores=16) == 0  # the transforms run between steps, in-process
    assert dataloader_workers(torch.device("cuda", 0), "auto", cores=16) == 4
    assert dataloader_workers("cuda", "auto", cores=3) == 2
    assert dataloader_workers("cuda", "auto", cores=1) == 0
    assert dataloader_workers("cuda", 2, cores=16) == 1  # the cores this process was given, less one


def test_dataloader_workers_share_the_node_among_torchrun_processes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "8")
    assert dataloader_workers("cuda", "auto", cores=16) == 1


# ------------------------------------------------------------------------------------------ the run line
def test_run_setup_line_states_device_precisions_threads_and_cpu(monkeypatch: pytest.MonkeyPatch,
                                                                  caplog: pytest.LogCaptureFixture) -> None:
    from medmamba.training import Precision

    monkeypatch.setattr(resources, "cpu_model", lambda: "Test CPU 9000")
    monkeypatch.setattr(resources, "cpu_capability", lambda: "AVX2")
    monkeypatch.setattr(resources, "cpu_native_bf16", lambda: (False, "ATen CPU capability AVX2"))
    monkeypatch.setattr(resources, "usable_cores", lambda *a, **k: 2)
    student = Precision("cpu", torch.float32, "auto", "auto: CPU without native bf16 (ATen CPU capability AVX2)")
    teacher = Precision("cpu", torch.bfloat16, "bf16", "forced")
    with caplog.at_level(logging.INFO, logger="medmamba.resources"):
        line = resources.log_run_setup("cpu", student, teacher, num_threads=2)
    assert line in caplog.text
    assert line.startswith("run setup: device cpu; precision fp32 (auto: CPU without native bf16")
    assert "teacher bf16 (forced)" in line
    assert "threads intra-op 2, inter-op" in line and "of 2 usable core(s)" in line
    assert "CPU Test CPU 9000, capability AVX2, native bf16 no (ATen CPU capability AVX2)" in line
    assert "teacher" not in run_setup_line("cpu", student)
    assert "precision fp32" in run_setup_line("cpu")  # inference: no autocast


def _allocator_state_in_child(env: dict[str, str]) -> str:
    import subprocess
    import sys

    code = "import medmamba.resources as r; print(r.tune_allocator()); print(r.run_setup_line('cpu'))"
    full = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k != "MEDMAMBA_ALLOCATOR"}
    full.update(env)
    return subprocess.run([sys.executable, "-c", code], env=full, capture_output=True, text=True, check=True).stdout


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc only")
def test_tune_allocator_keeps_large_blocks_on_glibc_and_says_so() -> None:
    out = _allocator_state_in_child({})
    state, line = out.splitlines()[:2]
    assert state == "glibc, large blocks kept"
    assert "allocator glibc, large blocks kept" in line


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"MEDMAMBA_ALLOCATOR": "default"}, "default (MEDMAMBA_ALLOCATOR=default)"),
        ({"MALLOC_MMAP_THRESHOLD_": "65536"}, "default (MALLOC_*_ variables set by the user)"),
    ],
)
def test_tune_allocator_leaves_a_users_choice_alone(env: dict[str, str], expected: str) -> None:
    assert _allocator_state_in_child(env).splitlines()[0] == expected
