"""Benchmark every MobileMamba variant on the CPU, unfused vs fused, against MONAI baselines.

For each variant at its native resolution (T2/T4 192, S6 224, B1 256, B2 384, B4 512):

- images/s at batch 8 and latency at batch 1 (inference, ``torch.no_grad``), unfused and fused
  (:func:`medmamba.networks.fuse_norms`), with the fast parallel selective scan;
- the peak resident memory of the batch-8 inference (measured in a fresh subprocess per case);
- for B1@256 also "the reference way" (sequential-loop scan, no fusion) for inference and for a
  training step (forward + backward + SGD step) at batch 8, and the ratios.

MONAI's ``EfficientNetBN("efficientnet-b0")`` and ``DenseNet121`` at 224 are measured in the same run.

``--peers`` measures instead the networks a user would pick in MobileMamba's place, in pairs of
similar ImageNet accuracy: fused MobileMamba-T2@192 against MobileNetV3-Large@224 (T2† 76.9 vs 75.2
top-1; ``benchmarks/mobilenet_v3.py``, torchvision's definition) and fused MobileMamba-S6@224
against MONAI's EfficientNet-B0@224 (S6† 80.7 vs 77.1), and fused B1@256 against the same network
run the reference implementation's CPU way (``b1-reference``: sequential-loop scan, no fusion): batch-1 latency and batch-8 images/s, each
pair in a fresh process with the two networks measured in alternation, the ratio ours/peer per pair, the CPU and torch's CPU capability in the
header. The peers run in eval mode as their libraries give them (BatchNorm not folded).

``--stem-layout`` measures the stem layout choice of :class:`~medmamba.networks.MobileMamba`
(``channels_last_stem``): the fused network with the stem run channels-last (the default) against
the same network with ``channels_last_stem=False``, both in one process and in alternation, the stem
alone and the whole network, 3-channel and 1-channel inputs.

Usage::

    python benchmarks/bench_networks.py [--json out.json] [--variants t2 b1] [--repeats 3]
    python benchmarks/bench_networks.py --peers [--threads 2]
    python benchmarks/bench_networks.py --stem-layout [--variants t2 s6 b1] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
from typing import Any

import torch
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import machine_info, machine_line, reexec_with_malloc_tuning, time_call  # noqa: E402

from medmamba.networks import MOBILEMAMBA_VARIANTS, MobileMamba, fuse_norms  # noqa: E402


def build(name: str, scan_backend: str = "parallel") -> tuple[nn.Module, int]:
    """A network by benchmark name and its input resolution."""
    if name == "efficientnet-b0":
        from monai.networks.nets import EfficientNetBN

        return EfficientNetBN("efficientnet-b0", pretrained=False, spatial_dims=2, in_channels=3, num_classes=1000), 224
    if name == "mobilenetv3-large":
        from mobilenet_v3 import MobileNetV3Large

        return MobileNetV3Large(num_classes=1000), 224
    if name == "b1-reference":  # the reference implementation's CPU way: sequential-loop scan, unfused
        return MobileMamba("b1", num_classes=1000, scan_backend="reference"), 256
    if name == "densenet121":
        from monai.networks.nets import DenseNet121

        return DenseNet121(spatial_dims=2, in_channels=3, out_channels=1000), 224
    model = MobileMamba(name, num_classes=1000, scan_backend=scan_backend)
    return model, int(MOBILEMAMBA_VARIANTS[name]["img_size"])


def measure_inference(name: str, fused: bool, scan_backend: str, repeats: int) -> dict[str, float]:
    torch.manual_seed(0)
    model, size = build(name, scan_backend)
    model.eval()
    if fused:
        model = fuse_norms(model, strict=False)
    x8, x1 = torch.randn(8, 3, size, size), torch.randn(1, 3, size, size)
    with torch.no_grad():
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        t8 = time_call(lambda: model(x8), repeats=repeats, warmup=1)
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        t1 = time_call(lambda: model(x1), repeats=max(repeats, 5), warmup=2)
    return {"images_per_s_b8": 8 / t8, "latency_b1_ms": 1000 * t1, "peak_mem_mib": (peak - base) / 1024}


def measure_train_step(name: str, scan_backend: str, repeats: int) -> dict[str, float]:
    torch.manual_seed(0)
    model, size = build(name, scan_backend)
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    x = torch.randn(8, 3, size, size)
    y = torch.randint(0, 1000, (8,))

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()

    return {"train_step_s_b8": time_call(step, repeats=repeats, warmup=1)}


def run_case(case: dict[str, Any]) -> dict[str, Any]:
    """Run one case in a fresh Python process (so that its peak memory is its own)."""
    out = subprocess.run(
        [sys.executable, os.path.abspath(__file__), "--case", json.dumps(case)],
        check=True,
        capture_output=True,
        text=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def _case_main(case: dict[str, Any]) -> None:
    if case.get("threads"):
        torch.set_num_threads(case["threads"])
    if case["kind"] == "pair":
        res = measure_pair(case["ours"], case["peer"], case["rounds"])
    elif case["kind"] == "stem":
        res = measure_stem_layout(case["name"], case["in_channels"], case["rounds"])
    elif case["kind"] == "infer":
        res = measure_inference(case["name"], case["fused"], case["scan"], case["repeats"])
    else:
        res = measure_train_step(case["name"], case["scan"], case["repeats"])
    print(json.dumps(res))


PEERS = (("t2", "mobilenetv3-large", 1.3), ("s6", "efficientnet-b0", 2.2), ("b1", "b1-reference", 1.6))


def measure_pair(ours: str, peer: str, rounds: int) -> dict[str, dict[str, float]]:
    """Ours (fused) and the peer in one process, measured in alternation (A, B, A, B, ...).

    On a shared or throttling machine the speed drifts over minutes; alternating the two networks
    round by round exposes both to the same drift, so their ratio is steadier than that of two
    separate runs. Returns medians per network: batch-8 images/s and batch-1 latency.
    """
    import statistics
    import time

    torch.manual_seed(0)
    nets, inputs = {}, {}
    for name, fused in ((ours, True), (peer, False)):
        model, size = build(name)
        model.eval()
        nets[name] = fuse_norms(model, strict=False) if fused else model
        inputs[name] = (torch.randn(8, 3, size, size), torch.randn(1, 3, size, size))
    times: dict[str, dict[int, list[float]]] = {name: {8: [], 1: []} for name in nets}
    with torch.no_grad():
        for name, net in nets.items():  # warm-up
            net(inputs[name][0])
            net(inputs[name][1])
        for _ in range(rounds):
            for batch, idx, reps in ((8, 0, 1), (1, 1, 5)):
                for name, net in nets.items():
                    t0 = time.perf_counter()
                    for _ in range(reps):
                        net(inputs[name][idx])
                    times[name][batch].append((time.perf_counter() - t0) / reps)
    return {name: {"images_per_s_b8": 8 / statistics.median(t[8]), "latency_b1_ms": 1000 * statistics.median(t[1])}
            for name, t in times.items()}


def measure_stem_layout(name: str, in_channels: int, rounds: int) -> dict[str, float]:
    """The fused network and its stem with ``channels_last_stem`` on and off, in alternation.

    Returns medians: stem batch-8 ms, whole-network batch-8 images/s and batch-1 latency for each
    setting (keys suffixed ``_cl`` and ``_nchw``), and the largest relative output difference.
    """
    import statistics
    import time

    torch.manual_seed(0)
    size = int(MOBILEMAMBA_VARIANTS[name]["img_size"])
    net = fuse_norms(MobileMamba(name, in_channels=in_channels, num_classes=1000))
    x8, x1 = torch.randn(8, in_channels, size, size), torch.randn(1, in_channels, size, size)
    times: dict[bool, dict[str, list[float]]] = {flag: {"stem": [], "b8": [], "b1": []} for flag in (True, False)}
    with torch.no_grad():
        outs = {}
        for flag in (True, False):
            net.channels_last_stem = flag
            outs[flag] = net(x8)
            net(x1)
        rel = float((outs[True] - outs[False]).abs().max() / outs[False].abs().max())
        for _ in range(rounds):
            for flag in (False, True):
                net.channels_last_stem = flag
                t0 = time.perf_counter()
                for _ in range(3):
                    net.forward_stem(x8)
                times[flag]["stem"].append((time.perf_counter() - t0) / 3)
                t0 = time.perf_counter()
                net(x8)
                times[flag]["b8"].append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                for _ in range(5):
                    net(x1)
                times[flag]["b1"].append((time.perf_counter() - t0) / 5)
    res: dict[str, float] = {"max_rel_diff": rel}
    for flag, tag in ((True, "cl"), (False, "nchw")):
        med = {k: statistics.median(v) for k, v in times[flag].items()}
        res[f"stem_b8_ms_{tag}"] = 1000 * med["stem"]
        res[f"images_per_s_b8_{tag}"] = 8 / med["b8"]
        res[f"latency_b1_ms_{tag}"] = 1000 * med["b1"]
    return res


def run_stem_layout(args: argparse.Namespace) -> int:
    """The stem layout choice, variant by variant, each case in a fresh process; prints the table."""
    from tqdm import tqdm

    cases = [(v.lower(), c) for v in args.variants for c in (3, 1)]
    rows = []
    for name, cin in tqdm(cases, desc="stem layout", file=sys.stderr):
        rows.append((name, cin, run_case({"kind": "stem", "name": name, "in_channels": cin,
                                          "rounds": max(args.repeats, 9), "threads": args.threads})))
    threads = f"{args.threads} torch thread(s)" if args.threads else f"{torch.get_num_threads()} torch threads"
    print(f"\nMachine: {machine_line()}; torch CPU capability {torch.backends.cpu.get_cpu_capability()}; {threads}; "
          f"load average {os.getloadavg()}\n")
    print("| fused network | in | stem b8 ms NCHW | stem b8 ms CL | stem ratio | img/s b8 NCHW stem | img/s b8 CL stem | "
          "ratio b8 | b1 ms NCHW stem | b1 ms CL stem | ratio b1 | max rel. diff |")
    print("|---" * 12 + "|")
    for name, cin, r in rows:
        size = int(MOBILEMAMBA_VARIANTS[name]["img_size"])
        print(f"| {name.upper()}@{size} | {cin} | {r['stem_b8_ms_nchw']:.2f} | {r['stem_b8_ms_cl']:.2f} | "
              f"{r['stem_b8_ms_nchw'] / r['stem_b8_ms_cl']:.2f}x | {r['images_per_s_b8_nchw']:.1f} | "
              f"{r['images_per_s_b8_cl']:.1f} | {r['images_per_s_b8_cl'] / r['images_per_s_b8_nchw']:.2f}x | "
              f"{r['latency_b1_ms_nchw']:.1f} | {r['latency_b1_ms_cl']:.1f} | "
              f"{r['latency_b1_ms_nchw'] / r['latency_b1_ms_cl']:.2f}x | {r['max_rel_diff']:.1e} |")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump({"machine": machine_info(), "stem_layout": [dict(r, name=n, in_channels=c) for n, c, r in rows]},
                      f, indent=1)
    return 0


def run_peers(args: argparse.Namespace) -> int:
    """Ours (fused) against the peer of similar accuracy, pair by pair, alternating; prints the ratios."""
    from tqdm import tqdm

    results: dict[str, dict[str, float]] = {}
    for ours, peer, _ in tqdm(PEERS, desc="pairs", file=sys.stderr):
        results.update(run_case({"kind": "pair", "ours": ours, "peer": peer, "rounds": max(args.repeats, 7),
                                 "threads": args.threads}))
    threads = f"{args.threads} torch thread(s)" if args.threads else f"{torch.get_num_threads()} torch threads"
    print(f"\nMachine: {machine_line()}; torch CPU capability {torch.backends.cpu.get_cpu_capability()}; {threads}; "
          f"load average {os.getloadavg()}\n")
    print("| pair (alternating, medians) | ours: img/s b8 | peer: img/s b8 | ratio b8 | ours: latency b1 (ms) | "
          "peer: latency b1 (ms) | ratio b1 | goal |")
    print("|---|---|---|---|---|---|---|---|")
    for ours, peer, goal in PEERS:
        o, p = results[ours], results[peer]
        label = f"MobileMamba-{ours.upper()}@{build(ours)[1]} fused vs {peer}@{build(peer)[1]}"
        print(f"| {label} | {o['images_per_s_b8']:.1f} | {p['images_per_s_b8']:.1f} | "
              f"{o['images_per_s_b8'] / p['images_per_s_b8']:.2f}x | {o['latency_b1_ms']:.1f} | {p['latency_b1_ms']:.1f} | "
              f"{p['latency_b1_ms'] / o['latency_b1_ms']:.2f}x | >= {goal}x |")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump({"machine": machine_info(), "peers": results}, f, indent=1)
    return 0


def params_of(name: str) -> int:
    model, _ = build(name)
    return sum(p.numel() for p in model.parameters())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variants", nargs="*", default=list(MOBILEMAMBA_VARIANTS))
    parser.add_argument("--baselines", nargs="*", default=["efficientnet-b0", "densenet121"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", default=None, help="write the results to this JSON file")
    parser.add_argument("--no-malloc-tuning", action="store_true")
    parser.add_argument("--threads", type=int, default=None, help="torch threads in every case (default: torch's)")
    parser.add_argument("--peers", action="store_true", help="ours against MobileNetV3-L and EfficientNet-B0")
    parser.add_argument("--stem-layout", action="store_true",
                        help="the fused network with its stem run channels-last vs NCHW (channels_last_stem)")
    parser.add_argument("--case", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.case:
        _case_main(json.loads(args.case))
        return 0
    reexec_with_malloc_tuning(__file__, args.no_malloc_tuning)
    if args.peers:
        return run_peers(args)
    if args.stem_layout:
        if args.variants == list(MOBILEMAMBA_VARIANTS):
            args.variants = ["t2", "s6", "b1"]
        return run_stem_layout(args)

    from tqdm import tqdm

    rows: list[dict[str, Any]] = []
    names = [v.lower() for v in args.variants] + list(args.baselines)
    def run_case_t(case: dict[str, Any]) -> dict[str, Any]:
        return run_case({**case, "threads": args.threads})

    for name in tqdm(names, desc="networks", file=sys.stderr):
        size = build(name)[1]
        row: dict[str, Any] = {"name": name, "input": size, "params": params_of(name)}
        is_mamba = name in MOBILEMAMBA_VARIANTS
        row["unfused"] = run_case_t({"kind": "infer", "name": name, "fused": False, "scan": "parallel", "repeats": args.repeats})
        row["fused"] = run_case_t({"kind": "infer", "name": name, "fused": is_mamba, "scan": "parallel", "repeats": args.repeats})
        if name == "b1":
            row["reference_way"] = run_case_t({"kind": "infer", "name": name, "fused": False, "scan": "reference", "repeats": 1})
            row["train_fast"] = run_case_t({"kind": "train", "name": name, "scan": "parallel", "repeats": args.repeats})
            row["train_reference_way"] = run_case_t({"kind": "train", "name": name, "scan": "reference", "repeats": 1})
        rows.append(row)

    threads = f", {args.threads} torch thread(s) per case" if args.threads else ""
    print(f"\nMachine: {machine_line()}{threads}; load average {os.getloadavg()}\n")
    head = "| network | input | params | img/s b8 unfused | img/s b8 fused | fused/unfused | latency b1 unfused (ms) | latency b1 fused (ms) | peak mem b8 fused (MiB) |"
    print(head)
    print("|---" * 9 + "|")
    for r in rows:
        u, f = r["unfused"], r["fused"]
        label = r["name"].upper() if r["name"] in MOBILEMAMBA_VARIANTS else f"MONAI {r['name']}"
        print(
            f"| {label} | {r['input']} | {r['params'] / 1e6:.2f} M | {u['images_per_s_b8']:.1f} | {f['images_per_s_b8']:.1f} | "
            f"{f['images_per_s_b8'] / u['images_per_s_b8']:.2f}x | {u['latency_b1_ms']:.0f} | {f['latency_b1_ms']:.0f} | {f['peak_mem_mib']:.0f} |"
        )
    for r in rows:
        if "reference_way" in r:
            ref, fused = r["reference_way"], r["fused"]
            tr_ref, tr_fast = r["train_reference_way"]["train_step_s_b8"], r["train_fast"]["train_step_s_b8"]
            print(
                f"\nB1@256 batch 8, the reference way (sequential scan, unfused) vs ours:\n"
                f"  inference: {ref['images_per_s_b8']:.1f} img/s vs fused {fused['images_per_s_b8']:.1f} img/s "
                f"= {fused['images_per_s_b8'] / ref['images_per_s_b8']:.2f}x\n"
                f"  training step: {tr_ref:.2f} s vs {tr_fast:.2f} s = {tr_ref / tr_fast:.2f}x"
            )
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump({"machine": machine_info(), "rows": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
