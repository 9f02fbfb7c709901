"""A training step of the classification student at 1 and 2 threads, OpenMP wait policy default vs PASSIVE.

The OpenMP runtime reads ``OMP_WAIT_POLICY`` once, when torch is imported, so every setting runs in
a fresh interpreter (``--child``). Each child builds the classification bundle's student
(``LesionMapClassifier`` over MobileMamba-T2 segmentation, 5 input channels) with its loss and
optimiser from ``bundles/mobilemamba_classification/configs/train.json``, and times
forward + backward + AdamW steps on a random batch of the bundle's training shape (32 slice stacks
of 5 x 128 x 128), after warm-up steps. Settings alternate for ``--repeats`` rounds; the table shows
the median seconds per step and the speed-up of 2 threads over 1 under each policy.

Why it matters: ``PASSIVE`` puts an idle OpenMP thread to sleep at once; with several threads in one
process that is a sleep and wake-up at every parallel region of every small operator, and a 2-thread
training step can be no faster than a 1-thread one. The default policy spins for a while first.

Usage::

    python benchmarks/bench_wait_policy.py              # 1 and 2 threads, default and PASSIVE, 3 rounds
    python benchmarks/bench_wait_policy.py --threads 1 2 4 --repeats 5 --json runs/wait_policy.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

from common import machine_line  # noqa: E402

__all__ = ["child", "main"]


def child(steps: int, warmup: int) -> float:
    """Seconds per training step of the classification student (run inside a fresh interpreter)."""
    import torch
    from monai.bundle import ConfigParser

    torch.manual_seed(0)
    root = REPO / "bundles" / "mobilemamba_classification"
    parser = ConfigParser()
    parser.read_config(str(root / "configs" / "train.json"))
    parser["bundle_root"] = str(root)
    net, loss, optimizer = (parser.get_parsed_content(k) for k in ("train_network", "loss", "optimizer"))
    x = torch.randn(32, parser.get_parsed_content("in_channels"), 128, 128).to(memory_format=torch.channels_last)
    y = torch.randint(0, parser.get_parsed_content("dense_classes"), (32, 1, 128, 128))

    def step() -> None:
        optimizer.zero_grad()
        loss(net(x), y).backward()
        optimizer.step()

    for _ in range(warmup):
        step()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    return (time.perf_counter() - t0) / steps


def run(threads: int, policy: str | None, steps: int, warmup: int) -> float:
    """One setting in a fresh interpreter; returns seconds per step."""
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    env.update({"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)})
    if policy is not None:
        env["OMP_WAIT_POLICY"] = policy
    cmd = [sys.executable, __file__, "--child", "--steps", str(steps), "--warmup", str(warmup)]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout
    return float(out.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(f"{child(args.steps, args.warmup):.6f}")
        return 0
    for name, value in (("--repeats", args.repeats), ("--steps", args.steps)):
        if value < 1:
            parser.error(f"{name} must be >= 1, got {value}")
    if any(t < 1 for t in args.threads):
        parser.error(f"--threads must be >= 1, got {args.threads}")
    settings = [(t, p) for p in (None, "PASSIVE") for t in args.threads]
    times: dict[tuple[int, str | None], list[float]] = {s: [] for s in settings}
    for _ in range(args.repeats):
        for threads, policy in settings:  # alternate, so that drifts of a shared machine hit every setting
            times[(threads, policy)].append(run(threads, policy, args.steps, args.warmup))
    print(machine_line())
    print(f"classification student training step, batch 32 x 5 x 128 x 128; median of {args.repeats} rounds x {args.steps} steps\n")
    print("| OMP_WAIT_POLICY | threads | s / step | speed-up over 1 thread |\n|---|---|---|---|")
    rows = []
    for threads, policy in settings:
        med = statistics.median(times[(threads, policy)])
        base = statistics.median(times[(min(args.threads), policy)])
        rows.append({"policy": policy or "default", "threads": threads, "seconds_per_step": med, "all": times[(threads, policy)]})
        print(f"| {policy or 'default (unset)'} | {threads} | {med:.3f} | {base / med:.2f}x |")
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"machine": machine_line(), "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
