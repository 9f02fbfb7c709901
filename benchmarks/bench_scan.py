"""Benchmark the selective scan: sequential reference loop vs the exact parallel scan.

Times the forward pass (inference, ``torch.no_grad``) and forward+backward (training) of
``medmamba.networks.selective_scan.selective_scan`` with ``backend="reference"`` and
``backend="parallel"`` at the stage-1 SS2D shapes of MobileMamba (N = 1, K = 2 directions):

=============  =====  ===========  =====  ======  ======
variant        batch  tokens       E0     KD      L
=============  =====  ===========  =====  ======  ======
T2 @ 192       8      12 x 12      144    448     144
S6 @ 224       8      14 x 14      192    640     196
B1 @ 256       8      16 x 16      200    640     256
B4 @ 512       8      32 x 32      200    640     1024
=============  =====  ===========  =====  ======  ======

(``Cg = round(0.8 * E0)`` global channels, ``d_inner = 2 * Cg``, ``KD = 2 * d_inner``.)

glibc trap: freed blocks of 32 MiB or more go back to the OS, so large temporaries are page-faulted
again on every call. Those thresholds can only be set before the process starts, so unless
``--no-malloc-tuning`` is given the script re-executes itself once with ``MALLOC_MMAP_THRESHOLD_``
(32 MiB, the largest value glibc accepts), ``MALLOC_TRIM_THRESHOLD_`` (64 GiB) and
``MALLOC_TOP_PAD_`` (1 GiB) set, unless they are already in the environment.

``--omp-passive`` adds ``OMP_WAIT_POLICY=PASSIVE`` to that environment: with PyTorch's default
(spinning) OpenMP threads, a CPU shared with other busy processes stalls every multi-threaded op for
a scheduler time slice, which makes the parallel scan several times slower than with one thread.

Usage::

    python benchmarks/bench_scan.py [--json results.json] [--repeats 7] [--ref-repeats 3]
        [--threads N] [--omp-passive] [--shapes B4@512 ...]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import machine_info, reexec_with_malloc_tuning  # noqa: E402


# name, batch, KD (= K * d_inner), L
SHAPES: list[tuple[str, int, int, int]] = [
    ("T2@192", 8, 448, 144),
    ("S6@224", 8, 640, 196),
    ("B1@256", 8, 640, 256),
    ("B4@512", 8, 640, 1024),
]
GROUPS = 2
N_STATE = 1


def _maybe_reexec(args: argparse.Namespace) -> None:
    """Re-run this script once with the environment set that is only read at start-up."""
    extra = {"OMP_WAIT_POLICY": "PASSIVE"} if args.omp_passive else None
    reexec_with_malloc_tuning(__file__, disabled=args.no_malloc_tuning, extra=extra)


_CPU_TIMES: dict[int, list[float]] = {}


def _time(fn: Callable[[], None], repeats: int, warmup: int) -> list[float]:
    """Wall-clock seconds of ``repeats`` calls; their process CPU seconds go to ``_CPU_TIMES``."""
    for _ in range(warmup):
        fn()
    times, cpu = [], []
    for _ in range(repeats):
        c0, t0 = time.process_time(), time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    _CPU_TIMES[id(times)] = cpu
    return times


def bench_shape(name: str, batch: int, kd: int, length: int, repeats: int, ref_repeats: int) -> dict[str, Any]:
    import torch

    from medmamba.networks.selective_scan import selective_scan

    gen = torch.Generator().manual_seed(0)
    # SS2D "v2" initialisation: A_log = 0, D = 1, dt bias ~ 0.1 U(0, 1); small projected dt
    u = torch.randn(batch, kd, length, generator=gen)
    delta = torch.randn(batch, kd, length, generator=gen) * 0.1
    A = -torch.ones(kd, N_STATE)
    B = torch.randn(batch, GROUPS, N_STATE, length, generator=gen)
    C = torch.randn(batch, GROUPS, N_STATE, length, generator=gen)
    D = torch.ones(kd)
    bias = torch.rand(kd, generator=gen) * 0.1
    leaves = [t.requires_grad_() for t in (u, delta, A, B, C, D, bias)]
    dy = torch.randn(batch, kd, length, generator=gen)
    # the same values stored time-major, (batch, L, KD) in memory, as a (batch, L, C) model has them
    leaves_tm = list(leaves)
    leaves_tm[0], leaves_tm[1] = (t.detach().transpose(1, 2).contiguous().transpose(1, 2) for t in (u, delta))
    leaves_tm = [t.detach().requires_grad_() for t in leaves_tm]
    dy_tm = dy.transpose(1, 2).contiguous().transpose(1, 2)

    def fwd(backend: str, time_major: bool = False) -> Callable[[], None]:
        args = leaves_tm if time_major else leaves

        def run() -> None:
            with torch.no_grad():
                selective_scan(*args, backend=backend)

        return run

    def fwd_bwd(backend: str, time_major: bool = False) -> Callable[[], None]:
        args, grad = (leaves_tm, dy_tm) if time_major else (leaves, dy)

        def run() -> None:
            for t in args:
                t.grad = None
            selective_scan(*args, backend=backend).backward(grad)

        return run

    with torch.no_grad():
        err = (selective_scan(*leaves, backend="parallel") - selective_scan(*leaves, backend="reference")).abs().max()
    result: dict[str, Any] = {"name": name, "batch": batch, "KD": kd, "L": length, "N": N_STATE, "K": GROUPS}
    result["max_abs_diff_fwd"] = float(err)
    result["ref_fwd_s"] = _time(fwd("reference"), ref_repeats, warmup=1)
    result["par_fwd_s"] = _time(fwd("parallel"), repeats, warmup=2)
    result["ref_fwd_bwd_s"] = _time(fwd_bwd("reference"), ref_repeats, warmup=0)
    result["par_fwd_bwd_s"] = _time(fwd_bwd("parallel"), repeats, warmup=2)
    result["par_tm_fwd_s"] = _time(fwd("parallel", True), repeats, warmup=2)
    result["par_tm_fwd_bwd_s"] = _time(fwd_bwd("parallel", True), repeats, warmup=2)
    for key in ("ref_fwd", "par_fwd", "ref_fwd_bwd", "par_fwd_bwd", "par_tm_fwd", "par_tm_fwd_bwd"):
        result[key + "_median_ms"] = 1e3 * statistics.median(result[key + "_s"])
        result[key + "_cpu_s"] = _CPU_TIMES.pop(id(result[key + "_s"]))
        result[key + "_cpu_median_ms"] = 1e3 * statistics.median(result[key + "_cpu_s"])
    result["speedup_fwd"] = result["ref_fwd_median_ms"] / result["par_fwd_median_ms"]
    result["speedup_fwd_bwd"] = result["ref_fwd_bwd_median_ms"] / result["par_fwd_bwd_median_ms"]
    result["speedup_tm_fwd"] = result["ref_fwd_median_ms"] / result["par_tm_fwd_median_ms"]
    result["speedup_tm_fwd_bwd"] = result["ref_fwd_bwd_median_ms"] / result["par_tm_fwd_bwd_median_ms"]
    return result


def format_table(results: list[dict[str, Any]]) -> str:
    lines = [
        (
            "| shape | batch | KD | L | ref fwd (ms) | parallel fwd (ms) | fwd speed-up "
            "| ref fwd+bwd (ms) | parallel fwd+bwd (ms) | fwd+bwd speed-up |"
        ),
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {r['name']} | {r['batch']} | {r['KD']} | {r['L']} "
            f"| {r['ref_fwd_median_ms']:.1f} | {r['par_fwd_median_ms']:.1f} | {r['speedup_fwd']:.1f}x "
            f"| {r['ref_fwd_bwd_median_ms']:.1f} | {r['par_fwd_bwd_median_ms']:.1f} | {r['speedup_fwd_bwd']:.1f}x |"
        )
    lines += [
        "",
        "Parallel scan with time-major `u`/`delta` (`(batch, L, KD)` in memory; same reference times):",
        "",
        "| shape | parallel fwd (ms) | fwd speed-up | parallel fwd+bwd (ms) | fwd+bwd speed-up |",
        "|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {r['name']} | {r['par_tm_fwd_median_ms']:.1f} | {r['speedup_tm_fwd']:.1f}x "
            f"| {r['par_tm_fwd_bwd_median_ms']:.1f} | {r['speedup_tm_fwd_bwd']:.1f}x |"
        )
    lines += [
        "",
        "Process CPU time, medians (all threads summed, spin-waits included; with `--threads 1` it does not",
        "grow when other processes compete for the CPU, unlike the wall-clock times above):",
        "",
        (
            "| shape | ref fwd (ms) | parallel fwd (ms) | fwd ratio | ref fwd+bwd (ms) | parallel fwd+bwd (ms) "
            "| fwd+bwd ratio | time-major fwd / fwd+bwd (ms) |"
        ),
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {r['name']} | {r['ref_fwd_cpu_median_ms']:.1f} | {r['par_fwd_cpu_median_ms']:.1f} "
            f"| {r['ref_fwd_cpu_median_ms'] / r['par_fwd_cpu_median_ms']:.1f}x "
            f"| {r['ref_fwd_bwd_cpu_median_ms']:.1f} | {r['par_fwd_bwd_cpu_median_ms']:.1f} "
            f"| {r['ref_fwd_bwd_cpu_median_ms'] / r['par_fwd_bwd_cpu_median_ms']:.1f}x "
            f"| {r['par_tm_fwd_cpu_median_ms']:.1f} / {r['par_tm_fwd_bwd_cpu_median_ms']:.1f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", metavar="PATH", help="write machine info and all timings to this JSON file")
    parser.add_argument("--repeats", type=int, default=7, help="timed repeats of the parallel scan (median)")
    parser.add_argument("--ref-repeats", type=int, default=3, help="timed repeats of the reference loop")
    parser.add_argument("--shapes", nargs="*", default=None, help="subset of shape names, e.g. B4@512")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--no-malloc-tuning", action="store_true", help="do not re-exec with glibc malloc settings")
    parser.add_argument(
        "--omp-passive",
        action="store_true",
        help="re-exec with OMP_WAIT_POLICY=PASSIVE (OpenMP threads sleep instead of spinning at barriers; "
        "on a CPU shared with other processes the default spinning stalls every parallel op)",
    )
    args = parser.parse_args(argv)
    _maybe_reexec(args)

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    shapes = [s for s in SHAPES if not args.shapes or s[0] in args.shapes]
    info = machine_info()
    print(
        f"machine: {info['cpu']} ({info['cores']} logical CPUs, {info['cpu_capability']}), "
        f"torch {info['torch']} with {info['torch_threads']} threads, Python {info['python']}"
    )
    print(f"malloc tuning: {info['malloc_env']}, OMP_WAIT_POLICY={info['OMP_WAIT_POLICY']}")
    print(f"load average at start: {info['loadavg_start']}")
    results = []
    for name, batch, kd, length in shapes:
        r = bench_shape(name, batch, kd, length, args.repeats, args.ref_repeats)
        results.append(r)
        print(
            f"  {name}: fwd {r['ref_fwd_median_ms']:.1f} -> {r['par_fwd_median_ms']:.1f} ms "
            f"(time-major {r['par_tm_fwd_median_ms']:.1f}), fwd+bwd {r['ref_fwd_bwd_median_ms']:.1f} -> "
            f"{r['par_fwd_bwd_median_ms']:.1f} ms (time-major {r['par_tm_fwd_bwd_median_ms']:.1f}), "
            f"max |diff| {r['max_abs_diff_fwd']:.1e}",
            flush=True,
        )
    info["loadavg_end"] = os.getloadavg()
    print()
    print(f"median of {args.repeats} (parallel) / {args.ref_repeats} (reference) repeats, N = {N_STATE}, K = {GROUPS}")
    print(format_table(results))
    print(f"load average at end: {info['loadavg_end']}")
    for r in results:
        if r["name"] == "B4@512":
            ok = r["speedup_fwd"] >= 4.0 and r["speedup_fwd_bwd"] >= 30.0
            print(
                f"target at B4@512 (fwd >= 4x, fwd+bwd >= 30x): {'met' if ok else 'NOT met'} "
                f"({r['speedup_fwd']:.1f}x, {r['speedup_fwd_bwd']:.1f}x)"
            )
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump({"machine": info, "results": results}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
