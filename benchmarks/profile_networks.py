"""Where fused MobileMamba's CPU inference time goes: operator shares by kind.

``torch.profiler`` (with Python stacks) over batch-8 inference of the fused network at its native
size; every operator's *self* time is put into one kind, so the shares add up to 100 %:

- depthwise conv (a k × k conv with one input channel per group; the wavelet's 2 × 2 analysis and
  its transposed synthesis counted apart, as "wavelet transforms"), 1 × 1 conv, other conv;
- selective scan (everything under ``selective_scan*.py``);
- layout (permute, copy, contiguous, cat, stack, flip, clone, pad, reshape that copies) anywhere;
- the rest by name (normalisation, activations, element-wise arithmetic, pooling/linear, other).

    python benchmarks/profile_networks.py --variants t2 s6 b1 --threads 2
    ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 python benchmarks/profile_networks.py   # an AVX2 CPU's kernels
"""

from __future__ import annotations

import argparse
import os
import sys
from collections import defaultdict

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch  # noqa: E402

from common import machine_line  # noqa: E402

from medmamba.networks import MOBILEMAMBA_VARIANTS, MobileMamba, fuse_norms  # noqa: E402

KINDS = ("depthwise conv", "1x1 conv", "other conv", "wavelet transforms", "selective scan", "layout",
         "normalisation", "activations", "element-wise", "pooling / linear", "other")
_LAYOUT = ("permute", "copy_", "contiguous", "cat", "stack", "flip", "clone", "constant_pad_nd", "pad", "_to_copy",
           "transpose", "view", "reshape", "as_strided", "slice", "select", "unsqueeze", "squeeze", "expand", "split",
           "chunk", "flatten", "empty", "zeros", "unbind", "narrow", "_unsafe_view", "t")
_NORM = ("layer_norm", "native_layer_norm", "batch_norm", "native_batch_norm", "_batch_norm_impl_index", "group_norm")
_ACT = ("relu", "gelu", "silu", "sigmoid", "hardswish", "hardsigmoid", "softplus", "tanh", "exp", "log1p", "clamp_min",
        "clamp", "threshold")
_ELEMENTWISE = ("add", "mul", "sub", "div", "addcmul", "addcmul_", "mul_", "add_", "where", "neg", "sum", "cumsum")
_DENSE = ("linear", "addmm", "mm", "bmm", "matmul", "einsum", "adaptive_avg_pool2d", "mean", "avg_pool2d", "baddbmm")


def _conv_kind(event: torch.autograd.profiler_util.FunctionEvent) -> str:
    shapes = [s for s in (event.input_shapes or []) if isinstance(s, list)]
    weight = shapes[1] if len(shapes) > 1 else []
    if len(weight) == 4:
        if weight[2] == 1 and weight[3] == 1:
            return "1x1 conv"
        if weight[1] == 1 and weight[0] > 1:
            return "depthwise conv"
    return "other conv"


def kind_of(event: torch.autograd.profiler_util.FunctionEvent) -> str:
    """The kind of one profiled operator (see the module docstring)."""
    frames, parent = list(event.stack or []), event.cpu_parent
    while parent is not None:  # with the Python tracer, the frames are the parent events
        frames.append(parent.name)
        parent = parent.cpu_parent
    stack = " ".join("/" + f for f in frames)
    name = event.name.split("::")[-1]
    if "/selective_scan.py" in stack or "/selective_scan_chunked.py" in stack:
        return "selective scan"
    if "/wavelet.py" in stack:
        return "wavelet transforms"
    if "conv" in name:
        return _conv_kind(event)
    if name.rstrip("_") in _LAYOUT or name in _LAYOUT:
        return "layout"
    if name in _NORM:
        return "normalisation"
    if name.rstrip("_") in _ACT:
        return "activations"
    if name.rstrip("_") in _ELEMENTWISE or name in _ELEMENTWISE:
        return "element-wise"
    if name in _DENSE:
        return "pooling / linear"
    return "other"


def profile(variant: str, batch: int, rounds: int) -> tuple[float, dict[str, float]]:
    """Milliseconds per batch and the share of each kind, for one fused variant."""
    torch.manual_seed(0)
    size = int(MOBILEMAMBA_VARIANTS[variant]["img_size"])
    net = fuse_norms(MobileMamba(variant, num_classes=1000).eval())
    x = torch.randn(batch, 3, size, size)
    with torch.no_grad():
        for _ in range(2):
            net(x)
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], record_shapes=True,
                                    with_stack=True) as prof:
            for _ in range(rounds):
                net(x)
    totals: dict[str, float] = defaultdict(float)
    for event in prof.events():
        if event.name.startswith("aten::") or event.name.startswith("mkldnn::"):
            totals[kind_of(event)] += event.self_cpu_time_total
    total = sum(totals.values()) or 1.0
    ms = total / 1000.0 / rounds
    return ms, {k: 100.0 * totals.get(k, 0.0) / total for k in KINDS}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variants", nargs="*", default=["t2", "s6", "b1"])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    from tqdm import tqdm

    rows = [(v, *profile(v, args.batch, args.rounds)) for v in tqdm(args.variants, desc="networks", file=sys.stderr)]
    print(f"# fused inference, operator shares (self CPU time), batch {args.batch}\n")
    print(f"CPU: {machine_line()}; torch CPU capability {torch.backends.cpu.get_cpu_capability()}; "
          f"{torch.get_num_threads()} threads\n")
    print("| kind | " + " | ".join(f"{v.upper()}@{MOBILEMAMBA_VARIANTS[v]['img_size']}" for v, _, _ in rows) + " |")
    print("|---|" + "---|" * len(rows))
    print("| profiled ms per batch (operators' self time) | " + " | ".join(f"{ms:.0f}" for _, ms, _ in rows) + " |")
    for kind in KINDS:
        print(f"| {kind} | " + " | ".join(f"{shares[kind]:.1f} %" for _, _, shares in rows) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
