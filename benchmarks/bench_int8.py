"""int8 post-training quantisation of the bundles' fused networks: validation metric and CPU latency.

For each trained bundle given, in one run and side by side:

1. the bundle's evaluation network (``evaluate.json``'s ``network``: the checkpoint loaded into the
   fused architecture) is exported to ONNX with a dynamic batch, height and width
   (:func:`medmamba.networks.export_onnx_dynamic`) -- the validation volumes' slices differ in size;
2. it is quantised to int8 (:func:`medmamba.networks.quantize_onnx_int8`: QDQ, int8 per-channel
   weights, uint8 activations) on slices of TRAINING volumes through the bundle's own inference
   preprocessing (:class:`medmamba.apps.deploy.CalibrationSlices`);
3. the bundle's own evaluation (``evaluate.json`` through MONAI's ``ConfigWorkflow``: its
   preprocessing, slice-stack inferer, flip TTA, post-processing and metric handlers) runs on the
   VALIDATION split (never the test split) twice, with ``network`` replaced by
   :class:`medmamba.networks.OnnxRuntimeNetwork` on the float32 graph and on the int8 graph:
   segmentation, the mean Dice of CSF / GM / WM (HD95 off, for time); classification, the volume
   AUC;
4. latency at batch 1 and 8 (median of repeats) of the torch fused network, the float32 graph and
   the int8 graph in ONNX Runtime, on training slices of the deployment size.

The int8 graph passes when its metric drop stays within the tolerance (``--dice_tolerance``,
``--auc_tolerance``). The CPU model and ``torch.backends.cpu.get_cpu_capability()`` head the output.

    python benchmarks/bench_int8.py --bundle_root bundles/mobilemamba_segmentation \\
        bundles/mobilemamba_classification --threads 2
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import torch  # noqa: E402

from common import machine_line, time_call  # noqa: E402

#: the metrics read from each bundle's ``metrics.json`` (the first is the headline)
METRICS = {
    "segmentation": ("mean_dice", "dice_csf", "dice_gm", "dice_wm"),
    "classification": ("volume_auc", "volume_accuracy", "slice_auc"),
}


def _kind(bundle_root: Path) -> str:
    config = json.loads((bundle_root / "configs" / "evaluate.json").read_text())
    return "classification" if "key_metric" in config else "segmentation"


def _parser(bundle_root: Path, config: str, overrides: dict[str, Any]) -> Any:
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(bundle_root / "configs" / config))
    parser.update(overrides)
    return parser


def _evaluate(
    bundle_root: Path, kind: str, network_expr: str, out_dir: Path, common: dict[str, Any]
) -> tuple[dict, float]:
    """The bundle's evaluate.json on the validation split with ``network`` replaced; metrics.json and wall time."""
    from monai.bundle import ConfigWorkflow

    overrides = {**common, "output_dir": str(out_dir), "network": network_expr}
    if kind == "segmentation":
        overrides["handlers#0#hd95"] = False
    configs = bundle_root / "configs"
    wf = ConfigWorkflow(config_file=str(configs / "evaluate.json"), meta_file=str(configs / "metadata.json"),
                        logging_file=str(configs / "logging.conf"), workflow_type="infer", run_id="run", **overrides)
    wf.initialize()
    t0 = time.perf_counter()
    wf.run()
    seconds = time.perf_counter() - t0
    wf.finalize()
    return json.loads((out_dir / "metrics.json").read_text()), seconds


def _latency(fns: dict[str, Any], x: torch.Tensor, repeats: int) -> dict[str, float]:
    out = {}
    for name, fn in fns.items():
        with torch.no_grad():
            out[name] = 1000 * time_call(lambda f=fn: f(x), repeats=repeats, warmup=2)
    return out


def bench_bundle(bundle_root: Path, args: argparse.Namespace, work: Path) -> list[str]:
    """Rows of the results tables for one bundle."""
    from medmamba.apps.deploy import CalibrationSlices
    from medmamba.networks import OnnxRuntimeNetwork, export_onnx_dynamic, quantize_onnx_int8

    kind = _kind(bundle_root)
    common: dict[str, Any] = {"bundle_root": str(bundle_root), "split": "validation", "num_threads": args.threads}
    if args.dataset_dir:
        common["dataset_dir"] = args.dataset_dir
    if args.max_volumes:
        common["dataset#data"] = (f"$monai.data.load_decathlon_datalist(@datalist, True, @split, "
                                  f"base_dir=@dataset_dir)[:{int(args.max_volumes)}]")
    evaluate = _parser(bundle_root, "evaluate.json", {**{k: v for k, v in common.items() if "#" not in k},
                                                      "channels_last": False})
    network = evaluate.get_parsed_content("network").eval()
    in_channels = int(evaluate.get_parsed_content("in_channels"))
    datalist, dataset_dir = evaluate.get_parsed_content("datalist"), evaluate.get_parsed_content("dataset_dir")
    inference = _parser(bundle_root, "inference.json",
                        {k: v for k, v in common.items() if k in ("bundle_root", "dataset_dir")})
    t0 = time.perf_counter()
    calibration = list(CalibrationSlices(datalist, inference.get_parsed_content("preprocessing"),
                                         int(inference.get_parsed_content("context")), None, base_dir=dataset_dir,
                                         split="training", num_volumes=args.calibration_volumes,
                                         slices_per_volume=args.calibration_slices, batch_size=8))
    t_calib_data = time.perf_counter() - t0
    fp32_path, int8_path = work / f"{kind}_fp32.onnx", work / f"{kind}_int8.onnx"
    t0 = time.perf_counter()
    example = torch.randn(2, in_channels, 128, 128, generator=torch.Generator().manual_seed(0))
    for name in ("onnxscript", "onnx_ir"):  # the exporter's passes log at INFO under the bundle's logging config
        logging.getLogger(name).setLevel(logging.WARNING)
    export_onnx_dynamic(network, example, fp32_path)
    t_export = time.perf_counter() - t0
    t0 = time.perf_counter()
    quantize_onnx_int8(fp32_path, int8_path, calibration)
    t_quant = time.perf_counter() - t0
    fp32, int8 = OnnxRuntimeNetwork(fp32_path), OnnxRuntimeNetwork(int8_path)
    check = calibration[-1]
    with torch.no_grad():
        ref = network(check)
    err_fp32 = float((fp32(check) - ref).abs().max() / ref.abs().max())
    err_int8 = float((int8(check) - ref).norm() / ref.norm())
    print(f"{kind}: {sum(b.shape[0] for b in calibration)} calibration slices from {args.calibration_volumes} training "
          f"volumes ({t_calib_data:.0f} s), ONNX export {t_export:.0f} s, int8 quantisation {t_quant:.0f} s; on "
          f"{check.shape[0]} training slices {tuple(check.shape[2:])}: ORT fp32 vs torch max rel. error "
          f"{err_fp32:.1e}, int8 vs torch rms rel. error {err_int8:.3f}", file=sys.stderr, flush=True)
    results = {}
    for label, path in (("ORT fp32", fp32_path), ("ORT int8", int8_path)):
        expr = f"$medmamba.networks.OnnxRuntimeNetwork({str(path)!r})"
        results[label] = _evaluate(bundle_root, kind, expr, work / f"{kind}_{label.split()[1]}", common)
        print(f"{kind} {label}: {results[label][0][METRICS[kind][0]]:.4f} in {results[label][1]:.0f} s",
              file=sys.stderr, flush=True)
    names = METRICS[kind]
    tolerance = args.dice_tolerance if kind == "segmentation" else args.auc_tolerance
    a, b = (results[k][0] for k in ("ORT fp32", "ORT int8"))
    cases = a.get("num_cases", a.get("n_volumes", "?"))
    drop = a[names[0]] - b[names[0]]
    metric_row = (f"| {kind} | {names[0]} ({cases} validation volumes) | {a[names[0]]:.4f} | {b[names[0]]:.4f} | "
                  f"{-drop:+.4f} | drop <= {tolerance} | {'yes' if drop <= tolerance else 'NO'} | "
                  + ", ".join(f"{n} {a[n]:.4f} -> {b[n]:.4f}" for n in names[1:] if n in a and n in b)
                  + f" | {results['ORT fp32'][1]:.0f} / {results['ORT int8'][1]:.0f} |")
    rows = [metric_row]
    size = tuple(check.shape[2:])
    for batch in (1, 8):
        x = calibration[0][:1].repeat(batch, 1, 1, 1) if batch > calibration[0].shape[0] else calibration[0][:batch]
        ms = _latency({"torch": network, "fp32": fp32, "int8": int8}, x.contiguous(), args.repeats)
        rows.append(f"| {kind} | {batch} | {size[0]}x{size[1]} | {ms['torch']:.1f} | {ms['fp32']:.1f} | "
                    f"{ms['int8']:.1f} | {ms['fp32'] / ms['int8']:.2f}x |")
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle_root", nargs="+", required=True,
                        help="trained bundle folders (models/ with the checkpoint the bundle evaluates)")
    parser.add_argument("--dataset_dir", default=None, help="the data set (default: the bundle config's)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--calibration_volumes", type=int, default=4)
    parser.add_argument("--calibration_slices", type=int, default=12, help="slices per calibration volume")
    parser.add_argument("--max_volumes", type=int, default=0,
                        help="evaluate only the first N validation volumes (0: all)")
    parser.add_argument("--dice_tolerance", type=float, default=0.005, help="largest acceptable mean Dice drop")
    parser.add_argument("--auc_tolerance", type=float, default=0.01, help="largest acceptable volume AUC drop")
    parser.add_argument("--work_dir", default=None, help="where the ONNX files and evaluations go (default: temporary)")
    args = parser.parse_args(argv)
    import onnxruntime as ort

    from medmamba.resources import configure_threads

    configure_threads(args.threads)
    metric_rows, latency_rows = [], []
    with tempfile.TemporaryDirectory(prefix="bench_int8_") as tmp:
        work = Path(args.work_dir or tmp)
        work.mkdir(parents=True, exist_ok=True)
        for root in args.bundle_root:
            rows = bench_bundle(Path(root).resolve(), args, work)
            metric_rows.append(rows[0])
            latency_rows.extend(rows[1:])
    subset = f"first {args.max_volumes} validation volumes" if args.max_volumes else "all validation volumes"
    print(f"# int8 post-training quantisation (ONNX Runtime QDQ) of the bundles' fused networks\n\n"
          f"CPU: {machine_line()}; torch CPU capability {torch.backends.cpu.get_cpu_capability()}; ONNX Runtime "
          f"{ort.__version__}; {args.threads} threads. Calibration: {args.calibration_volumes} training volumes x "
          f"{args.calibration_slices} slices; evaluation: {subset}, the bundle's evaluate.json (segmentation without "
          f"HD95).\n")
    print("| bundle | metric | ORT fp32 | ORT int8 | change | tolerance | within | other metrics (fp32 -> int8) "
          "| evaluation time fp32 / int8 (s) |")
    print("|---|---|---|---|---|---|---|---|---|")
    print("\n".join(metric_rows))
    print("\n| bundle | batch | slice | torch fused (ms) | ORT fp32 (ms) | ORT int8 (ms) | int8 speed-up vs ORT fp32 |")
    print("|---|---|---|---|---|---|---|")
    print("\n".join(latency_rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
