"""MobileMamba on a CUDA GPU against the networks a user would pick instead, in one run.

The pairs of ``bench_networks.py --peers`` (fused T2@192 vs MobileNetV3-Large@224, fused S6@224 vs
MONAI EfficientNet-B0@224, fused B1@256 vs B1 the reference implementation's way, unfused with the
sequential-loop scan), each pair measured in alternation in one process on the GPU: batch-1 latency
and large-batch images/s, in float32 (PyTorch's defaults: TF32 for cuDNN convolutions, not for
matmuls) and under bfloat16 autocast (the bundles' ``amp: "auto"`` on a GPU that supports it).
Timings are medians of CUDA-synchronised wall times after a warm-up; the memory column is the peak
allocated while each network warms up (both networks' weights resident).

The selective scan runs the pure-PyTorch parallel scan unless ``mamba_ssm`` is installed
(``is_cuda_scan_available`` is printed in the header).

Usage::

    python benchmarks/bench_gpu.py [--batch 64] [--rounds 7] [--precisions fp32 bf16] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from contextlib import nullcontext
from typing import Any

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_networks import PEERS, build  # noqa: E402
from common import machine_line  # noqa: E402

from medmamba.networks import fuse_norms  # noqa: E402
from medmamba.networks.selective_scan import is_cuda_scan_available  # noqa: E402


def _timed(fn: Any, reps: int) -> float:
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(reps):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - t0) / reps


def measure_pair(ours: str, peer: str, batch: int, rounds: int, bf16: bool) -> dict[str, dict[str, float]]:
    """Ours (fused) and the peer on the GPU in alternation; medians of batch-``batch`` img/s and batch-1 ms."""
    device = torch.device("cuda")
    torch.manual_seed(0)
    nets, inputs = {}, {}
    for name, fused in ((ours, True), (peer, False)):
        model, size = build(name)
        model.eval()
        nets[name] = (fuse_norms(model, strict=False) if fused else model).to(device)
        inputs[name] = (torch.randn(batch, 3, size, size, device=device), torch.randn(1, 3, size, size, device=device))
    ctx = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if bf16 else nullcontext
    times: dict[str, dict[str, list[float]]] = {name: {"big": [], "one": []} for name in nets}
    peak: dict[str, float] = {}
    with torch.no_grad(), ctx():
        for name, net in nets.items():  # warm-up (cuDNN algorithm choice, allocator)
            torch.cuda.reset_peak_memory_stats()
            for _ in range(3):
                net(inputs[name][0])
                net(inputs[name][1])
            torch.cuda.synchronize()
            peak[name] = torch.cuda.max_memory_allocated() / 2**20
        calls = {name: ((lambda n=net, x=inputs[name][0]: n(x)), (lambda n=net, x=inputs[name][1]: n(x)))
                 for name, net in nets.items()}
        for _ in range(rounds):
            for name in nets:
                times[name]["big"].append(_timed(calls[name][0], 3))
                times[name]["one"].append(_timed(calls[name][1], 10))
    return {
        name: {
            "images_per_s": batch / statistics.median(t["big"]),
            "latency_b1_ms": 1000 * statistics.median(t["one"]),
            "peak_mib": peak[name],
        }
        for name, t in times.items()
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--json", default=None)
    parser.add_argument("--precisions", nargs="*", default=["fp32", "bf16"], choices=["fp32", "bf16"])
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        raise SystemExit("bench_gpu.py: no CUDA device is available (torch.cuda.is_available() is False).")
    from tqdm import tqdm

    gpu = torch.cuda.get_device_name(0)
    print(f"GPU: {gpu}; host: {machine_line()}; torch {torch.__version__}, CUDA {torch.version.cuda}, "
          f"cuDNN {torch.backends.cudnn.version()}; TF32 cuDNN {torch.backends.cudnn.allow_tf32}, "
          f"TF32 matmul {torch.backends.cuda.matmul.allow_tf32}; mamba_ssm kernel {is_cuda_scan_available()}\n")
    results: dict[str, Any] = {}
    cases = [(o, p, precision) for precision in args.precisions for o, p, _ in PEERS]
    for ours, peer, precision in tqdm(cases, desc="pairs", file=sys.stderr):
        results[f"{ours}|{peer}|{precision}"] = measure_pair(ours, peer, args.batch, args.rounds, precision == "bf16")
    print(f"| pair (alternating, medians) | precision | ours img/s b{args.batch} | peer img/s b{args.batch} | ratio | "
          "ours b1 ms | peer b1 ms | ratio b1 | ours / peer peak MiB |")
    print("|---|---|---|---|---|---|---|---|---|")
    for key, res in results.items():
        ours, peer, precision = key.split("|")
        o, p = res[ours], res[peer]
        print(f"| {ours.upper()}@{build(ours)[1]} fused vs {peer}@{build(peer)[1]} | {precision} | "
              f"{o['images_per_s']:.0f} | {p['images_per_s']:.0f} | {o['images_per_s'] / p['images_per_s']:.2f}x | "
              f"{o['latency_b1_ms']:.2f} | {p['latency_b1_ms']:.2f} | {p['latency_b1_ms'] / o['latency_b1_ms']:.2f}x | "
              f"{o['peak_mib']:.0f} / {p['peak_mib']:.0f} |")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump({"gpu": gpu, "host": machine_line(), "torch": torch.__version__, "results": results}, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
