"""The WTE-Mamba wavelet transforms: depthwise (transposed) convolutions against the arithmetic Haar.

Two measurements, both settings in one process:

1. per block: the one-level Haar transform and its inverse of every WTE-Mamba block of a fused
   network, on the inputs that block gets at the network's native size (batch 8), as the stride-2
   depthwise convolution / its transpose (:func:`~medmamba.networks.blocks.wavelet.wavelet_transform`)
   and as sums and differences (:func:`~medmamba.networks.blocks.wavelet.haar_transform`);
2. the whole fused network at batch 8 and 1, with the arithmetic path off and on in alternation
   (``rounds`` rounds, medians), because this kind of VM drifts between minutes.

    python benchmarks/bench_wavelet.py --variants t2 s6 b1 --threads 2
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch  # noqa: E402

from common import machine_line, reexec_with_malloc_tuning  # noqa: E402

from medmamba.networks import MOBILEMAMBA_VARIANTS, MobileMamba, fuse_norms  # noqa: E402
from medmamba.networks.blocks.wavelet import (  # noqa: E402
    haar_transform,
    inverse_haar_transform,
    inverse_wavelet_transform,
    wavelet_transform,
)
from medmamba.networks.blocks.wte_mamba import WTEMamba  # noqa: E402


def _median_us(fn, n: int) -> float:
    for _ in range(max(3, n // 10)):
        fn()
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e6


def per_block(model: torch.nn.Module, size: int, batch: int, n: int) -> tuple[float, float, float, float, int]:
    """Summed median µs over the blocks: (conv WT, Haar WT, conv IWT, Haar IWT, blocks)."""
    inputs: list[tuple[torch.Tensor, WTEMamba]] = []
    hooks = [m.register_forward_pre_hook(lambda mod, args: inputs.append((args[0], mod)))
             for m in model.modules() if isinstance(m, WTEMamba)]
    with torch.inference_mode():
        model(torch.randn(batch, 3, size, size))
    for h in hooks:
        h.remove()
    totals = [0.0, 0.0, 0.0, 0.0]
    with torch.inference_mode():
        for x, mod in inputs:
            if x.shape[2] % 2 or x.shape[3] % 2:
                x = torch.nn.functional.pad(x, (0, x.shape[3] % 2, 0, x.shape[2] % 2))
            bands = wavelet_transform(x, mod.wt_filter)
            totals[0] += _median_us(lambda: wavelet_transform(x, mod.wt_filter), n)
            totals[1] += _median_us(lambda: haar_transform(x, mod.wt_filter), n)
            totals[2] += _median_us(lambda: inverse_wavelet_transform(bands, mod.iwt_filter), n)
            totals[3] += _median_us(lambda: inverse_haar_transform(bands, mod.iwt_filter), n)
    return (*totals, len(inputs))


def whole_network(model: torch.nn.Module, size: int, rounds: int) -> dict[str, float]:
    """Median ms of batch 8 and batch 1, arithmetic Haar off and on, alternated per round."""
    blocks = [m for m in model.modules() if isinstance(m, WTEMamba)]
    x8, x1 = torch.randn(8, 3, size, size), torch.randn(1, 3, size, size)
    res: dict[str, list[float]] = {k: [] for k in ("b8 conv", "b8 haar", "b1 conv", "b1 haar")}
    with torch.inference_mode():
        for _ in range(rounds):
            for mode in ("conv", "haar"):
                for b in blocks:
                    b.haar = mode == "haar"
                model(x8)
                t0 = time.perf_counter()
                model(x8)
                res[f"b8 {mode}"].append(time.perf_counter() - t0)
                model(x1)
                ones = []
                for _ in range(5):
                    t0 = time.perf_counter()
                    model(x1)
                    ones.append(time.perf_counter() - t0)
                res[f"b1 {mode}"].append(statistics.median(ones))
    for b in blocks:
        b.haar = True
    return {k: statistics.median(v) * 1e3 for k, v in res.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variants", nargs="*", default=["t2", "s6", "b1"], choices=sorted(MOBILEMAMBA_VARIANTS))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=100, help="calls per block and setting")
    parser.add_argument("--rounds", type=int, default=7, help="alternated whole-network rounds")
    args = parser.parse_args(argv)
    reexec_with_malloc_tuning(__file__)
    torch.set_num_threads(args.threads)
    print(f"# WTE-Mamba wavelet transforms: convolutions vs arithmetic Haar\n\nCPU: {machine_line()}, "
          f"torch CPU capability {torch.backends.cpu.get_cpu_capability()}\n")
    print("| fused network | blocks | WT conv → Haar (µs, b8, summed) | IWT conv → Haar | "
          "network b8 ms conv → Haar | ratio | network b1 ms conv → Haar | ratio |")
    print("|---|---|---|---|---|---|---|---|")
    for name in args.variants:
        torch.manual_seed(0)
        size = int(MOBILEMAMBA_VARIANTS[name]["img_size"])
        model = fuse_norms(MobileMamba(name, num_classes=1000).eval())
        wt_c, wt_h, iwt_c, iwt_h, n = per_block(model, size, 8, args.repeats)
        net = whole_network(model, size, args.rounds)
        print(f"| {name.upper()}@{size} | {n} | {wt_c:.0f} → {wt_h:.0f} ({wt_c / wt_h:.2f}×) | "
              f"{iwt_c:.0f} → {iwt_h:.0f} ({iwt_c / iwt_h:.2f}×) | {net['b8 conv']:.1f} → {net['b8 haar']:.1f} | "
              f"{net['b8 conv'] / net['b8 haar']:.2f}× | {net['b1 conv']:.1f} → {net['b1 haar']:.1f} | "
              f"{net['b1 conv'] / net['b1 haar']:.2f}× |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
