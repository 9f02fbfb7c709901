"""medmamba's main job: both MONAI bundles end to end on the embedded default data.

Stages (each a subprocess of ``python -m monai.bundle ...``, timed, its output in
``runs/main_job/<bundle>_<stage>.log``):

1. make the semi-synthetic default data set (``python -m medmamba.data make-default``; reused when
   it is already there and complete); a chain whose ``train.json`` names the real heads' datalist
   (the segmentation bundle's since 0.7.0) first makes their training subjects (``python -m
   medmamba.data make-real-heads``, :func:`real_heads_stage`);
2. for each bundle (classification, segmentation), the two side by side, with the compute threads
   :func:`plan_threads` gives each stage from the cores this process may use (on two cores one
   thread per training process; one core: everything one after the other), and, when one chain
   ends, its cores handed to the chain still running (:class:`CoreLedger`: a training or evaluation process in
   progress gets them through its thread grant file, :class:`medmamba.training.ThreadGrantHandler`;
   the chain's later stages start with them): train the teacher, train the student with knowledge
   distillation (with ``ENSEMBLE_SEEDS``, several students side by side, stacked into a seed
   ensemble), set the classification threshold on validation data (:func:`threshold_stages`),
   evaluate on the held-out test subjects once, with the weights each bundle deploys
   (``DEPLOY_CHECKPOINT``, fixed before the test split is read), fuse and export the
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
from medmamba.training.thread_grant import grant_threads

if TYPE_CHECKING:
    from tqdm import tqdm

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "data" / "default"
#: The real heads' training subjects (:mod:`medmamba.data.real_heads`), beside the default data.
REAL_HEADS = ROOT / "data" / "real_heads"
LOG_DIR = ROOT / "runs" / "main_job"
BUNDLES = {
    "classification": ROOT / "bundles" / "mobilemamba_classification",
    "segmentation": ROOT / "bundles" / "mobilemamba_segmentation",
}
#: The teacher's config: an overlay on the student's ``train.json`` (MONAI merges them in order).
TEACHER_CONFIGS = ("train.json", "train_teacher.json")


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
    #: Thread grant file of a training stage (``--thread_grant_file``): cores freed while it runs.
    grant_file: Path | None = None
    #: ``(seconds after the stage's start, threads)`` of each grant written while it ran.
    grants: list[tuple[float, int]] = field(default_factory=list)
    started: float | None = None
    #: Stages of other chains that must have ended before this one starts (their outputs are its inputs).
    after: list[Stage] = field(default_factory=list)
    #: Set when the stage has ended, or when its chain stopped before it (a failure earlier on).
    finished: threading.Event = field(default_factory=threading.Event)

    def set_threads(self, threads: int) -> None:
        """Start the stage with ``threads`` compute threads (its ``--num_threads`` too)."""
        self.threads = threads
        if "--num_threads" in self.argv:
            self.argv[self.argv.index("--num_threads") + 1] = str(threads)

    def threads_text(self) -> str:
        """The threads of the stage for the summary: ``"1"``, or ``"1, 2 from 1047 s"`` after a grant."""
        if self.threads is None:
            return ""
        return ", ".join([str(self.threads)] + [f"{n} from {t:.0f} s" for t, n in self.grants])


def bundle_run(bundle: Path, config: str | Sequence[str], *overrides: str) -> list[str]:
    """``python -m monai.bundle run`` of one config of a bundle, or of a base config and its overlays
    (a sequence, merged by MONAI in order: ``("train.json", "train_teacher.json")``)."""
    configs = bundle / "configs"
    config_file = str(configs / config) if isinstance(config, str) else str([str(configs / c) for c in config])
    return [
        sys.executable,
        "-m",
        "monai.bundle",
        "run",
        "--config_file",
        config_file,
        "--bundle_root",
        str(bundle),
        "--meta_file",
        str(configs / "metadata.json"),
        "--logging_file",
        str(configs / "logging.conf"),
        *overrides,
    ]


#: overrides of the test evaluation: every test subject is a T1 scan of the default data, so the
#: contrast-polarity check (``contrast_polarity``, two extra network passes per volume) is skipped there
TEST_SPLIT_OVERRIDES = ("--contrast_polarity", "given")


def granted_run(
    bundle: Path, config: str | Sequence[str], stage_slug: str, threads: int, *overrides: str
) -> tuple[list[str], Path]:
    """``python -m monai.bundle run`` of a config with ``threads`` and a thread grant file (training and
    evaluation configs: their ``ThreadGrantHandler`` takes more threads when another chain ends)."""
    grant = LOG_DIR / f"{bundle.name}_{stage_slug}.threads"
    argv = bundle_run(bundle, config, "--num_threads", str(threads), "--thread_grant_file", str(grant), *overrides)
    return argv, grant


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

#: The best-validation weights of each bundle (written beside the deployed ones; on the ensemble path
#: stacked too). Not evaluated on the test split: the deployed weights are chosen before it is read.
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
    """The test evaluation of one bundle, as ``[(label, checkpoint file, output folder)]``: its deployed
    weights (``DEPLOY_CHECKPOINT``, the evaluate config's default, into ``eval/``). The test split is
    read once per release, with weights chosen before it (on the validation data), so the
    best-validation weights are not evaluated on it beside them."""
    deployed = DEPLOY_CHECKPOINT.get(name, "model.pt")
    return [(f"{name} ({deployed})", deployed, bundle / "eval")]


def student_stages(name: str, bundle: Path, plan: ThreadPlan | None = None) -> list[Stage]:
    """Training of the student, or of the seed-ensemble members (side by side where ``plan`` says so)
    and their stacking. ``plan`` defaults to :func:`plan_threads` for the usable cores."""
    plan = plan_threads(usable_cores()) if plan is None else plan
    models = bundle / "models"
    seeds = ENSEMBLE_SEEDS.get(name, ())
    threads = plan.student[name]
    label = "train student (KD)" if uses_teacher(bundle) else "train student"
    if not seeds:
        argv, grant = granted_run(bundle, "train.json", "student", threads)
        outputs = [models / "model.pt", models / "model_ema.pt"]
        return [Stage(name, label, argv, outputs, threads=threads, grant_file=grant)]
    stages, members = [], []
    group = "students" if plan.members_side_by_side[name] else None
    for i, seed in enumerate(seeds):
        member = "model" if i == 0 else f"model_seed{seed}"
        members.append(member)
        extra = () if i == 0 else ("--model_name", member, "--log_dir", str(bundle / "logs" / member))
        argv, grant = granted_run(bundle, "train.json", f"student_seed{seed}", threads, "--seed", str(seed), *extra)
        outputs = [models / f"{member}.pt", models / f"{member}_ema.pt"]
        stages.append(
            Stage(name, f"{label}, seed {seed}", argv, outputs, group=group, threads=threads, grant_file=grant)
        )
    post = plan.post_training[name]
    argv = bundle_run(bundle, "ensemble.json", "--members", json.dumps(members))
    outputs = [models / DEPLOY_CHECKPOINT[name], models / BEST_CHECKPOINT[name]]
    stages.append(Stage(name, f"stack the {len(seeds)} students into an ensemble", argv, outputs, threads=post))
    return stages


def threshold_stages(name: str, bundle: Path, threads: int) -> list[Stage]:
    """Setting the classification threshold of this run on validation data, before the test split is
    read: the validation split's volumes, the MNI152 template checks of the validation seed and FSL's
    lesion-free MNI152 template, whole head and skull-stripped (``python -m medmamba.apps.calibration
    sets``), classified by ``calibrate.json``; every lesion-free
    one below the threshold (``--target_specificity 1.0``), written to ``models/threshold.json``, which
    ``evaluate.json`` and ``inference.json`` read. Bundles without ``calibrate.json`` have none."""
    if not (bundle / "configs" / "calibrate.json").is_file():
        return []
    sets = bundle / "eval" / "threshold_sets"
    make = [sys.executable, "-m", "medmamba.apps.calibration", "sets", "--dataset_dir", str(DATA), "--out", str(sets)]
    argv = bundle_run(
        bundle, ("inference.json", "calibrate.json"), "--negative_path", str(sets / "negatives"),
        "--positive_path", str(sets / "positives"), "--target_specificity", "1.0",
        "--output_dir", str(bundle / "eval" / "threshold"), "--write_threshold_file", str(bundle / "models" / "threshold.json"),
        "--num_threads", str(threads),
    )
    return [
        Stage(name, "threshold: validation sets", make, [sets / "negatives", sets / "positives"], threads=threads),
        Stage(name, "threshold: set on validation", argv, [bundle / "models" / "threshold.json"], threads=threads),
    ]


#: Bundles whose inference runs another bundle's network: the classification bundle's brain
#: extraction is the segmentation bundle's network and weights
#: (:func:`medmamba.apps.brain_extraction.load_brain_extractor`).
USES_WEIGHTS_OF: dict[str, str] = {"classification": "segmentation"}


def deployed_weights(name: str) -> Path:
    """The weights file a bundle deploys (:data:`DEPLOY_CHECKPOINT`), which other bundles' inference reads."""
    return BUNDLES[name] / "models" / DEPLOY_CHECKPOINT[name]


def link_chains(chains: Mapping[str, list[Stage]]) -> dict[str, list[Stage]]:
    """Make each chain's first stage that runs its ``inference.json`` or ``evaluate.json`` wait for
    the stage of the chain it takes weights from (:data:`USES_WEIGHTS_OF`) that writes that bundle's
    deployed weights; returns the chains in an order where a provider comes before its users (the
    order of ``--sequential``)."""
    for user, provider in USES_WEIGHTS_OF.items():
        if user not in chains or provider not in chains:
            continue
        deployed = deployed_weights(provider)
        writers = [s for s in chains[provider] if deployed in s.outputs]
        readers = [s for s in chains[user] if any("inference.json" in a or "evaluate.json" in a for a in s.argv)]
        if writers and readers:
            readers[0].after.append(writers[-1])
    order = sorted(chains, key=lambda name: name in USES_WEIGHTS_OF and USES_WEIGHTS_OF[name] in chains)
    return {name: chains[name] for name in order}


def train_setting(bundle: Path, key: str) -> object:
    """A top-level variable of the bundle's ``train.json`` as written (``None`` when absent)."""
    return json.loads((bundle / "configs" / "train.json").read_text(encoding="utf-8")).get(key)


def uses_real_heads(bundle: Path) -> bool:
    """Whether the bundle's training adds the real heads of :mod:`medmamba.data.real_heads`: its
    ``train.json`` ``real_heads_datalist`` is not null (the segmentation bundle since 0.7.0)."""
    return train_setting(bundle, "real_heads_datalist") is not None


def real_heads_stage(name: str, bundle: Path, threads: int) -> list[Stage]:
    """Making the real heads' training subjects (``python -m medmamba.data make-real-heads``: two
    source distributions from the package index, about 60 MB, downloaded once; reused when up to date)
    for a bundle that trains on them; none for the others. It runs first in that bundle's chain."""
    if not uses_real_heads(bundle):
        return []
    argv = [sys.executable, "-m", "medmamba.data", "make-real-heads", "--out", str(REAL_HEADS)]
    return [Stage(name, "real heads", argv, [REAL_HEADS / "datalist_real_heads.json"], threads=threads)]


def uses_teacher(bundle: Path) -> bool:
    """Whether the bundle's student distils from a teacher: its ``train.json`` ``teacher`` is not
    null (a bundle without one has no teacher stage; ``--teacher %teacher_kd`` turns it on by hand)."""
    return train_setting(bundle, "teacher") is not None


def bundle_stages(name: str, bundle: Path, skip_teacher: bool, plan: ThreadPlan | None = None) -> list[Stage]:
    """The stages of one bundle, in order, with the compute threads of ``plan`` (default:
    :func:`plan_threads` for the usable cores)."""
    plan = plan_threads(usable_cores()) if plan is None else plan
    models, out = bundle / "models", bundle / "eval"
    stages: list[Stage] = real_heads_stage(name, bundle, plan.student[name])
    if not skip_teacher and uses_teacher(bundle):
        n = plan.teacher[name]
        argv, grant = granted_run(bundle, TEACHER_CONFIGS, "teacher", n)
        stages.append(Stage(name, "train teacher", argv, [models / "teacher.pt"], threads=n, grant_file=grant))
    stages += student_stages(name, bundle, plan)
    ((_, deployed, _),) = evaluations(name, bundle)
    post = plan.post_training[name]
    threads = ("--num_threads", str(post))
    stages += threshold_stages(name, bundle, post)
    # the generated test split is T1 by construction: no inverted contrast for the polarity check to find
    # (with it, a fresh-clone run at fa380bf gave the same test metrics and took 4 min longer on 2 cores)
    argv, grant = granted_run(bundle, "evaluate.json", "evaluate", post, *TEST_SPLIT_OVERRIDES)
    stages.append(Stage(name, "evaluate (test)", argv, [out / "metrics.json"], threads=post, grant_file=grant))
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


class CoreLedger:
    """Which chains are still running, and the cores each may use now (thread-safe).

    The chains share the usable cores evenly (an odd core to ``last_chain``). When a chain ends, the
    chains still running get its cores: their training or evaluation stage in progress through its thread grant
    file (:func:`medmamba.training.grant_threads`, read between iterations by the bundle's
    :class:`medmamba.training.ThreadGrantHandler`), their later stages at their start.

    Args:
        cores: the usable cores.
        chains: the names of the chains run side by side.
        last_chain: the chain that gets an odd core.
    """

    def __init__(self, cores: int, chains: Sequence[str], last_chain: str = LAST_CHAIN) -> None:
        self.cores = int(cores)
        self.order = sorted(chains, key=lambda n: n != last_chain)
        self.running = list(self.order)
        self.current: dict[str, Stage] = {}
        self.lock = threading.Lock()

    def share(self, name: str) -> int:
        """The threads chain ``name`` may use while the chains in :attr:`running` run."""
        running = [n for n in self.order if n in self.running]
        if name not in running:
            return max(1, self.cores)
        base, extra = divmod(self.cores, len(running))
        return max(1, base + (1 if running.index(name) < extra else 0))

    def start(self, name: str, stage: Stage | None) -> None:
        """Record ``stage`` as chain ``name``'s stage in progress, with the threads of its share now
        (never more than it was planned with while other chains run: those plan their cores too).
        ``None``: stages side by side within the chain (seed-ensemble members), left as planned."""
        with self.lock:
            if stage is None:
                self.current.pop(name, None)
                return
            self.current[name] = stage
            if stage.threads is not None:
                stage.set_threads(self.share(name) if len(self.running) == 1 else min(stage.threads, self.share(name)))
            if stage.grant_file is not None:
                stage.grant_file.unlink(missing_ok=True)  # a grant of an earlier run is not for this one

    def finish(self, name: str) -> None:
        """Chain ``name`` has ended: hand its cores to the training stages of the chains still running."""
        with self.lock:
            if name in self.running:
                self.running.remove(name)
            self.current.pop(name, None)
            for other in self.running:
                stage = self.current.get(other)
                running = stage is not None and stage.started is not None and stage.returncode is None
                if not running or stage.grant_file is None or stage.threads is None:
                    continue
                threads = self.share(other)
                if threads > max([stage.threads] + [n for _, n in stage.grants]):
                    grant_threads(stage.grant_file, threads)
                    stage.grants.append((time.perf_counter() - stage.started, threads))


def run_stage(stage: Stage, log_dir: Path) -> None:
    """Run one stage; its output (with the engines' progress bars) goes to its log."""
    slug = "".join(c if c.isalnum() else "_" for c in stage.name.lower()).strip("_")
    log = log_dir / f"{stage.bundle}_{'_'.join(filter(None, slug.split('_')))}.log"
    stage.log = log
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    if stage.threads is not None:  # the OpenMP/MKL pools start with the stage's share (read at import torch)
        env.update(thread_env(stage.threads))
    # OMP_WAIT_POLICY stays as the user set it, else OpenMP's default: never more busy threads than
    # cores here, and PASSIVE makes a multi-threaded stage (or one granted cores) no faster than one thread
    t0 = stage.started = time.perf_counter()
    with open(log, "w", encoding="utf-8") as f:
        proc = subprocess.run(stage.argv, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT, env=env, check=False)
    stage.seconds = time.perf_counter() - t0
    stage.returncode = proc.returncode
    stage.ok = proc.returncode == 0 and all(p.exists() for p in stage.outputs)
    stage.finished.set()


def stage_groups(stages: list[Stage]) -> list[list[Stage]]:
    """The stages of a chain in run order, consecutive stages of one ``group`` together."""
    groups: list[list[Stage]] = []
    for stage in stages:
        if groups and stage.group is not None and groups[-1][-1].group == stage.group:
            groups[-1].append(stage)
        else:
            groups.append([stage])
    return groups


def run_chain(stages: list[Stage], log_dir: Path, bar: tqdm, ledger: CoreLedger | None = None) -> None:
    """Run the stages of one bundle in order (a group's stages at once), stopping at the first
    failure; with a ``ledger``, each stage starts with the chain's cores at that moment, and the
    chain's cores go to the others when it ends."""
    name = stages[0].bundle if stages else ""
    try:
        for group in stage_groups(stages):
            for dependency in (d for s in group for d in s.after):
                bar.set_postfix_str(f"waiting for {dependency.bundle}: {dependency.name}")
                dependency.finished.wait()
            bar.set_postfix_str(" | ".join(s.name for s in group))
            if ledger is not None:
                ledger.start(name, group[0] if len(group) == 1 else None)
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
    finally:
        for stage in stages:  # stages never run: whoever waits for them goes on (and fails on the missing outputs)
            stage.finished.set()
        if ledger is not None:
            ledger.finish(name)


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
    print("\n## Stages\n\n| bundle | stage | status | time (s) | threads | outputs |\n|---|---|---|---|---|---|")
    for s in stages:
        outs = ", ".join(str(p.relative_to(ROOT)) for p in s.outputs)
        status = "ok" if s.ok else ("not run" if s.returncode is None else f"FAILED (exit {s.returncode}; log {s.log})")
        print(f"| {s.bundle} | {s.name} | {status} | {s.seconds:.0f} | {s.threads_text()} | {outs} |")
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
    names = [args.only] if args.only else list(BUNDLES)
    for name in names:
        provider = USES_WEIGHTS_OF.get(name)
        deployed = None if provider is None else deployed_weights(provider)
        if provider not in names and deployed is not None and not deployed.is_file():
            parser.error(f"the {name} bundle runs the {provider} bundle's network (brain extraction) and "
                         f"{deployed.relative_to(ROOT)} is missing: run --only {provider} first, or both bundles")
    from tqdm import tqdm

    log_dir = LOG_DIR
    log_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    data = Stage("data", "make default data", [sys.executable, "-m", "medmamba.data", "make-default"], [DATA])
    print(f"[data] making the default data set (log: {log_dir.relative_to(ROOT)}/data_make_default.log)", flush=True)
    run_stage(data, log_dir)
    if not data.ok:
        print_summary([data], time.perf_counter() - t0)
        return 1
    plan = plan_threads(args.cores or usable_cores(), names, sequential=args.sequential)
    chains = link_chains({name: bundle_stages(name, BUNDLES[name], args.skip_teacher, plan) for name in names})
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
        ledger = CoreLedger(plan.cores, list(chains))
        threads = [
            threading.Thread(target=run_chain, args=(chain, log_dir, bars[name], ledger), daemon=True)
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
