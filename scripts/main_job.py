"""medmamba's main job: every MobileMamba variant built, fused and run on a sample input.

Prints a table with parameters, the fused-vs-unfused maximum output difference and the CPU latency
of one image at each variant's native resolution, unfused and fused.
"""

from __future__ import annotations

import argparse
import sys
import time

import torch
from tqdm import tqdm

from medmamba.networks import MOBILEMAMBA_VARIANTS, MobileMamba, fuse_norms


def _latency(model: torch.nn.Module, x: torch.Tensor, repeats: int) -> float:
    with torch.no_grad():
        model(x)
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            model(x)
            times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]


def networks_table(repeats: int = 3) -> list[dict]:
    rows = []
    for name in tqdm(list(MOBILEMAMBA_VARIANTS), desc="variants", file=sys.stderr):
        torch.manual_seed(0)
        size = int(MOBILEMAMBA_VARIANTS[name]["img_size"])
        model = MobileMamba(name, num_classes=1000).eval()
        fused = fuse_norms(model)
        x = torch.randn(1, 3, size, size)
        with torch.no_grad():
            ref, out = model(x), fused(x)
        rows.append(
            {
                "variant": name.upper(),
                "input": size,
                "params_m": sum(p.numel() for p in model.parameters()) / 1e6,
                "fusion_rel_err": ((ref - out).abs().max() / ref.abs().max()).item(),
                "unfused_ms": 1000 * _latency(model, x, repeats),
                "fused_ms": 1000 * _latency(fused, x, repeats),
            }
        )
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    rows = networks_table(args.repeats)
    print("\n| variant | input | params (M) | fused vs unfused (rel. max diff) | latency b1 unfused (ms) | fused (ms) |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['variant']} | {r['input']} | {r['params_m']:.2f} | {r['fusion_rel_err']:.1e} | "
            f"{r['unfused_ms']:.0f} | {r['fused_ms']:.0f} |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
