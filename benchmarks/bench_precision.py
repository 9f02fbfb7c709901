"""Training-step time in float32 vs bfloat16 autocast on the machine it runs on, side by side.

``amp: "auto"`` (:func:`medmamba.training.resolve_precision`) trains in bfloat16 on a CPU only where
the CPU computes it natively (AMX / AVX512-BF16): elsewhere bfloat16 is emulated, and the issue
measured a MONAI UNet training step 12x slower than in float32 on a Zen 3 EPYC (AVX2). This script
times, in one run, each case in float32 and under bfloat16 autocast:

- ``unet step``: the segmentation teacher, MONAI ``UNet`` (32, 64, 128, 256, 512), a training step
  (forward, DiceCE loss, backward, AdamW) on 4x3x128x128, as in the issue;
- ``unet forward``: the same network's forward pass under ``no_grad`` (the teacher in distillation);
- ``student step``: the segmentation student, ``MobileMambaSeg`` T2 (channels-last, as the bundle
  trains it), a training step on the bundle's batch of 16 stacks of 3x128x128.

It prints the CPU (``lscpu``'s model name), ``torch.backends.cpu.get_cpu_capability()``, whether
the CPU has native bfloat16 and what ``resolve_precision("auto", "cpu")`` picks (for the teachers'
configs; the students' configs pass ``cpu_bf16=False``). fp32 and bf16 steps are timed alternately,
so that other load on the machine slows both alike.

Usage::

    python benchmarks/bench_precision.py                   # threads: 1 and all usable cores
    python benchmarks/bench_precision.py --threads 2
    python benchmarks/bench_precision.py --emulate-avx2    # as an AVX2-only CPU: re-runs itself with
                                                           # ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

EMULATE_AVX2 = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"}

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import reexec_with_env  # noqa: E402

if __name__ == "__main__" and "--emulate-avx2" in sys.argv:  # the variables are read when torch loads
    reexec_with_env(__file__, EMULATE_AVX2)

import torch  # noqa: E402
from torch import nn  # noqa: E402

from medmamba.resources import cpu_capability, cpu_native_bf16, usable_cores  # noqa: E402
from medmamba.training import resolve_precision  # noqa: E402


def lscpu_model() -> str:
    """``lscpu``'s "Model name" (``/proc/cpuinfo`` where there is no lscpu)."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        for line in out.splitlines():
            if line.strip().startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.CalledProcessError):
        pass
    from medmamba.resources import cpu_model

    return cpu_model()


def _unet() -> nn.Module:
    from monai.networks.nets import UNet

    return UNet(spatial_dims=2, in_channels=3, out_channels=4, channels=(32, 64, 128, 256, 512), strides=(2, 2, 2, 2))


def _student() -> nn.Module:
    from medmamba.networks import MobileMambaSeg

    return MobileMambaSeg("t2", spatial_dims=2, in_channels=3, out_channels=4).to(memory_format=torch.channels_last)


def _step(model: nn.Module, batch: int, size: int, bf16: bool, channels_last: bool = False) -> Callable[[], None]:
    """One training step (forward, DiceCE, backward, AdamW) of ``model`` on a fixed random batch."""
    from monai.losses import DiceCELoss

    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 3, size, size, generator=g)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 4, (batch, 1, size, size), generator=g)
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True, include_background=False, batch=True)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    model.train()

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            out = model(x)
        if isinstance(out, (list, tuple)):
            out = out[0]
        loss = loss_fn(out.float(), y)
        loss.backward()
        optimizer.step()

    return step


def _forward(model: nn.Module, batch: int, size: int, bf16: bool) -> Callable[[], None]:
    x = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(0))
    model.eval()

    def forward() -> None:
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            model(x)

    return forward


def time_pair(
    fp32: Callable[[], None], bf16: Callable[[], None], repeats: int, budget_s: float, warmup: int = 1
) -> tuple[float, float]:
    """Median seconds of ``fp32()`` and ``bf16()``, timed alternately (a busy machine slows both alike):
    ``repeats`` pairs, fewer (at least 2) once ``budget_s`` is spent (emulated bf16 takes seconds a step)."""
    for _ in range(warmup):
        fp32()
        bf16()
    times: tuple[list[float], list[float]] = ([], [])
    start = time.perf_counter()
    for i in range(repeats):
        if i >= 2 and time.perf_counter() - start > budget_s:
            break
        for fn, out in ((fp32, times[0]), (bf16, times[1])):
            t0 = time.perf_counter()
            fn()
            out.append(time.perf_counter() - t0)
    return statistics.median(times[0]), statistics.median(times[1])


CASES: dict[str, tuple[str, Callable[[bool], Callable[[], None]]]] = {
    "unet step": ("UNet(32..512), 4x3x128x128", lambda bf16: _step(_unet(), 4, 128, bf16)),
    "unet forward": ("UNet(32..512), 4x3x128x128, no_grad", lambda bf16: _forward(_unet(), 4, 128, bf16)),
    "student step": ("MobileMambaSeg-T2, 16x3x128x128", lambda bf16: _step(_student(), 16, 128, bf16, True)),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", default=None, help="comma-separated torch thread counts (default: 1 and all usable cores)")
    parser.add_argument("--repeats", type=int, default=5, help="timed steps per case (median)")
    parser.add_argument("--budget", type=float, default=6.0, help="seconds per case after which to stop at >= 2 repeats")
    parser.add_argument("--cases", default=",".join(CASES), help=f"comma-separated, of {', '.join(CASES)}")
    parser.add_argument("--emulate-avx2", action="store_true",
                        help="re-run with ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 (an AVX2-only CPU)")
    args = parser.parse_args()
    cores = usable_cores()
    threads = sorted({1, cores}) if args.threads is None else [int(t) for t in args.threads.split(",")]
    cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    unknown = [c for c in cases if c not in CASES]
    if unknown:
        raise ValueError(f"--cases: unknown {unknown}; expected some of {list(CASES)}")
    if args.emulate_avx2 and any(os.environ.get(k) != v for k, v in EMULATE_AVX2.items()):
        raise RuntimeError(f"--emulate-avx2 needs {EMULATE_AVX2} set before torch loads; the re-run did not set them")

    native, why = cpu_native_bf16()
    auto = resolve_precision("auto", "cpu")
    env = {k: os.environ[k] for k in ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA") if k in os.environ}
    print(f"CPU (lscpu model name): {lscpu_model()}; usable cores: {cores}; torch {torch.__version__}")
    print(f"torch.backends.cpu.get_cpu_capability(): {cpu_capability()}; environment: {env or 'none set'}")
    student = resolve_precision("auto", "cpu", cpu_bf16=False)
    print(f"native bf16: {'yes' if native else 'no'} ({why}); resolve_precision('auto', 'cpu') -> {auto.name} "
          f"(the UNet teachers' configs); with cpu_bf16=False -> {student.name} (the MobileMamba students' configs)")
    print(f"load average at the start: {os.getloadavg()[0]:.2f}; fp32 and bf16 steps timed alternately, medians of {args.repeats} (at least 2 within {args.budget:g} s a case)")
    print()
    print("| case | input | threads | fp32 (s) | bf16 autocast (s) | bf16 / fp32 |")
    print("|---|---|---|---|---|---|")
    for n in threads:
        torch.set_num_threads(n)
        for case in cases:
            label, build = CASES[case]
            torch.manual_seed(0)
            fp32 = build(False)
            torch.manual_seed(0)
            t32, t16 = time_pair(fp32, build(True), args.repeats, args.budget)
            print(f"| {case} | {label} | {n} | {t32:.3f} | {t16:.3f} | {t16 / t32:.2f}x |", flush=True)
    print(f"\nload average at the end: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
