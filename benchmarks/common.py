"""Shared helpers of the benchmark scripts: the machine's description, timing, malloc tuning."""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Hashable, Mapping
from pathlib import Path
from typing import Any

import torch

from medmamba.resources import ALLOCATOR_SETTINGS, cpu_model

__all__ = [
    "MALLOC_ENV",
    "alternating_medians",
    "equal_outputs",
    "machine_info",
    "machine_line",
    "reexec_with_env",
    "reexec_with_malloc_tuning",
    "scan_benchmark_args",
    "seconds_per_volume",
    "time_call",
]

#: glibc returns freed large blocks to the OS, so large temporaries are page-faulted again on every
#: call; these variables (read at process start) keep them, with the values bundle runs set through
#: ``mallopt`` (:func:`medmamba.resources.tune_allocator`).
MALLOC_ENV = {
    "MALLOC_MMAP_THRESHOLD_": str(ALLOCATOR_SETTINGS["mmap_threshold"]),
    "MALLOC_TRIM_THRESHOLD_": str(ALLOCATOR_SETTINGS["trim_threshold"]),
    "MALLOC_TOP_PAD_": str(ALLOCATOR_SETTINGS["top_pad"]),
}
_REEXEC_FLAG = "MEDMAMBA_BENCH_REEXEC"


def reexec_with_env(script: str, wanted: dict[str, str]) -> None:
    """Re-run ``script`` once with the variables ``wanted`` set (they are read at process start only).

    Nothing happens when ``wanted`` is empty, already set, or this process is the re-run.
    """
    if not wanted or os.environ.get(_REEXEC_FLAG) or all(k in os.environ for k in wanted):
        return
    env = dict(os.environ)
    for key, value in wanted.items():
        env.setdefault(key, value)
    env[_REEXEC_FLAG] = "1"
    sys.stdout.flush()
    os.execve(sys.executable, [sys.executable, os.path.abspath(script), *sys.argv[1:]], env)


def reexec_with_malloc_tuning(script: str, disabled: bool = False, extra: dict[str, str] | None = None) -> None:
    """Re-run ``script`` once with :data:`MALLOC_ENV` (unless ``disabled``) and ``extra`` set."""
    wanted = {} if disabled else dict(MALLOC_ENV)
    wanted.update(extra or {})
    reexec_with_env(script, wanted)


def machine_info() -> dict[str, Any]:
    """CPU model, core count, torch threads and versions of the machine the benchmark runs on."""
    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "malloc_tuning": all(k in os.environ for k in MALLOC_ENV),
        "malloc_env": {k: os.environ.get(k) for k in MALLOC_ENV},
        "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY"),
        "loadavg_start": os.getloadavg(),
    }


def machine_line() -> str:
    """One line naming the machine, for the head of a results table."""
    info = machine_info()
    return (
        f"{info['cpu']}, {info['cores']} cores, torch {info['torch']} ({info['torch_threads']} threads), "
        f"Python {info['python']}, glibc malloc tuning {'on' if info['malloc_tuning'] else 'off'}"
    )


def time_call(fn: Callable[[], object], repeats: int = 5, warmup: int = 1, min_time: float = 0.0) -> float:
    """Median wall time of ``fn()`` in seconds over ``repeats`` runs (more while under ``min_time``)."""
    for _ in range(warmup):
        fn()
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < repeats or (time.perf_counter() - start) < min_time:
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def scan_benchmark_args(description: str, default_bundle: Path, argv: list[str] | None = None) -> argparse.Namespace:
    """Arguments of a benchmark that times a bundle's predictor on one scan: ``--image``, ``--bundle``
    (default ``default_bundle``), ``--rounds`` (at least 1) and ``--threads``."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--image", type=Path, required=True, help="a NIfTI file or DICOM series folder")
    parser.add_argument("--bundle", type=Path, default=default_bundle)
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds (each times every setting once)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    if args.rounds < 1:
        parser.error(f"--rounds must be at least 1, got {args.rounds}")
    return args


def alternating_medians(settings: Mapping[Hashable, Callable[[], object]], rounds: int) -> dict[Hashable, float]:
    """Median wall seconds of each setting's call over ``rounds`` rounds, after one warm-up round; each
    round calls every setting once, in order, so that drift hits all of them alike."""
    times: dict[Hashable, list[float]] = {label: [] for label in settings}
    for round_ in range(rounds + 1):  # round 0 warms up
        for label, call in settings.items():
            start = time.perf_counter()
            call()
            if round_:
                times[label].append(time.perf_counter() - start)
    return {label: statistics.median(t) for label, t in times.items()}


def equal_outputs(a: Any, b: Any) -> bool:
    """Whether two predictor outputs (tensors, or tuples / dicts of them) are equal value for value."""
    try:
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    except AssertionError:
        return False
    return True


def seconds_per_volume(predictors: Mapping[Hashable, Callable[[torch.Tensor], object]], volumes: list[torch.Tensor],
                       rounds: int) -> dict[Hashable, float]:
    """Median seconds per volume of each predictor over ``volumes`` (without gradients), the predictors
    alternated round by round (:func:`alternating_medians`)."""

    def run(predictor: Callable[[torch.Tensor], object]) -> Callable[[], None]:
        def call() -> None:
            with torch.no_grad():
                for v in volumes:
                    predictor(v)
        return call

    medians = alternating_medians({label: run(p) for label, p in predictors.items()}, rounds)
    return {label: t / len(volumes) for label, t in medians.items()}
