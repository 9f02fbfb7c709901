"""CPU traps found in the main job's profile, each timed against its fix in one run.

1. Depthwise convolution on small maps: ``nn.Conv2d`` against :class:`DepthwiseConv2d`'s training form.
2. Label maps: ``torch.argmax(x, dim=0)`` (MONAI's ``AsDiscrete(argmax=True)``) against
   :func:`medmamba.transforms.channel_argmax` (``torch.max(x, dim=0).indices``).
3. MR normalisation: the previous ``MRNormalize`` (torch boolean gathers twice, ``numpy.percentile``)
   against the current one (one numpy gather, one ``numpy.partition`` per quantile set).
4. The allocator: a segmentation training step (MobileMambaSeg-T2 at full resolution, 16 × 3 × 128²)
   and one volume's synthesis + normalisation, each in a child process with glibc's default
   allocator (``MEDMAMBA_ALLOCATOR=default``) and with :func:`medmamba.resources.tune_allocator`.

MobileMamba's last stages and its wavelet branch run depthwise convolutions (kernels 3-7) on maps of
1×1 to 4×4 pixels when the input is a 128×128 slice. The script times forward + backward of both
forms on the shapes a T2 training step of the classification bundle meets (batch 32), and one
MobileMamba-T2 lesion-map training step (forward, backward) with the plain convolution against the
one the network uses, side by side in one run, and checks the outputs are equal.

Usage::

    python benchmarks/bench_cpu_traps.py [--threads 1] [--repeats 20]

Run it under ``ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2`` as well to see an AVX2-only CPU's
kernels on an AVX-512 machine.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine_line, time_call  # noqa: E402

from medmamba.networks import MobileMambaSeg  # noqa: E402
from medmamba.networks.blocks import DepthwiseConv2d, small_map_depthwise_conv2d  # noqa: E402
from medmamba.transforms import MRNormalize, channel_argmax  # noqa: E402

#: (batch, channels, side, kernel) of the depthwise convolutions of MobileMamba-T2 on 128×128 slices
SHAPES = [(32, 144, 8, 3), (32, 448, 4, 7), (32, 288, 4, 3), (32, 768, 2, 5), (32, 368, 2, 3), (32, 896, 1, 3)]


def _plain(module: nn.Module) -> nn.Module:
    """The network with every DepthwiseConv2d's training form switched off (plain nn.Conv2d path)."""
    for m in module.modules():
        if isinstance(m, DepthwiseConv2d):
            m.small_map = -1
            m.forward = lambda x, m=m: m._conv_forward(x, m.weight, m.bias)  # type: ignore[method-assign]
    return module


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--allocator-child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.allocator_child:
        _allocator_child(max(3, args.repeats // 4))
        return 0
    torch.set_num_threads(args.threads)
    print(f"# {machine_line()}")
    print(f"# cpu capability {torch.backends.cpu.get_cpu_capability()}, threads {args.threads}")
    print("\n| map (N, C, side, kernel) | conv2d fwd+bwd (ms) | small-map form (ms) | speed-up | max abs diff | used in training |")
    print("|---|---|---|---|---|---|")
    for n, c, side, k in SHAPES:
        x = torch.randn(n, c, side, side).contiguous(memory_format=torch.channels_last).requires_grad_(True)
        w = torch.randn(c, 1, k, k, requires_grad=True)
        diff = (F.conv2d(x, w, padding=k // 2, groups=c) - small_map_depthwise_conv2d(x, w, None)).abs().max().item()

        def conv() -> None:
            y = F.conv2d(x, w, padding=k // 2, groups=c)
            y.backward(torch.ones_like(y))

        def small() -> None:
            y = small_map_depthwise_conv2d(x, w, None)
            y.backward(torch.ones_like(y))

        a, b = time_call(conv, repeats=args.repeats), time_call(small, repeats=args.repeats)
        used = side <= DepthwiseConv2d(1, k).small_map or 2 * side - 1 < k
        print(f"| {(n, c, side, k)} | {a * 1e3:.2f} | {b * 1e3:.2f} | {a / b:.2f}x | {diff:.1e} | {'yes' if used else 'no'} |")

    torch.manual_seed(0)
    ours = MobileMambaSeg("t2", spatial_dims=2, in_channels=5, out_channels=5, output_stride=2)
    plain = _plain(MobileMambaSeg("t2", spatial_dims=2, in_channels=5, out_channels=5, output_stride=2))
    plain.load_state_dict(ours.state_dict())
    ours, plain = ours.to(memory_format=torch.channels_last), plain.to(memory_format=torch.channels_last)
    x = torch.randn(32, 5, 128, 128).contiguous(memory_format=torch.channels_last)

    def step(net: nn.Module) -> None:
        net.zero_grad(set_to_none=True)
        net(x).square().mean().backward()

    with torch.no_grad():
        diff = (ours(x) - plain(x)).abs().max().item()
    step(plain), step(ours)
    times: dict[str, list[float]] = {"plain": [], "ours": []}
    for _ in range(max(3, args.repeats // 4)):  # alternated, so that drift hits both alike
        for name, net in (("plain", plain), ("ours", ours)):
            times[name].append(time_call(lambda net=net: step(net), repeats=1, warmup=0))
    ta, tb = statistics.median(times["plain"]), statistics.median(times["ours"])
    print("\n| MobileMambaSeg-T2 (stride 2) training step, 32×5×128² | plain conv2d (ms) | DepthwiseConv2d (ms) | speed-up | max abs diff (train mode) |")
    print("|---|---|---|---|---|")
    print(f"| forward + backward | {ta * 1e3:.0f} | {tb * 1e3:.0f} | {ta / tb:.2f}x | {diff:.1e} |")

    probs = torch.rand(4, 128, 128, 115, generator=torch.Generator().manual_seed(0))
    ta = time_call(lambda: torch.argmax(probs, dim=0, keepdim=True), repeats=args.repeats // 2)
    tb = time_call(lambda: channel_argmax(probs), repeats=args.repeats // 2)
    same = bool(torch.equal(torch.argmax(probs, dim=0, keepdim=True), channel_argmax(probs)))
    print("\n| label map of 4×128×128×115 scores | torch.argmax dim 0 (ms) | channel_argmax (ms) | speed-up | equal |")
    print("|---|---|---|---|---|")
    print(f"| arg-max over channels | {ta * 1e3:.1f} | {tb * 1e3:.1f} | {ta / tb:.1f}x | {same} |")

    vol = torch.rand(1, 128, 128, 115, generator=torch.Generator().manual_seed(1)) * 100
    vol[:, :, :40] = 0  # background, as in a head volume
    ta = time_call(lambda: _previous_mr_normalize(vol), repeats=args.repeats // 2)
    tb = time_call(lambda: MRNormalize()(vol), repeats=args.repeats // 2)
    diff = (MRNormalize()(vol) - _previous_mr_normalize(vol)).abs().max().item()
    print("\n| MRNormalize of a 128×128×115 volume | previous (ms) | current (ms) | speed-up | max abs diff |")
    print("|---|---|---|---|---|")
    print(f"| clip 0.5-99.5 % + z-score | {ta * 1e3:.1f} | {tb * 1e3:.1f} | {ta / tb:.2f}x | {diff:.1e} |")
    _allocator_rows(args.repeats)
    return 0


def _allocator_child(repeats: int) -> None:
    """Time a segmentation training step and a volume's augmentation in this process; print JSON."""
    import json

    from medmamba.resources import configure_threads, tune_allocator
    from medmamba.transforms import RandDomainSynthesisd

    configure_threads(1)  # and the allocator, as in a bundle run
    state = tune_allocator()
    torch.manual_seed(0)
    net = MobileMambaSeg("t2", spatial_dims=2, in_channels=3, out_channels=4, output_stride=1)
    net = net.to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3)
    x = torch.randn(16, 3, 128, 128).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 4, (16, 128, 128))

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(net(x), y).backward()
        opt.step()

    labels = torch.randint(0, 8, (1, 128, 128, 115), generator=torch.Generator().manual_seed(1)).float()
    synth = RandDomainSynthesisd("image", label_key="generation", prob=1.0).set_random_state(0)
    norm = MRNormalize()

    def augment() -> None:
        norm(synth({"image": labels.clone(), "generation": labels})["image"])

    out = {"state": state, "step": time_call(step, repeats=repeats), "augment": time_call(augment, repeats=repeats)}
    print(json.dumps(out))


def _allocator_rows(repeats: int) -> None:
    import json
    import os
    import subprocess

    results = {}
    for name, extra in (("glibc default", {"MEDMAMBA_ALLOCATOR": "default"}), ("tune_allocator", {})):
        env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k != "MEDMAMBA_ALLOCATOR"}
        env.update(extra)
        done = subprocess.run(
            [sys.executable, __file__, "--allocator-child", "--repeats", str(repeats)],
            env=env, capture_output=True, text=True, check=True,
        )
        results[name] = json.loads(done.stdout.strip().splitlines()[-1])
    a, b = results["glibc default"], results["tune_allocator"]
    print(f"\n| one thread, child processes | glibc default (ms) | tune_allocator: {b['state']} (ms) | speed-up |")
    print("|---|---|---|---|")
    print(f"| segmentation training step, 16×3×128², full resolution | {a['step'] * 1e3:.0f} | {b['step'] * 1e3:.0f} | {a['step'] / b['step']:.2f}x |")
    print(f"| synthesis + MRNormalize of a 128×128×115 volume | {a['augment'] * 1e3:.0f} | {b['augment'] * 1e3:.0f} | {a['augment'] / b['augment']:.2f}x |")


def _previous_mr_normalize(img: torch.Tensor) -> torch.Tensor:
    """MRNormalize's defaults as computed before (torch boolean gathers twice, ``numpy.percentile``)."""
    out = img.clone()
    for c in range(img.shape[0]):
        x = img[c]
        thr = float(np.percentile(x.numpy(), 99)) * 0.1
        fg = x > thr
        lo, hi = (float(v) for v in np.percentile(x[fg].numpy(), [0.5, 99.5]))
        y = torch.clamp(x, min=lo, max=hi)
        v = y[fg]
        out[c] = (y - float(v.mean())) / float(v.std())
    return out


if __name__ == "__main__":
    raise SystemExit(main())
