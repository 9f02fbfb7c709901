"""medmamba's main job: both MONAI bundles end to end on the embedded default data.

Stages (each a subprocess of ``python -m monai.bundle ...``, timed, its output in
``runs/main_job/<bundle>_<stage>.log``):

1. make the semi-synthetic default data set (``python -m medmamba.data make-default``; reused when
   it is already there and complete);
2. for each bundle (classification, segmentation), the two side by side, with the compute threads
   :func:`plan_threads` gives each stage from the cores this process may use (on two cores one
   thread per training process, as the job was sized; one core: everything one after the other):
   train the teacher, train the student with knowledge distillation
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
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from medmamba.resources import thread_env, usable_cores

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
    #: Compute threads of the stage's process (``--num_threads`` and the OpenMP/MKL environment);
    #: ``None`` leaves both as they are.
    threads: int | None = None


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


#: Seeds of the students a bundle trains and deploys as a seed ensemble (``configs/ensemble.json``
#: stacks their checkpoints into one); the members train at the same time (:func:`plan_threads`). Member 0
#: writes the single-student file names (``model.pt``, ``model_ema.pt``), member ``i``
#: ``model_seed<i>.pt`` / ``model_seed<i>_ema.pt``. Empty since classification 0.8: on the validation
#: suite (``benchmarks/shift_suite.py --seed 1``, 28 whole-head and skull-stripped subjects) the
#: two-seed ensemble of 0.7 ranked volumes no better than its seed-0 member (volume AUC 0.54 vs 0.58,
#: both near chance) at twice the training time. ``{"classification": (0, 1)}`` brings it back (then deploy
#: ``model_ensemble_ema.pt`` / ``model_ensemble.pt`` and set ``ensemble_size`` 2 in the configs).
ENSEMBLE_SEEDS: dict[str, tuple[int, ...]] = {}

#: The weights each bundle deploys (the ``ckpt_file`` default of its evaluate/inference configs):
#: the classification bundle's final EMA weights, the segmentation bundle's best-validation checkpoint.
DEPLOY_CHECKPOINT = {"classification": "model_ema.pt", "segmentation": "model.pt"}

#: The best-validation weights of each bundle (evaluated beside the deployed ones when they differ).
BEST_CHECKPOINT = {"classification": "model.pt", "segmentation": "model.pt"}


#: The chain that ends last (measured on two cores: the classification chain, by minutes): its
#: evaluation, export and inference stages get all the cores, the other chain being done by then.
LAST_CHAIN = "classification"


@dataclass(frozen=True)
class ThreadPlan:
    """How the main job shares the usable cores among the stages it runs side by side.

    Attributes:
        cores: the usable cores the plan is for.
        chains_side_by_side: whether the bundles' chains run at the same time.
        teacher: compute threads of each bundle's teacher training.
        student: compute threads of each student training process (each seed-ensemble member).
        members: student training processes of each bundle (its seed-ensemble members, else 1).
        members_side_by_side: whether a bundle's seed-ensemble members train at the same time.
        post_training: compute threads of each bundle's ensemble stacking, evaluation, export and
            inference stages.
    """

    cores: int
    chains_side_by_side: bool
    teacher: Mapping[str, int]
    student: Mapping[str, int]
    members: Mapping[str, int]
    members_side_by_side: Mapping[str, bool]
    post_training: Mapping[str, int]

    def describe(self) -> str:
        """One line for the job's log."""
        how = "side by side" if self.chains_side_by_side else "one after the other"
        parts = []
        for name in self.teacher:
            members = self.members[name]
            student = f"{self.student[name]}"
            if members > 1:
                student = f"{members} x {student} ({'at once' if self.members_side_by_side[name] else 'in turn'})"
            parts.append(
                f"{name}: teacher {self.teacher[name]}, student {student}, after training {self.post_training[name]}"
            )
        return f"{self.cores} usable core(s), bundles {how}; threads per process: " + "; ".join(parts)


def plan_threads(
    cores: int,
    bundles: Sequence[str] = tuple(BUNDLES),
    ensemble_seeds: Mapping[str, Sequence[int]] | None = None,
    sequential: bool = False,
    last_chain: str = LAST_CHAIN,
) -> ThreadPlan:
    """The compute threads of each stage of the main job for ``cores`` usable cores (a pure function).

    - 1 core (or ``sequential``): the chains run one after the other, seed-ensemble members too
      when there is a single core, each process with all the cores.
    - 2+ cores: the chains run side by side, each on its share of the cores (an odd core goes to
      ``last_chain``, the longer one); a teacher or single student uses its chain's share; the
      members of a seed ensemble train at the same time on that share, each ``share // members``
      threads (at least 1); after training, ``last_chain`` has all the cores (the other chain has
      ended), the others keep their share. On 2 cores this is the plan the job was sized with: one
      thread per training process (the classification members 1 + 1 beside the segmentation
      student), then 2 threads for the classification evaluation, export and inference.

    Args:
        cores: usable cores (:func:`medmamba.resources.usable_cores`), ``>= 1``.
        bundles: the bundles run, in order.
        ensemble_seeds: seeds of each bundle's seed ensemble (default :data:`ENSEMBLE_SEEDS`).
        sequential: run the chains one after the other even with several cores.
        last_chain: the chain that ends last.

    Raises:
        ValueError: ``cores < 1`` or no bundles.
    """
    if isinstance(cores, bool) or not isinstance(cores, int) or cores < 1:
        raise ValueError(f"cores must be an int >= 1, got {cores!r}.")
    names = list(bundles)
    if not names:
        raise ValueError("bundles must name at least one bundle, got none.")
    seeds = ENSEMBLE_SEEDS if ensemble_seeds is None else ensemble_seeds
    side_by_side = cores >= 2 and len(names) > 1 and not sequential
    if side_by_side:
        base, extra = divmod(cores, len(names))
        order = sorted(names, key=lambda n: n != last_chain)  # the odd cores go to the last chain first
        share = {n: base + (1 if order.index(n) < extra else 0) for n in names}
        share = {n: max(1, v) for n, v in share.items()}
    else:
        share = {n: cores for n in names}
    student, members, members_at_once, post = {}, {}, {}, {}
    for name in names:
        members[name] = max(1, len(seeds.get(name, ())))
        members_at_once[name] = members[name] > 1 and cores >= 2
        student[name] = max(1, share[name] // members[name]) if members_at_once[name] else share[name]
        post[name] = cores if (side_by_side and name == last_chain) else share[name]
    return ThreadPlan(cores, side_by_side, dict(share), student, members, members_at_once, post)


def evaluations(name: str, bundle: Path) -> list[tuple[str, str, Path]]:
    """The test evaluations of one bundle, as ``(label, checkpoint file, output folder)``: its deployed
    weights (the evaluate config's default, into ``eval/``) and, when those are not its best-validation
    weights (``BEST_CHECKPOINT``), those as well (into ``eval/best_checkpoint``)."""
    deployed, best = DEPLOY_CHECKPOINT.get(name, "model.pt"), BEST_CHECKPOINT.get(name, "model.pt")
    runs = [(f"{name} ({deployed})", deployed, bundle / "eval")]
    if deployed != best:
        runs.append((f"{name} ({best}, best validation)", best, bundle / "eval" / "best_checkpoint"))
    return runs


def student_stages(name: str, bundle: Path, plan: ThreadPlan | None = None) -> list[Stage]:
    """Training of the student, or of the seed-ensemble members (side by side where ``plan`` says so)
    and their stacking. ``plan`` defaults to :func:`plan_threads` for the usable cores."""
    plan = plan_threads(usable_cores()) if plan is None else plan
    models = bundle / "models"
    seeds = ENSEMBLE_SEEDS.get(name, ())
    threads = plan.student[name]
    if not seeds:
        argv = bundle_run(bundle, "train.json", "--num_threads", str(threads))
        stage = Stage(name, "train student (KD)", argv, [models / "model.pt", models / "model_ema.pt"], threads=threads)
        return [stage]
    stages, members = [], []
    group = "students" if plan.members_side_by_side[name] else None
    for i, seed in enumerate(seeds):
        member = "model" if i == 0 else f"model_seed{seed}"
        members.append(member)
        extra = () if i == 0 else ("--model_name", member, "--log_dir", str(bundle / "logs" / member))
        argv = bundle_run(bundle, "train.json", "--num_threads", str(threads), "--seed", str(seed), *extra)
        outputs = [models / f"{member}.pt", models / f"{member}_ema.pt"]
        stages.append(Stage(name, f"train student (KD), seed {seed}", argv, outputs, group=group, threads=threads))
    post = plan.post_training[name]
    argv = bundle_run(bundle, "ensemble.json", "--members", json.dumps(members))
    outputs = [models / DEPLOY_CHECKPOINT[name], models / BEST_CHECKPOINT[name]]
    stages.append(Stage(name, f"stack the {len(seeds)} students into an ensemble", argv, outputs, threads=post))
    return stages


def bundle_stages(name: str, bundle: Path, skip_teacher: bool, plan: ThreadPlan | None = None) -> list[Stage]:
    """The stages of one bundle, in order, with the compute threads of ``plan`` (default:
    :func:`plan_threads` for the usable cores)."""
    plan = plan_threads(usable_cores()) if plan is None else plan
    models, out = bundle / "models", bundle / "eval"
    stages: list[Stage] = []
    if not skip_teacher:
        n = plan.teacher[name]
        argv = bundle_run(bundle, "train_teacher.json", "--num_threads", str(n))
        stages.append(Stage(name, "train teacher", argv, [models / "teacher.pt"], threads=n))
    stages += student_stages(name, bundle, plan)
    (_, deployed, _), *others = evaluations(name, bundle)
    post = plan.post_training[name]
    threads = ("--num_threads", str(post))
    argv = bundle_run(bundle, "evaluate.json", *threads)
    stages.append(Stage(name, "evaluate (test)", argv, [out / "metrics.json"], threads=post))
    for _, checkpoint, folder in others:
        argv = bundle_run(bundle, "evaluate.json", "--ckpt_file", str(models / checkpoint), "--output_dir", str(folder), *threads)
        stages.append(Stage(name, "evaluate (test), best-val checkpoint", argv, [folder / "metrics.json"], threads=post))
    export = Stage(name, "export TorchScript", bundle_export_torchscript(bundle, deployed), [models / "model.ts"], threads=post)
    stages.append(export)
    argv = bundle_run(bundle, "inference.json", "export_onnx", *threads)
    stages.append(Stage(name, "export ONNX + check", argv, [models / "model.onnx"], threads=post))
    dicom, nifti = test_cases()
    for kind, path, extra in (("DICOM series", dicom, ()), ("NIfTI volume, TorchScript", nifti, ("--use_torchscript", "true"))):
        out = bundle / "eval" / f"inference_{kind.split()[0].lower()}"
        argv = bundle_run(bundle, "inference.json", "--input_path", str(path), "--output_dir", str(out), *extra, *threads)
        stages.append(Stage(name, f"inference, {kind}", argv, [out], threads=post))
    return stages


def run_stage(stage: Stage, log_dir: Path) -> None:
    """Run one stage; its output (with the engines' progress bars) goes to its log."""
    slug = "".join(c if c.isalnum() else "_" for c in stage.name.lower()).strip("_")
    log = log_dir / f"{stage.bundle}_{'_'.join(filter(None, slug.split('_')))}.log"
    stage.log = log
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    if stage.threads is not None:  # the OpenMP/MKL pools start with the stage's share (read at import torch)
        env.update(thread_env(stage.threads))
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
    parser.add_argument("--cores", type=int, default=None, help="plan for this many cores (default: the usable ones)")
    args = parser.parse_args(argv)
    if args.cores is not None and args.cores < 1:
        parser.error(f"--cores must be >= 1, got {args.cores}")
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
    plan = plan_threads(args.cores or usable_cores(), names, sequential=args.sequential)
    chains = {name: bundle_stages(name, BUNDLES[name], args.skip_teacher, plan) for name in names}
    print(f"[plan] {plan.describe()}", flush=True)
    print(
        f"[bundles] {', '.join(names)}: {sum(map(len, chains.values()))} stages, "
        f"{'side by side' if plan.chains_side_by_side else 'one after the other'}; "
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
    if not plan.chains_side_by_side:
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
