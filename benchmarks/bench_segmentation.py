"""CPU benchmark of MobileMambaSeg against MONAI's 2D segmentation networks.

For each network: parameters, throughput (images/s) at 256×256 batch 8, latency at batch 1,
unfused and with BatchNorm fusion (``medmamba.networks.fuse_norms`` for MobileMambaSeg; MONAI's
networks use Instance/Group/Layer norms, which cannot be folded, or BatchNorms outside fusable units),
and the seconds to segment a 256×256×200 volume as 2.5D (context 1, i.e. 3-slice stacks) through
``medmamba.inferers.SliceStackInferer``. Everything runs in one process, one network at a time, and
the table is printed side by side in Markdown.

Usage::

    python benchmarks/bench_segmentation.py                 # the full run (a few minutes on 2 cores)
    python benchmarks/bench_segmentation.py --quick         # smoke test: small sizes, one repeat
    python benchmarks/bench_segmentation.py --markdown out.md --threads 2

``SwinUNETR`` needs ``einops`` (not a medmamba dependency); without it that row says so.
"""

from __future__ import annotations

import argparse
import datetime
import math
import platform
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from medmamba.inferers import SliceStackInferer
from medmamba.networks import MobileMambaSeg, fuse_norms

__all__ = ["MODELS", "Result", "main", "run"]


def _monai(name: str) -> Callable[[int], nn.Module]:
    def build(in_channels: int) -> nn.Module:
        from monai.networks import nets

        if name == "unet":
            return nets.UNet(
                spatial_dims=2, in_channels=in_channels, out_channels=2,
                channels=(32, 64, 128, 256, 512), strides=(2, 2, 2, 2),
            )
        if name == "segresnet":
            return nets.SegResNet(spatial_dims=2, in_channels=in_channels, out_channels=2)
        if name == "flexibleunet":
            return nets.FlexibleUNet(
                in_channels=in_channels, out_channels=2, backbone="efficientnet-b0", pretrained=False, spatial_dims=2
            )
        if name == "swinunetr":
            import einops  # noqa: F401  (MONAI's SwinUNETR needs it at run time)

            return nets.SwinUNETR(in_channels=in_channels, out_channels=2, spatial_dims=2, feature_size=24)
        raise ValueError(f"unknown MONAI model {name!r}")

    return build


#: name -> (label, builder(in_channels) -> module, fusable with medmamba.networks.fuse_norms)
MODELS: dict[str, tuple[str, Callable[[int], nn.Module], bool]] = {
    "mobilemambaseg-t2": ("MobileMambaSeg-T2", lambda c: MobileMambaSeg("t2", in_channels=c, out_channels=2), True),
    "mobilemambaseg-t2-os2": (
        "MobileMambaSeg-T2, output_stride 2",
        lambda c: MobileMambaSeg("t2", in_channels=c, out_channels=2, output_stride=2),
        True,
    ),
    "mobilemambaseg-s6": ("MobileMambaSeg-S6", lambda c: MobileMambaSeg("s6", in_channels=c, out_channels=2), True),
    "unet": ("MONAI UNet (32..512, 4× stride 2)", _monai("unet"), False),
    "segresnet": ("MONAI SegResNet 2D", _monai("segresnet"), False),
    "flexibleunet": ("MONAI FlexibleUNet effnet-b0", _monai("flexibleunet"), False),
    "swinunetr": ("MONAI SwinUNETR 2D (fs 24)", _monai("swinunetr"), False),
}


@dataclass
class Result:
    """Measurements of one network."""

    label: str
    params: int = 0
    throughput: float = float("nan")
    throughput_fused: float = float("nan")
    latency_ms: float = float("nan")
    latency_fused_ms: float = float("nan")
    volume_s: float = float("nan")
    note: str = ""
    extra: dict = field(default_factory=dict)


@torch.no_grad()
def _once(fn: Callable[[], object]) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def run(
    names: list[str],
    size: int = 256,
    batch: int = 8,
    slices: int = 200,
    context: int = 1,
    rounds: int = 5,
    warmup: int = 2,
) -> list[Result]:
    """Benchmark the networks ``names`` (keys of :data:`MODELS`); see the module docstring.

    Throughput and latency are the best of ``rounds`` rounds that visit every network in turn
    (interleaved, so that load from other processes on a shared machine hits all networks alike and
    the minimum filters it out). The volume is segmented once per network.
    """
    x8 = torch.randn(batch, 1, size, size)
    x1 = torch.randn(1, 1, size, size)
    volume = torch.randn(1, 1, size, size, slices)
    results: dict[str, Result] = {}
    runners: dict[str, dict[str, nn.Module]] = {}
    for name in names:
        label, build, fusable = MODELS[name]
        res = results[name] = Result(label)
        try:
            torch.manual_seed(0)
            model = build(1).eval()
        except ImportError as err:
            res.note = f"not run: {err}"
            continue
        res.params = sum(p.numel() for p in model.parameters())
        runners[name] = {"eager": model}
        if fusable:
            runners[name]["fused"] = fuse_norms(model)
        else:
            res.note = "no foldable BatchNorm (Instance/Group/LayerNorm or BN outside conv-BN units)"
    times: dict[tuple[str, str, int], list[float]] = {}
    for name, modes in runners.items():
        for mode, model in modes.items():
            for x in (x8, x1):
                for _ in range(warmup):
                    _once(lambda model=model, x=x: model(x))
    for _ in range(rounds):
        for name, modes in runners.items():
            for mode, model in modes.items():
                for x in (x8, x1):
                    times.setdefault((name, mode, x.shape[0]), []).append(_once(lambda model=model, x=x: model(x)))
    for name, modes in runners.items():
        res = results[name]
        res.throughput = batch / min(times[(name, "eager", batch)])
        res.latency_ms = 1000 * min(times[(name, "eager", 1)])
        if "fused" in modes:
            res.throughput_fused = batch / min(times[(name, "fused", batch)])
            res.latency_fused_ms = 1000 * min(times[(name, "fused", 1)])
    runners.clear()
    for name in names:
        res = results[name]
        if res.params == 0:
            continue
        _, build, fusable = MODELS[name]
        # 2.5D: a (2k+1)-slice stack per slice, the network built for that many channels (fused if it can be)
        torch.manual_seed(0)
        stack_model = build(2 * context + 1).eval()
        stack_model = fuse_norms(stack_model) if fusable else stack_model
        inferer = SliceStackInferer(spatial_dim=2, context=context, sw_batch_size=batch)
        with torch.no_grad():
            inferer(volume[..., : 2 * context + 1], stack_model)  # warm-up on a thin volume
            t = time.perf_counter()
            out = inferer(volume, stack_model)
            res.volume_s = time.perf_counter() - t
        res.extra["volume_out"] = tuple(out.shape)
        del stack_model
    return [results[n] for n in names]


def _loadavg() -> str:
    try:
        with open("/proc/loadavg") as f:
            return " ".join(f.read().split()[:3])
    except OSError:
        return "n/a"


def machine() -> str:
    """A one-line description of the CPU, core count, torch threads and versions."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    import os

    import monai

    return (
        f"{cpu}; {os.cpu_count()} logical cores, torch threads {torch.get_num_threads()}; "
        f"Python {platform.python_version()}, torch {torch.__version__}, MONAI {monai.__version__}; {platform.system()}"
    )


def table(results: list[Result], size: int, batch: int, slices: int, context: int) -> str:
    """The Markdown table."""

    def num(v: float, fmt: str) -> str:
        return "n/a" if math.isnan(v) else format(v, fmt)

    lines = [
        f"| network | params (M) | img/s {size}² b{batch} | img/s fused | latency b1 (ms) | latency fused (ms) "
        f"| {size}²×{slices} volume, 2.5D k={context} (s) |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        lines.append(
            f"| {r.label} | {num(r.params / 1e6 if r.params else float('nan'), '.2f')} | {num(r.throughput, '.1f')} "
            f"| {num(r.throughput_fused, '.1f')} | {num(r.latency_ms, '.1f')} | {num(r.latency_fused_ms, '.1f')} "
            f"| {num(r.volume_s, '.1f')} |"
        )
    notes = [f"- {r.label}: {r.note}" for r in results if r.note]
    return "\n".join(lines + ([""] + notes if notes else []))


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="*", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--quick", action="store_true", help="smoke test: 64², 4 slices, one timed call")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved timing rounds (best of)")
    parser.add_argument("--markdown", default=None, help="also write the table to this file")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    settings = (
        dict(size=64, batch=2, slices=4, rounds=1, warmup=1)
        if args.quick
        else dict(size=256, batch=8, slices=200, rounds=args.rounds)
    )
    load_before = _loadavg()
    started = time.perf_counter()
    results = run(args.models, **settings)
    elapsed = time.perf_counter() - started
    text = "\n".join(
        [
            f"Machine: {machine()}",
            f"Date: {datetime.date.today().isoformat()}; benchmark wall time {elapsed:.0f} s; "
            f"load average before / after: {load_before} / {_loadavg()}; img/s and latency: best of "
            f"{settings['rounds']} interleaved rounds",
            "",
            table(results, settings["size"], settings["batch"], settings["slices"], 1),
        ]
    )
    sys.stdout.write(text + "\n")
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
