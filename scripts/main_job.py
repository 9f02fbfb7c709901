"""medmamba's main job: both MONAI bundles end to end on the embedded default data.

Stages (each a subprocess of ``python -m monai.bundle ...``, timed, its output in
``runs/main_job/<bundle>_<stage>.log``):

1. make the semi-synthetic default data set (``python -m medmamba.data make-default``; reused when
   it is already there and complete);
2. for each bundle (classification, segmentation), the two side by side, one compute thread each
   (this machine has two cores): train the teacher, train the student with knowledge distillation
   (the classification bundle: two students from seeds 0 and 1 at the same time, stacked into the
   seed ensemble it deploys), evaluate on the held-out test subjects (the weights each bundle
   deploys, ``DEPLOY_CHECKPOINT``, and for the classification bundle also its best-validation
   weights, ``BEST_CHECKPOINT``), fuse and export the
   deployed weights (TorchScript through ``monai.bundle ckpt_export``, ONNX through the bundle's
   ``export_onnx``, both checked against the eager fused network), run inference on a DICOM series (checkpoint) and on a NIfTI volume
   (the exported TorchScript model);
3. print a final table: test-split metrics, time per stage, output paths.

``--networks`` instead builds every MobileMamba variant, fuses it, checks that fusion changes no
output, and prints a latency table. ``--sequential`` runs the bundles one after the other.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tqdm import tqdm

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
    returncode: int | None = None
    log: Path | None = None
    #: Consecutive stages of a chain with the same group run at the same time.
    group: str | None = None


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


def bundle_export_torchscript(bundle: Path, checkpoint: str) -> list[str]:
    """TorchScript of the fused network with MONAI's ``ckpt_export`` (weights ``models/<checkpoint>``)."""
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
        str(bundle / "models" / checkpoint),
        "--meta_file",
        str(configs / "metadata.json"),
        "--config_file",
        str(configs / "inference.json"),
        "--bundle_root",
        str(bundle),
    ]


def test_cases() -> tuple[Path, Path]:
    """A test subject's DICOM series and another test subject's NIfTI volume (never trained on)."""
    datalist = json.loads((DATA / "datalist_segmentation.json").read_text())
    test = datalist["test"]
    with_dicom = [c for c in test if c.get("dicom")]
    dicom = DATA / with_dicom[0]["dicom"]
    nifti_case = next((c for c in test if c is not with_dicom[0]), test[0])
    return dicom, DATA / nifti_case["image"]


#: Compute threads of the student training of a bundle without a seed ensemble.
STUDENT_THREADS = {"segmentation": 1}

#: Compute threads of the evaluation, ONNX export and inference stages, where they differ from the
#: configs' default (1): the classification chain ends last, with both cores to itself.
POST_TRAINING_THREADS = {"classification": 2}

#: Seeds of the students a bundle trains and deploys as a seed ensemble (``configs/ensemble.json``
#: stacks their checkpoints into one); the members train at the same time, one thread each. Member 0
#: writes the single-student file names (``model.pt``, ``model_ema.pt``), member ``i``
#: ``model_seed<i>.pt`` / ``model_seed<i>_ema.pt``.
ENSEMBLE_SEEDS = {"classification": (0, 1)}

#: The weights each bundle deploys (the ``ckpt_file`` default of its evaluate/inference configs):
#: the classification bundle's ensemble of the members' final EMA weights, the segmentation bundle's
#: best-validation checkpoint.
DEPLOY_CHECKPOINT = {"classification": "model_ensemble_ema.pt", "segmentation": "model.pt"}

#: The best-validation weights of each bundle (evaluated beside the deployed ones when they differ).
BEST_CHECKPOINT = {"classification": "model_ensemble.pt", "segmentation": "model.pt"}


def evaluations(name: str, bundle: Path) -> list[tuple[str, str, Path]]:
    """The test evaluations of one bundle, as ``(label, checkpoint file, output folder)``: its deployed
    weights (the evaluate config's default, into ``eval/``) and, when those are not its best-validation
    weights (``BEST_CHECKPOINT``), those as well (into ``eval/best_checkpoint``)."""
    deployed, best = DEPLOY_CHECKPOINT.get(name, "model.pt"), BEST_CHECKPOINT.get(name, "model.pt")
    runs = [(f"{name} ({deployed})", deployed, bundle / "eval")]
    if deployed != best:
        runs.append((f"{name} ({best}, best validation)", best, bundle / "eval" / "best_checkpoint"))
    return runs


def student_stages(name: str, bundle: Path) -> list[Stage]:
    """Training of the student, or of the seed-ensemble members side by side and their stacking."""
    models = bundle / "models"
    seeds = ENSEMBLE_SEEDS.get(name, ())
    if not seeds:
        threads = ("--num_threads", str(STUDENT_THREADS.get(name, 1)))
        argv = bundle_run(bundle, "train.json", *threads)
        return [Stage(name, "train student (KD)", argv, [models / "model.pt", models / "model_ema.pt"])]
    stages, members = [], []
    for i, seed in enumerate(seeds):
        member = "model" if i == 0 else f"model_seed{seed}"
        members.append(member)
        extra = () if i == 0 else ("--model_name", member, "--log_dir", str(bundle / "logs" / member))
        argv = bundle_run(bundle, "train.json", "--num_threads", "1", "--seed", str(seed), *extra)
        outputs = [models / f"{member}.pt", models / f"{member}_ema.pt"]
        stages.append(Stage(name, f"train student (KD), seed {seed}", argv, outputs, group="students"))
    argv = bundle_run(bundle, "ensemble.json", "--members", json.dumps(members))
    outputs = [models / DEPLOY_CHECKPOINT[name], models / BEST_CHECKPOINT[name]]
    stages.append(Stage(name, f"stack the {len(seeds)} students into an ensemble", argv, outputs))
    return stages


def bundle_stages(name: str, bundle: Path, skip_teacher: bool) -> list[Stage]:
    """The stages of one bundle, in order."""
    models, out = bundle / "models", bundle / "eval"
    stages: list[Stage] = []
    if not skip_teacher:
        stages.append(Stage(name, "train teacher", bundle_run(bundle, "train_teacher.json"), [models / "teacher.pt"]))
    stages += student_stages(name, bundle)
    (_, deployed, _), *others = evaluations(name, bundle)
    threads = ("--num_threads", str(POST_TRAINING_THREADS[name])) if name in POST_TRAINING_THREADS else ()
    argv = bundle_run(bundle, "evaluate.json", *threads)
    stages.append(Stage(name, "evaluate (test)", argv, [out / "metrics.json"]))
    for _, checkpoint, folder in others:
        argv = bundle_run(bundle, "evaluate.json", "--ckpt_file", str(models / checkpoint), "--output_dir", str(folder), *threads)
        stages.append(Stage(name, "evaluate (test), best-val checkpoint", argv, [folder / "metrics.json"]))
    stages.append(Stage(name, "export TorchScript", bundle_export_torchscript(bundle, deployed), [models / "model.ts"]))
    argv = bundle_run(bundle, "inference.json", "export_onnx", *threads)
    stages.append(Stage(name, "export ONNX + check", argv, [models / "model.onnx"]))
    dicom, nifti = test_cases()
    for kind, path, extra in (("DICOM series", dicom, ()), ("NIfTI volume, TorchScript", nifti, ("--use_torchscript", "true"))):
        out = bundle / "eval" / f"inference_{kind.split()[0].lower()}"
        argv = bundle_run(bundle, "inference.json", "--input_path", str(path), "--output_dir", str(out), *extra, *threads)
        stages.append(Stage(name, f"inference, {kind}", argv, [out]))
    return stages


def run_stage(stage: Stage, log_dir: Path) -> None:
    """Run one stage; its output (with the engines' progress bars) goes to its log."""
    slug = "".join(c if c.isalnum() else "_" for c in stage.name.lower()).strip("_")
    log = log_dir / f"{stage.bundle}_{'_'.join(filter(None, slug.split('_')))}.log"
    stage.log = log
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # idle OpenMP threads sleep instead of spinning on a shared core
    t0 = time.perf_counter()
    with open(log, "w", encoding="utf-8") as f:
        proc = subprocess.run(stage.argv, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT, env=env, check=False)
    stage.seconds = time.perf_counter() - t0
    stage.returncode = proc.returncode
    stage.ok = proc.returncode == 0 and all(p.exists() for p in stage.outputs)


def stage_groups(stages: list[Stage]) -> list[list[Stage]]:
    """The stages of a chain in run order, consecutive stages of one ``group`` together."""
    groups: list[list[Stage]] = []
    for stage in stages:
        if groups and stage.group is not None and groups[-1][-1].group == stage.group:
            groups[-1].append(stage)
        else:
            groups.append([stage])
    return groups


def run_chain(stages: list[Stage], log_dir: Path, bar: tqdm) -> None:
    """Run the stages of one bundle in order (a group's stages at once), stopping at the first failure."""
    for group in stage_groups(stages):
        bar.set_postfix_str(" | ".join(s.name for s in group))
        if len(group) == 1:
            run_stage(group[0], log_dir)
        else:
            workers = [threading.Thread(target=run_stage, args=(s, log_dir), daemon=True) for s in group]
            for w in workers:
                w.start()
            for w in workers:
                w.join()
        bar.update(len(group))
        if not all(s.ok for s in group):
            return


def metrics_rows() -> list[tuple[str, str, float]]:
    rows = []
    for name, bundle in BUNDLES.items():
        for label, _, folder in evaluations(name, bundle):
            path = folder / "metrics.json"
            if not path.exists():
                continue
            for key, value in json.loads(path.read_text()).items():
                counts = key.startswith(("n_", "num_")) or key.endswith("_time_s") or key in ("top_k", "threshold")
                if isinstance(value, (int, float)) and not isinstance(value, bool) and not counts:
                    rows.append((label, key, float(value)))
    return rows


def print_summary(stages: list[Stage], total: float) -> None:
    print("\n## Stages\n\n| bundle | stage | status | time (s) | outputs |\n|---|---|---|---|---|")
    for s in stages:
        outs = ", ".join(str(p.relative_to(ROOT)) for p in s.outputs)
        status = "ok" if s.ok else ("not run" if s.returncode is None else f"FAILED (exit {s.returncode}; log {s.log})")
        print(f"| {s.bundle} | {s.name} | {status} | {s.seconds:.0f} | {outs} |")
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
    parser.add_argument("--networks", action="store_true", help="only the variants' fusion check and latency table")
    parser.add_argument("--bundles", action="store_true", help="the bundle pipeline (the default; kept for old scripts)")
    parser.add_argument("--skip-teacher", action="store_true", help="reuse each bundle's models/teacher.pt")
    parser.add_argument("--sequential", action="store_true", help="run the two bundles one after the other")
    parser.add_argument("--only", choices=sorted(BUNDLES), default=None, help="run one bundle only")
    args = parser.parse_args(argv)
    if args.networks:
        return networks_table()
    from tqdm import tqdm

    log_dir = ROOT / "runs" / "main_job"
    log_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    data = Stage("data", "make default data", [sys.executable, "-m", "medmamba.data", "make-default"], [DATA])
    print(f"[data] making the default data set (log: {log_dir.relative_to(ROOT)}/data_make_default.log)", flush=True)
    run_stage(data, log_dir)
    if not data.ok:
        print_summary([data], time.perf_counter() - t0)
        return 1
    names = [args.only] if args.only else list(BUNDLES)
    chains = {name: bundle_stages(name, BUNDLES[name], args.skip_teacher) for name in names}
    print(
        f"[bundles] {', '.join(names)}: {sum(map(len, chains.values()))} stages, "
        f"{'one after the other' if args.sequential else 'side by side, one thread each'}; "
        f"per-stage logs (with the engines' progress bars) in {log_dir.relative_to(ROOT)}/",
        flush=True,
    )
    bars = {
        name: tqdm(
            total=len(chain), desc=f"{name:>14}", position=i, unit="stage", leave=True, file=sys.stdout,
            bar_format="{desc}: {bar:20} {n_fmt}/{total_fmt} stages [{elapsed}]{postfix}",
        )
        for i, (name, chain) in enumerate(chains.items())
    }
    if args.sequential:
        for name, chain in chains.items():
            run_chain(chain, log_dir, bars[name])
    else:
        threads = [
            threading.Thread(target=run_chain, args=(chain, log_dir, bars[name]), daemon=True)
            for name, chain in chains.items()
        ]
        for t in threads:
            t.start()
        while any(t.is_alive() for t in threads):
            for t in threads:
                t.join(timeout=5.0)
            for bar in bars.values():
                bar.refresh()
    for bar in bars.values():
        bar.close()
    stages = [data] + [s for chain in chains.values() for s in chain]
    print_summary(stages, time.perf_counter() - t0)
    return 0 if all(s.ok for s in stages) else 1


if __name__ == "__main__":
    raise SystemExit(main())
