"""The README's main job (``scripts/main_job.py``): which weights each bundle evaluates, exports and deploys."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _main_job() -> ModuleType:
    spec = importlib.util.spec_from_file_location("medmamba_main_job", ROOT / "scripts" / "main_job.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("bundle", ["classification", "segmentation"])
@pytest.mark.parametrize("config", ["evaluate.json", "inference.json"])
def test_deployed_checkpoint_is_the_default_of_the_bundle_configs(bundle: str, config: str) -> None:
    from monai.bundle import ConfigParser

    job = _main_job()
    root = job.BUNDLES[bundle]
    parser = ConfigParser()
    parser.read_config(str(root / "configs" / config))
    parser["bundle_root"] = str(root)
    key = "ckpt_file" if "ckpt_file" in parser else "ckpt_path"  # the segmentation bundle's name for it
    assert Path(parser.get_parsed_content(key)).name == job.DEPLOY_CHECKPOINT[bundle]


def test_classification_stages_train_two_seeds_at_once_then_deploy_their_ensemble(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The seed-ensemble path (the deployed classification model up to version 0.7)."""
    job = _main_job()
    monkeypatch.setattr(job, "ENSEMBLE_SEEDS", {"classification": (0, 1)})
    monkeypatch.setitem(job.DEPLOY_CHECKPOINT, "classification", "model_ensemble_ema.pt")
    monkeypatch.setitem(job.BEST_CHECKPOINT, "classification", "model_ensemble.pt")
    test = [{"id": "sub-a", "image": "a/image.nii.gz", "dicom": "a/dicom"}, {"id": "sub-b", "image": "b/image.nii.gz"}]
    (tmp_path / "datalist_segmentation.json").write_text(json.dumps({"test": test}))
    monkeypatch.setattr(job, "DATA", tmp_path)
    bundle = job.BUNDLES["classification"]
    models = bundle / "models"
    stages = job.bundle_stages("classification", bundle, skip_teacher=False, plan=job.plan_threads(2))
    groups = [[s.name for s in g] for g in job.stage_groups(stages)]
    assert groups[:6] == [  # no teacher stage: the student trains without distillation since 0.11
        ["train student, seed 0", "train student, seed 1"],  # side by side
        ["stack the 2 students into an ensemble"],
        ["threshold: validation sets"],  # the threshold of this run, on validation data ...
        ["threshold: set on validation"],
        ["evaluate (test)"],  # ... before the test split is read, once, with the deployed weights
        ["export TorchScript"],
    ]

    def arg(stage, flag: str) -> str:  # noqa: ANN001
        return stage.argv[stage.argv.index(flag) + 1]

    seed0, seed1, stack = stages[0], stages[1], stages[2]
    assert arg(seed0, "--seed") == "0" and "--model_name" not in seed0.argv  # train.json's own file names
    assert arg(seed1, "--seed") == "1" and arg(seed1, "--model_name") == "model_seed1"
    assert arg(seed0, "--num_threads") == arg(seed1, "--num_threads") == "1"
    assert arg(stack, "--config_file").endswith("ensemble.json")
    assert json.loads(arg(stack, "--members")) == ["model", "model_seed1"]
    assert stack.outputs == [models / "model_ensemble_ema.pt", models / "model_ensemble.pt"]
    sets, threshold = stages[3], stages[4]
    assert arg(sets, "--dataset_dir") == str(tmp_path) and sets.argv[2:4] == ["medmamba.apps.calibration", "sets"]
    assert arg(threshold, "--config_file").endswith("calibrate.json']") and arg(threshold, "--target_specificity") == "1.0"
    assert arg(threshold, "--negative_path") == str(Path(arg(sets, "--out")) / "negatives")
    assert threshold.outputs == [models / "threshold.json"] == [Path(arg(threshold, "--write_threshold_file"))]
    assert "--ckpt_file" not in stages[5].argv  # evaluate (test): the deployed weights, the config's default
    assert arg(stages[5], "--contrast_polarity") == "given"  # the generated test split is T1
    assert "--contrast_polarity" not in threshold.argv  # the threshold is set as inference runs
    assert sum(s.name.startswith("evaluate") for s in stages) == 1
    export = next(s for s in stages if s.name == "export TorchScript")
    assert arg(export, "--ckpt_file") == str(models / "model_ensemble_ema.pt")
    seg = job.bundle_stages("segmentation", job.BUNDLES["segmentation"], skip_teacher=True, plan=job.plan_threads(2))
    # the real heads' subjects first (its train.json names their datalist); no teacher, no threshold to set
    assert [s.name for s in seg][:3] == ["real heads", "train student", "evaluate (test)"]
    assert seg[0].argv[-3:] == ["make-real-heads", "--out", str(job.REAL_HEADS)]
    assert seg[0].outputs == [job.REAL_HEADS / "datalist_real_heads.json"]
    assert all(s.name != "real heads" for s in stages)  # the classification bundle trains without them
    assert all(len(g) == 1 for g in job.stage_groups(seg))
    seg_export = next(s for s in seg if s.name == "export TorchScript")
    assert arg(seg_export, "--ckpt_file").endswith("model.pt")
    assert str(tmp_path / "a" / "dicom") in next(s for s in stages if s.name == "inference, DICOM series").argv


def test_ensemble_config_stacks_the_members_the_main_job_names(tmp_path: Path) -> None:
    """``configs/ensemble.json`` (the main job's ensemble path, see ``ENSEMBLE_SEEDS``) stacks the members."""
    import torch
    from monai.bundle import ConfigWorkflow

    job = _main_job()
    bundle = job.BUNDLES["classification"]
    models = tmp_path / "models"
    models.mkdir()
    members = ["model", "model_seed1"]
    for i, member in enumerate(members):
        for suffix in ("", "_ema"):
            torch.save({"model": {"w": torch.full((2,), float(i)), "b": torch.zeros(1)}}, models / f"{member}{suffix}.pt")
    wf = ConfigWorkflow(config_file=str(bundle / "configs" / "ensemble.json"), workflow_type=None,
                        meta_file=str(bundle / "configs" / "metadata.json"), bundle_root=str(tmp_path), members=members)
    wf.initialize()
    wf.run()
    for name in ("model_ensemble_ema.pt", "model_ensemble.pt"):  # what the ensemble path deploys / evaluates
        state = torch.load(models / name, weights_only=True)["model"]
        assert sorted(state) == ["networks.0.b", "networks.0.w", "networks.1.b", "networks.1.w"]
        assert state["networks.1.w"].tolist() == [1.0, 1.0]


def test_stage_groups_keep_order_and_only_join_neighbours_of_one_group() -> None:
    job = _main_job()
    stages = [job.Stage("b", n, [], group=g) for n, g in (("a", None), ("b", "x"), ("c", "x"), ("d", None), ("e", "x"))]
    assert [[s.name for s in g] for g in job.stage_groups(stages)] == [["a"], ["b", "c"], ["d"], ["e"]]


def _plan_row(plan, name: str) -> tuple:
    return plan.teacher[name], plan.student[name], plan.members_side_by_side[name], plan.post_training[name]


ENSEMBLE = {"classification": (0, 1)}


@pytest.mark.parametrize(
    ("cores", "seeds", "side_by_side", "classification", "segmentation"),
    [
        # (teacher, student per process, members at once, after training) threads
        (1, None, False, (1, 1, False, 1), (1, 1, False, 1)),  # everything one after the other
        (2, None, True, (1, 1, False, 2), (1, 1, False, 1)),  # the deployed single student: one core per chain
        (4, None, True, (2, 2, False, 4), (2, 2, False, 2)),
        (16, None, True, (8, 8, False, 16), (8, 8, False, 8)),
        (1, ENSEMBLE, False, (1, 1, False, 1), (1, 1, False, 1)),  # a two-seed ensemble
        (2, ENSEMBLE, True, (1, 1, True, 2), (1, 1, False, 1)),
        (4, ENSEMBLE, True, (2, 1, True, 4), (2, 2, False, 2)),
        (16, ENSEMBLE, True, (8, 4, True, 16), (8, 8, False, 8)),
    ],
)
def test_plan_threads_for_the_usable_cores(
    cores: int, seeds: dict | None, side_by_side: bool, classification: tuple, segmentation: tuple
) -> None:
    job = _main_job()
    plan = job.plan_threads(cores, ensemble_seeds=seeds)
    assert plan.cores == cores and plan.chains_side_by_side is side_by_side
    assert _plan_row(plan, "classification") == classification
    assert _plan_row(plan, "segmentation") == segmentation
    if side_by_side:  # while training, never more busy threads than cores, beyond the 2-core plan's members
        training = plan.student["classification"] * plan.members["classification"] + plan.student["segmentation"]
        assert training <= max(cores, 3)
        assert plan.teacher["classification"] + plan.teacher["segmentation"] <= cores


def test_plan_threads_odd_cores_sequential_and_errors() -> None:
    job = _main_job()
    three = job.plan_threads(3)
    assert (three.teacher["classification"], three.teacher["segmentation"]) == (2, 1)  # the odd core: the longer chain
    sequential = job.plan_threads(4, sequential=True, ensemble_seeds=ENSEMBLE)
    assert not sequential.chains_side_by_side and sequential.teacher == {"classification": 4, "segmentation": 4}
    assert sequential.student["classification"] == 2 and sequential.members_side_by_side["classification"]
    only = job.plan_threads(4, ["segmentation"])
    assert not only.chains_side_by_side and only.student == {"segmentation": 4}
    assert "4 usable core(s)" in only.describe()
    for bad in (0, -1, 2.0, True):
        with pytest.raises(ValueError, match="cores"):
            job.plan_threads(bad)
    with pytest.raises(ValueError, match="bundles"):
        job.plan_threads(2, [])


@pytest.mark.parametrize("cores", [1, 2, 4, 16])
def test_stages_carry_the_plan_threads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cores: int) -> None:
    job = _main_job()
    test = [{"id": "sub-a", "image": "a/image.nii.gz", "dicom": "a/dicom"}, {"id": "sub-b", "image": "b/image.nii.gz"}]
    (tmp_path / "datalist_segmentation.json").write_text(json.dumps({"test": test}))
    monkeypatch.setattr(job, "DATA", tmp_path)
    plan = job.plan_threads(cores)
    for name in ("classification", "segmentation"):
        stages = job.bundle_stages(name, job.BUNDLES[name], skip_teacher=False, plan=plan)
        if job.uses_teacher(job.BUNDLES[name]):
            teacher, *rest = stages
            assert teacher.name == "train teacher" and teacher.threads == plan.teacher[name]
            assert teacher.argv[teacher.argv.index("--num_threads") + 1] == str(plan.teacher[name])
        else:
            rest = stages
            assert all(s.name != "train teacher" for s in stages)
        students = [s for s in rest if s.name.startswith("train student")]
        assert students and all(s.threads == plan.student[name] for s in students)
        assert all((s.group is not None) == plan.members_side_by_side[name] for s in students)
        heads = [s for s in rest if s.name == "real heads"]
        assert all(s.threads == plan.student[name] for s in heads)
        after = [s for s in rest if s not in students and s not in heads]
        assert after and all(s.threads == plan.post_training[name] for s in after)
        for s in stages:
            if "--num_threads" in s.argv:
                assert s.argv[s.argv.index("--num_threads") + 1] == str(s.threads)


def test_run_stage_gives_the_child_its_thread_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    job = _main_job()
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    code = "import os; print(os.environ['OMP_NUM_THREADS'], os.environ['MKL_NUM_THREADS'], os.environ.get('OMP_WAIT_POLICY', 'default'))"
    stage = job.Stage("b", "env", [sys.executable, "-c", code], threads=3)
    job.run_stage(stage, tmp_path)
    assert stage.ok and stage.log is not None
    assert stage.log.read_text().split() == ["3", "3", "default"]  # OpenMP's own wait policy
    monkeypatch.setenv("OMP_WAIT_POLICY", "PASSIVE")  # a user's choice is passed on
    job.run_stage(stage, tmp_path)
    assert stage.log.read_text().split() == ["3", "3", "PASSIVE"]


def test_training_and_evaluation_stages_get_a_thread_grant_file_and_other_stages_none(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    job = _main_job()
    test = [{"id": "sub-a", "image": "a/image.nii.gz", "dicom": "a/dicom"}, {"id": "sub-b", "image": "b/image.nii.gz"}]
    (tmp_path / "datalist_segmentation.json").write_text(json.dumps({"test": test}))
    monkeypatch.setattr(job, "DATA", tmp_path)
    stages = job.bundle_stages("classification", job.BUNDLES["classification"], skip_teacher=False, plan=job.plan_threads(2))
    training = [s for s in stages if s.name.startswith(("train", "evaluate"))]
    assert [s.grant_file.name for s in training] == [
        "mobilemamba_classification_student.threads",  # no teacher since 0.11
        "mobilemamba_classification_evaluate.threads",
    ]
    for s in training:
        assert s.argv[s.argv.index("--thread_grant_file") + 1] == str(s.grant_file)
        assert s.grant_file.parent == job.LOG_DIR
    assert all(s.grant_file is None and "--thread_grant_file" not in s.argv for s in stages if s not in training)


def _stage(job, bundle: str, name: str, threads: int, tmp_path: Path):  # noqa: ANN001, ANN202
    argv = ["python", "-m", "monai.bundle", "run", "--num_threads", str(threads)]
    return job.Stage(bundle, name, argv, threads=threads, grant_file=tmp_path / f"{bundle}_{name}.threads")


def test_core_ledger_hands_a_finished_chains_cores_to_the_running_training(tmp_path: Path) -> None:
    from medmamba.training import read_thread_grant

    job = _main_job()
    ledger = job.CoreLedger(2, ["classification", "segmentation"])
    assert ledger.share("classification") == ledger.share("segmentation") == 1
    cls, seg = _stage(job, "classification", "student", 1, tmp_path), _stage(job, "segmentation", "student", 1, tmp_path)
    cls.grant_file.write_text("7\n")  # left over from an earlier run: removed at the start
    ledger.start("classification", cls)
    ledger.start("segmentation", seg)
    assert not cls.grant_file.exists()
    cls.started = seg.started = 0.0  # both running (no return code yet)
    ledger.finish("segmentation")
    assert read_thread_grant(cls.grant_file) == 2 and [n for _, n in cls.grants] == [2]
    assert not seg.grant_file.exists() and seg.grants == []
    ledger.finish("segmentation")  # a second call grants nothing new
    assert len(cls.grants) == 1
    # a later stage of the remaining chain starts with all the cores, its --num_threads too
    post = _stage(job, "classification", "evaluate", 1, tmp_path)
    ledger.start("classification", post)
    assert post.threads == 2 and post.argv[post.argv.index("--num_threads") + 1] == "2"
    assert post.threads_text() == "2" and cls.threads_text().startswith("1, 2 from ")


def test_core_ledger_never_starts_a_stage_with_more_than_its_share_while_others_run(tmp_path: Path) -> None:
    job = _main_job()
    ledger = job.CoreLedger(3, ["classification", "segmentation"])
    assert (ledger.share("classification"), ledger.share("segmentation")) == (2, 1)  # the odd core: the last chain
    post = _stage(job, "classification", "evaluate", 3, tmp_path)  # planned for all cores
    ledger.start("classification", post)
    assert post.threads == 2
    done = _stage(job, "segmentation", "student", 1, tmp_path)
    ledger.start("segmentation", done)
    done.started, done.returncode = 0.0, 0  # ended: no grant is written for it
    ledger.finish("classification")
    assert not done.grant_file.exists()


def test_only_bundles_whose_student_distils_get_a_teacher_stage(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    job = _main_job()
    assert job.uses_teacher(job.BUNDLES["classification"]) is False  # 0.11: trained without distillation
    assert job.uses_teacher(job.BUNDLES["segmentation"]) is False  # 0.4: trained without distillation
    bundle = tmp_path / "b"
    (bundle / "configs").mkdir(parents=True)
    (bundle / "configs" / "train.json").write_text(json.dumps({"teacher": None, "teacher_kd": {"_target_": "x"}}))
    assert job.uses_teacher(bundle) is False
    (bundle / "configs" / "train.json").write_text(json.dumps({"teacher": "%teacher_kd"}))
    assert job.uses_teacher(bundle) is True


def test_classification_reads_the_segmentation_weights_only_after_their_training(tmp_path: Path, monkeypatch) -> None:  # noqa: ANN001
    job = _main_job()
    monkeypatch.setattr(job, "test_cases", lambda: (tmp_path / "dicom", tmp_path / "case.nii.gz"))
    plan = job.plan_threads(2, list(job.BUNDLES))
    chains = job.link_chains({name: job.bundle_stages(name, job.BUNDLES[name], True, plan) for name in job.BUNDLES})
    assert list(chains) == ["segmentation", "classification"]  # the order of --sequential
    seg_weights = job.BUNDLES["segmentation"] / "models" / job.DEPLOY_CHECKPOINT["segmentation"]
    waiting = [s for s in chains["classification"] if s.after]
    assert [s.name for s in waiting] == ["threshold: set on validation"]
    (writer,) = waiting[0].after
    assert writer.bundle == "segmentation" and seg_weights in writer.outputs and "train" in writer.name
    assert not any(s.after for s in chains["segmentation"])


def test_a_chain_waits_for_the_stage_of_another_chain_it_needs(tmp_path: Path) -> None:
    job = _main_job()
    stamp = tmp_path / "order.txt"

    def stage(bundle: str, name: str, delay: float):  # noqa: ANN202
        code = f"import time; time.sleep({delay}); open({str(stamp)!r}, 'a').write({name!r} + '\\n')"
        return job.Stage(bundle, name, [sys.executable, "-c", code])

    provider = [stage("segmentation", "train", 1.0), stage("segmentation", "evaluate", 0.0)]
    user = [stage("classification", "threshold", 0.0)]
    user[0].after.append(provider[0])

    class Bar:
        def set_postfix_str(self, text: str) -> None: ...
        def update(self, n: int) -> None: ...

    import threading

    threads = [threading.Thread(target=job.run_chain, args=(c, tmp_path, Bar())) for c in (user, provider)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    lines = stamp.read_text().splitlines()
    # without the wait the threshold stage (no delay) would write first; with it, only after train's
    # process has ended (the provider's next stage may start at the same moment: its order is free)
    assert sorted(lines) == ["evaluate", "threshold", "train"]
    assert lines.index("train") < lines.index("threshold")
    assert all(s.ok and s.finished.is_set() for s in provider + user)
    # a failed provider chain releases its waiters (whose own stage then fails on its missing inputs)
    failed = [job.Stage("segmentation", "train", [sys.executable, "-c", "raise SystemExit(3)"]), stage("segmentation", "later", 0.0)]
    job.run_chain(failed, tmp_path, Bar())
    assert failed[0].returncode == 3 and failed[1].returncode is None and failed[1].finished.is_set()
