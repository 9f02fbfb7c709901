"""Export with dynamic shapes: export time and latency of eager, fused eager, the exported program and ONNX Runtime.

One run per network, side by side: the unfused eager network, the fused one (``fuse_norms``), the
``torch.export`` program of the fused network with a dynamic batch, height and width
(``export_dynamic``) and the default ONNX exporter's graph of it in ONNX Runtime
(``export_onnx_dynamic``), and the ahead-of-time compiled artefact of it (``compile_ahead_of_time``:
AOTInductor, dynamic batch, the benchmark's size), at batch 1 (latency) and batch 8 (per batch),
median of repeats, the machine and torch's CPU capability in the header.

    python benchmarks/bench_export.py --variants t2 b1 --size 224
"""

from __future__ import annotations

import argparse
import copy
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import torch  # noqa: E402

from common import machine_line, time_call  # noqa: E402

from medmamba.networks import (  # noqa: E402
    MobileMamba,
    compile_ahead_of_time,
    export_dynamic,
    export_onnx_dynamic,
    fuse_norms,
    load_compiled,
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variants", nargs="*", default=["t2", "b1"])
    parser.add_argument("--size", type=int, default=224, help="height and width (a multiple of 32, >= 128)")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    import onnxruntime as ort
    from tqdm import tqdm

    print(f"# export with dynamic shapes\n\nCPU: {machine_line()}; torch CPU capability "
          f"{torch.backends.cpu.get_cpu_capability()}; ONNX Runtime {ort.__version__}; {torch.get_num_threads()} threads\n")
    print("| network | torch.export (s) | ONNX export (s) | AOT compile (s) | batch | eager (ms) | fused eager (ms) "
          "| exported program (ms) | ONNX Runtime (ms) | compiled artefact (ms) "
          "| max rel. diff exported / ORT / compiled vs fused |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for variant in tqdm(args.variants, desc="networks", file=sys.stderr):
        torch.manual_seed(0)
        eager = MobileMamba(variant, in_channels=3, num_classes=1000).eval()
        with torch.no_grad():  # BatchNorm scales off their initial values (some start at 0) so every branch counts
            for m in eager.modules():
                if isinstance(m, torch.nn.BatchNorm2d):
                    m.weight.normal_(1.0, 0.2)
        fused = fuse_norms(copy.deepcopy(eager))  # the same weights, BatchNorms folded
        example = torch.randn(2, 3, args.size, args.size)
        t0 = time.perf_counter()
        program = export_dynamic(fused, example)
        t_export = time.perf_counter() - t0
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            path = export_onnx_dynamic(fused, example, Path(tmp) / f"{variant}.onnx")
            t_onnx = time.perf_counter() - t0
            t0 = time.perf_counter()
            compiled = load_compiled(compile_ahead_of_time(fused, example, Path(tmp) / f"{variant}.pt2"))
            t_aot = time.perf_counter() - t0
            opts = ort.SessionOptions()
            opts.intra_op_num_threads = torch.get_num_threads()
            opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
            session = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
            run = program.module()
            for batch in (1, 8):
                x = torch.randn(batch, 3, args.size, args.size)
                xn = x.numpy()
                with torch.no_grad():
                    # torch runners first: ONNX Runtime's spinning worker threads would steal their cores
                    ms = [1000 * time_call(lambda f=f: f(x), repeats=args.repeats) for f in (eager, fused, run)]
                    t_compiled = 1000 * time_call(lambda: compiled(x), repeats=args.repeats)
                    ref = fused(x)
                    diff_prog = float((run(x) - ref).abs().max() / ref.abs().max())
                    diff_aot = float((compiled(x) - ref).abs().max() / ref.abs().max())
                ms.append(1000 * time_call(lambda: session.run(None, {"x": xn}), repeats=args.repeats))
                ms.append(t_compiled)
                diff_ort = float(abs(session.run(None, {"x": xn})[0] - ref.numpy()).max() / ref.abs().max())
                cells = [variant, f"{t_export:.1f}", f"{t_onnx:.1f}", f"{t_aot:.1f}", str(batch),
                         *(f"{v:.1f}" for v in ms), f"{diff_prog:.1e} / {diff_ort:.1e} / {diff_aot:.1e}"]
                print("| " + " | ".join(cells) + " |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
