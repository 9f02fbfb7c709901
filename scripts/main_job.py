"""medmamba's main job.

By default: every MobileMamba variant built, fused, checked (fusion changes no output) and timed
on a sample input; a table is printed.

``--bundles`` (work in progress, issue 6: the bundles are not finished) runs the whole pipeline of
both MONAI bundles on the embedded default data. Stages (each a subprocess, timed):

1. make the semi-synthetic default data set (``python -m medmamba.data make-default``);
2. for each bundle (classification, segmentation): train the teacher, train the student with
   knowledge distillation, evaluate on the held-out test subjects, fuse and export (TorchScript
   via ``monai.bundle ckpt_export``, ONNX), run inference on a DICOM series and on a NIfTI volume;
3. print a final table: metrics, time per stage, output paths.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "data" / "default"
BUNDLES = {
    "classification": ROOT / "bundles" / "mobilemamba_classification",
    "segmentation": ROOT / "bundles" / "mobilemamba_segmentation",
}


@dataclass
class Stage:
    """One timed step of the pipeline."""

    bundle: str
    name: str
    argv: list[str]
    outputs: list[Path] = field(default_factory=list)
    seconds: float = 0.0
    ok: bool = False


def bundle_run(bundle: Path, config: str, *overrides: str) -> list[str]:
    """``python -m monai.bundle run`` of one config of a bundle."""
    configs = bundle / "configs"
    return [
        sys.executable,
        "-m",
        "monai.bundle",
        "run",
        "--config_file",
        str(configs / config),
        "--bundle_root",
        str(bundle),
        "--meta_file",
        str(configs / "metadata.json"),
        "--logging_file",
        str(configs / "logging.conf"),
        *overrides,
    ]


def bundle_export_torchscript(bundle: Path) -> list[str]:
    """TorchScript of the fused network with MONAI's ``ckpt_export``."""
    configs = bundle / "configs"
    return [
        sys.executable,
        "-m",
        "monai.bundle",
        "ckpt_export",
        "network_def",
        "--filepath",
        str(bundle / "models" / "model.ts"),
        "--ckpt_file",
        str(bundle / "models" / "model.pt"),
        "--meta_file",
        str(configs / "metadata.json"),
        "--config_file",
        str(configs / "inference.json"),
        "--bundle_root",
        str(bundle),
    ]


def test_cases() -> tuple[Path, Path]:
    """A test subject's DICOM series and another test subject's NIfTI volume."""
    datalist = json.loads((DATA / "datalist_segmentation.json").read_text())
    test = datalist["test"]
    with_dicom = [c for c in test if c.get("dicom")]
    dicom = DATA / with_dicom[0]["dicom"]
    nifti_case = next((c for c in test if c is not with_dicom[0]), test[0])
    return dicom, DATA / nifti_case["image"]


def pipeline(skip_teacher: bool) -> list[Stage]:
    stages = [Stage("data", "make default data", [sys.executable, "-m", "medmamba.data", "make-default"], [DATA])]
    for name, bundle in BUNDLES.items():
        models, out = bundle / "models", bundle / "eval"
        if not skip_teacher:
            stages.append(Stage(name, "train teacher", bundle_run(bundle, "train_teacher.json"), [models / "teacher.pt"]))
        stages.append(
            Stage(name, "train student (KD)", bundle_run(bundle, "train.json"), [models / "model.pt", models / "model_ema.pt"])
        )
        stages.append(Stage(name, "evaluate (test)", bundle_run(bundle, "evaluate.json"), [out / "metrics.json"]))
        stages.append(Stage(name, "export TorchScript", bundle_export_torchscript(bundle), [models / "model.ts"]))
        stages.append(
            Stage(name, "export ONNX + check", bundle_run(bundle, "inference.json", "--run_id", "export_onnx"), [models / "model.onnx"])
        )
    return stages


def inference_stages() -> list[Stage]:
    dicom, nifti = test_cases()
    stages = []
    for name, bundle in BUNDLES.items():
        for kind, path in (("DICOM series", dicom), ("NIfTI volume", nifti)):
            out = bundle / "eval" / f"inference_{kind.split()[0].lower()}"
            stages.append(
                Stage(
                    name,
                    f"inference, {kind}",
                    bundle_run(bundle, "inference.json", "--input_path", str(path), "--output_dir", str(out)),
                    [out],
                )
            )
    return stages


def run_stage(stage: Stage, log_dir: Path) -> None:
    log = log_dir / f"{stage.bundle}_{stage.name.split()[0]}_{int(time.time())}.log"
    print(f"\n=== [{stage.bundle}] {stage.name} (log: {log.relative_to(ROOT)})", flush=True)
    t0 = time.perf_counter()
    with open(log, "w", encoding="utf-8") as f:
        proc = subprocess.Popen(stage.argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        assert proc.stdout is not None
        for line in proc.stdout:  # progress bars and logs stay visible
            sys.stdout.write(line)
            f.write(line)
        proc.wait()
    stage.seconds = time.perf_counter() - t0
    stage.ok = proc.returncode == 0 and all(p.exists() for p in stage.outputs)
    if not stage.ok:
        raise SystemExit(
            f"stage '{stage.name}' of {stage.bundle} failed (exit code {proc.returncode}; "
            f"missing outputs: {[str(p) for p in stage.outputs if not p.exists()]}); see {log}"
        )


def metrics_rows() -> list[tuple[str, str, float]]:
    rows = []
    for name, bundle in BUNDLES.items():
        path = bundle / "eval" / "metrics.json"
        if path.exists():
            for key, value in json.loads(path.read_text()).items():
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    rows.append((name, key, float(value)))
    return rows


def print_summary(stages: list[Stage], total: float) -> None:
    print("\n## Stages\n\n| bundle | stage | time (s) | outputs |\n|---|---|---|---|")
    for s in stages:
        outs = ", ".join(str(p.relative_to(ROOT)) for p in s.outputs)
        print(f"| {s.bundle} | {s.name} | {s.seconds:.0f} | {outs} |")
    print(f"\nTotal: {total / 60:.1f} min")
    print("\n## Test-subject metrics (held out from training)\n\n| bundle | metric | value |\n|---|---|---|")
    for bundle, key, value in metrics_rows():
        print(f"| {bundle} | {key} | {value:.4f} |")


def networks_table() -> int:
    import torch
    from tqdm import tqdm

    from medmamba.networks import MOBILEMAMBA_VARIANTS, MobileMamba, fuse_norms

    print("| variant | input | params (M) | fused vs unfused (rel. max diff) | latency b1 unfused (ms) | fused (ms) |")
    print("|---|---|---|---|---|---|")
    for name in tqdm(list(MOBILEMAMBA_VARIANTS), desc="variants", file=sys.stderr):
        torch.manual_seed(0)
        size = int(MOBILEMAMBA_VARIANTS[name]["img_size"])
        model = MobileMamba(name, num_classes=1000).eval()
        fused = fuse_norms(model)
        x = torch.randn(1, 3, size, size)
        times = {}
        with torch.no_grad():
            ref, out = model(x), fused(x)
            for label, m in (("unfused", model), ("fused", fused)):
                m(x)
                t0 = time.perf_counter()
                for _ in range(3):
                    m(x)
                times[label] = (time.perf_counter() - t0) / 3 * 1000
        err = ((ref - out).abs().max() / ref.abs().max()).item()
        params = sum(p.numel() for p in model.parameters()) / 1e6
        print(f"| {name.upper()} | {size} | {params:.2f} | {err:.1e} | {times['unfused']:.0f} | {times['fused']:.0f} |")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundles", action="store_true", help="run the bundle pipeline (work in progress)")
    parser.add_argument("--skip-teacher", action="store_true", help="with --bundles: reuse models/teacher.pt")
    args = parser.parse_args(argv)
    if not args.bundles:
        return networks_table()
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    log_dir = ROOT / "runs" / "main_job"
    log_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    stages = pipeline(args.skip_teacher)
    run_stage(stages[0], log_dir)  # the data must exist before the inference inputs can be chosen
    stages += inference_stages()
    for stage in stages[1:]:
        run_stage(stage, log_dir)
    print_summary(stages, time.perf_counter() - t0)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
