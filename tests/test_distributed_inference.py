"""Batch inference split over processes (``torchrun``, gloo): the same outputs as one process.

The sharding helpers on their own; ``run_batch_distributed`` and the evaluation handlers' gathering
in two spawned gloo processes against one process; and the segmentation bundle's inference under
``torchrun --nproc_per_node 2`` with ``multi_gpu_inference.json`` (a tiny, untrained MobileMambaSeg,
four tiny volumes and one corrupt file) against a one-process run: same merged report, same
per-case files, byte for byte.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import nibabel as nib
import numpy as np
import pytest
import torch
import torch.distributed as dist

from medmamba.data import run_batch
from medmamba.data.distributed_batch import (
    all_gather_in_order,
    init_distributed,
    interleave_shards,
    rank_info,
    rank_threads,
    run_batch_distributed,
    shard_indices,
)

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::UserWarning", "ignore::FutureWarning")

REPO = Path(__file__).resolve().parents[1]
SEG_CONFIGS = REPO / "bundles" / "mobilemamba_segmentation" / "configs"
TINY_NET = {"network_def#embed_dim": [32, 48, 64], "network_def#depth": [1, 1, 1]}


# ------------------------------------------------------------------------------------------ helpers
def test_every_case_goes_to_exactly_one_rank_and_comes_back_in_order() -> None:
    for n in range(8):
        for world in (1, 2, 3):
            shards = [shard_indices(n, r, world) for r in range(world)]
            assert sorted(i for s in shards for i in s) == list(range(n))
            assert all(i % world == r for r, s in enumerate(shards) for i in s)
            assert interleave_shards(shards) == list(range(n))


def test_sharding_arguments_are_checked() -> None:
    with pytest.raises(ValueError, match="rank must be in"):
        shard_indices(4, 2, 2)
    with pytest.raises(ValueError, match="world_size must be >= 1"):
        shard_indices(4, 0, 0)
    with pytest.raises(ValueError, match="n must be an integer"):
        shard_indices(4.0, 0, 1)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="shards must have lengths"):
        interleave_shards([[0], [1, 3]])


def test_rank_threads_share_the_cores_without_oversubscription() -> None:
    assert rank_threads(cores=2, processes=2) == 1
    assert rank_threads(cores=2, processes=1) == 2
    assert rank_threads(cores=16, processes=3) == 5
    assert rank_threads(cores=1, processes=4) == 1
    with pytest.raises(ValueError, match="processes must be a positive integer"):
        rank_threads(cores=2, processes=0)


def _stub_process(case: Any) -> dict[str, Any]:
    """Writes one file per case; fails for inputs named ``broken*``."""
    if case.input.name.startswith("broken"):
        raise ValueError(f"cannot read {case.input.name}")
    (case.out_dir / "out.txt").write_text(f"{case.case_id} {case.index} {case.input.name}\n")
    return {"index": case.index, "name": case.input.name}


def _cases(root: Path) -> list[Any]:
    """Duplicate datalist ids (on different ranks), plain paths without ids, a failing case."""
    for sub in ("a", "b"):
        (root / sub).mkdir(parents=True, exist_ok=True)
        for name in ("x.nii.gz", "y.nii.gz", "broken.nii.gz"):
            (root / sub / name).write_bytes(b"")
    return [
        {"image": str(root / "a" / "x.nii.gz"), "id": "dup"},
        {"image": str(root / "a" / "y.nii.gz"), "id": "dup"},
        str(root / "b" / "x.nii.gz"),
        {"image": str(root / "b" / "y.nii.gz"), "id": "dup"},
        str(root / "a" / "broken.nii.gz"),
        {"image": str(root / "b" / "broken.nii.gz"), "id": "dup-0001"},
        str(root / "b" / "y.nii.gz"),
    ]


def _tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _rows(path: Path) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The report's rows without the timing column, and its summary entries."""
    doc = json.loads(path.read_text())
    return [{k: v for k, v in row.items() if k != "seconds"} for row in doc["cases"]], {k: v for k, v in doc.items() if k != "cases"}


def test_one_process_is_plain_run_batch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert init_distributed().world_size == 1 and not dist.is_initialized()
    report = run_batch_distributed(_cases(tmp_path / "in"), _stub_process, tmp_path / "d", report_name="r")
    run_batch(_cases(tmp_path / "in"), _stub_process, tmp_path / "s", report_name="r")
    assert _tree(tmp_path / "d").keys() == _tree(tmp_path / "s").keys()
    assert _rows(tmp_path / "d" / "r.json") == _rows(tmp_path / "s" / "r.json")
    assert report.n_ok == 5 and report.n_failed == 2
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(RuntimeError, match="multi_gpu_inference.json"):
        run_batch_distributed(_cases(tmp_path / "in"), _stub_process, tmp_path / "e")


def test_init_distributed_checks_timeout_and_starts_a_one_process_group_only_when_asked(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    if dist.is_initialized():
        pytest.skip("a process group is already initialised in this process")
    for bad in (0, -1.0, True, "60"):
        with pytest.raises(ValueError, match=f"timeout_s must be a positive number of seconds or None, got {bad!r}"):
            init_distributed(timeout_s=bad)
    # torchrun --nproc_per_node 1: WORLD_SIZE 1 starts no group for inference, one for training (DDP)
    monkeypatch.setenv("WORLD_SIZE", "1")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("LOCAL_RANK", "0")
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(29500 + os.getpid() % 1000))
    assert init_distributed().world_size == 1 and not dist.is_initialized()
    try:
        info = init_distributed(backend="gloo", timeout_s=None, single_process_group=True)
        assert dist.is_initialized() and dist.get_backend() == "gloo"
        assert (info.rank, info.world_size) == (0, 1)
        assert init_distributed(single_process_group=True) == info  # already started: unchanged
    finally:
        dist.destroy_process_group()


def test_run_batch_checks_assigned_case_ids(tmp_path: Path) -> None:
    cases = [str(tmp_path / "a.nii.gz"), str(tmp_path / "b.nii.gz")]
    with pytest.raises(ValueError, match="case_ids must hold 2 distinct IDs"):
        run_batch(cases, _stub_process, tmp_path / "o", case_ids=["x", "x"])
    with pytest.raises(ValueError, match="case_ids must be plain file names"):
        run_batch(cases, _stub_process, tmp_path / "o", case_ids=["x", "../y"])
    with pytest.raises(ValueError, match="positions must hold 2 indices"):
        run_batch(cases, _stub_process, tmp_path / "o", positions=[0])


# ------------------------------------------------------------------------ two spawned gloo processes
def _fake_engine(output: Any, batch: Any) -> SimpleNamespace:
    return SimpleNamespace(state=SimpleNamespace(output=output, batch=batch, metrics={}))


def _classification_cases() -> list[tuple[str, torch.Tensor, torch.Tensor]]:
    gen = torch.Generator().manual_seed(0)
    cases = []
    for i in range(5):
        logits = torch.randn(1, 2, 6, generator=gen)
        labels = (torch.rand(1, 6, generator=gen) > 0.5).long() * (i % 2)  # odd cases hold lesions
        labels[0, 0] = i % 2
        cases.append((f"case{i}", logits, labels))
    return cases


def _evaluate_classification(out_dir: Path, rank: int, world: int, gather: bool) -> dict[str, Any]:
    from medmamba.apps.classification import ClassificationReport, LesionMetric

    metrics = {
        "volume_auc": LesionMetric("auc", "volume", gather=gather),
        "slice_f1": LesionMetric("f1", "slice", gather=gather),
    }
    report = ClassificationReport(out_dir, gather=gather)
    engine = _fake_engine(None, None)
    report._on_started(engine)
    for index in shard_indices(5, rank, world):
        case_id, logits, labels = _classification_cases()[index]
        engine.state.output, engine.state.batch = {"pred": logits, "label": labels}, {"id": [case_id]}
        for metric in metrics.values():
            metric.update((logits, labels))
        report._on_iteration(engine)
    engine.state.metrics = {name: metric.compute() for name, metric in metrics.items()}
    report._on_completed(engine)
    return engine.state.metrics


def _spawned(rank: int, world: int, store: str, root: str) -> None:
    from medmamba.apps.segmentation import SegmentationMetrics
    from medmamba.training import end_distributed_run

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    out = Path(root)
    report = run_batch_distributed(_cases(out / "in"), _stub_process, out / "dist", report_name="r")
    run_batch_distributed(_cases(out / "in"), _stub_process, out / "kept", report_name="r", keep_partial_reports=True)
    assert rank_info().rank == rank and rank_info().distributed
    with pytest.raises(RuntimeError, match="different case lists"):  # raised on every rank, no hang
        run_batch_distributed(_cases(out / "in")[: 7 - rank], _stub_process, out / "mismatch")
    assert [o.status for o in report.outcomes].count("failed") == 2  # every rank returns the merged report
    # per-case values in input order, gathered from a strided split (as the evaluators' samplers split)
    assert all_gather_in_order([i for i in shard_indices(7, rank, world)]) == list(range(7))
    seg = SegmentationMetrics(hd95=False)
    seg.rows = [{"id": f"c{i}"} for i in shard_indices(5, rank, world)]
    assert [r["id"] for r in seg._gather()] == [f"c{i}" for i in range(5)]
    metrics = _evaluate_classification(out / "cls_dist", rank, world, gather=True)
    if rank == 0:
        (out / "cls_dist_metrics.json").write_text(json.dumps(metrics))
    end_distributed_run()


def test_two_gloo_processes_give_the_report_and_files_of_one(tmp_path: Path) -> None:
    import torch.multiprocessing as mp

    mp.spawn(_spawned, args=(2, str(tmp_path / "store"), str(tmp_path)), nprocs=2, join=True)
    single = run_batch(_cases(tmp_path / "in"), _stub_process, tmp_path / "single", report_name="r")
    dist_files, single_files = _tree(tmp_path / "dist"), _tree(tmp_path / "single")
    assert dist_files.keys() == single_files.keys()
    assert all(dist_files[k] == single_files[k] for k in dist_files if not k.startswith("r."))
    rows, extra = _rows(tmp_path / "dist" / "r.json")
    assert (rows, extra) == _rows(tmp_path / "single" / "r.json")
    assert [r["case_id"] for r in rows] == [o.case_id for o in single.outcomes]
    assert len({r["case_id"] for r in rows}) == len(rows) == 7  # each case exactly once
    assert extra == {"n_ok": 5, "n_failed": 2}
    assert not list((tmp_path / "dist").glob("r.rank*"))  # the partial reports were merged and removed
    ids = [r["case_id"] for r in rows]
    partial = [[r["case_id"] for r in _rows(tmp_path / "kept" / f"r.rank{k}.json")[0]] for k in (0, 1)]
    assert partial == [ids[0::2], ids[1::2]]  # each rank wrote its own report: cases i with i % 2 == rank
    # classification evaluation split over the ranks: the metrics and predictions of one process
    one = _evaluate_classification(tmp_path / "cls_single", 0, 1, gather=False)
    assert json.loads((tmp_path / "cls_dist_metrics.json").read_text()) == pytest.approx(one)
    assert (tmp_path / "cls_dist" / "predictions.csv").read_text() == (tmp_path / "cls_single" / "predictions.csv").read_text()


# ------------------------------------------------------------------- the bundle under torchrun
@pytest.fixture(scope="module")
def scans(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Four tiny volumes and a corrupt file; a random tiny MobileMambaSeg whose argmax varies."""
    from medmamba.networks import MobileMambaSeg

    root = tmp_path_factory.mktemp("dist_inference")
    inputs = root / "in"
    inputs.mkdir()
    rng = np.random.default_rng(0)
    for i in range(4):
        shape = (36 + 4 * i, 44, 6)
        z, y, x = np.meshgrid(*[np.linspace(-1, 1, s) for s in shape], indexing="ij")
        vol = 1000 * (z**2 + y**2 + x**2 < 0.6) * (1 + 0.3 * np.sin(5 * z)) + rng.normal(0, 20, shape)
        nib.save(nib.Nifti1Image(vol.astype(np.float32), np.diag([2.0, 2.0, 2.0, 1.0])), inputs / f"sub-{i:02d}.nii.gz")
    (inputs / "sub-01b.nii.gz").write_bytes(b"not a nifti file")
    torch.manual_seed(0)
    net = MobileMambaSeg("t2", spatial_dims=2, in_channels=3, out_channels=4, embed_dim=[32, 48, 64], depth=[1, 1, 1])
    state = net.state_dict()
    state["head.bias"].zero_()
    state["head.weight"].mul_(100.0)  # untrained: let the input, not the bias, pick the class
    (root / "bundle" / "models").mkdir(parents=True)
    torch.save(state, root / "bundle" / "models" / "model.pt")
    return {"root": root, "inputs": inputs, "bundle": root / "bundle"}


def _inference_overrides(scans: dict[str, Path], out: Path) -> dict[str, Any]:
    return {
        "bundle_root": str(scans["bundle"]),
        "input_path": str(scans["inputs"]),
        "output_dir": str(out),
        "write_probabilities": True,
        "inferer#inferer#progress": False,
        **TINY_NET,
    }


def test_segmentation_inference_on_two_processes_matches_one(scans: dict[str, Path]) -> None:
    from monai.bundle import ConfigWorkflow

    root = scans["root"]
    threads = torch.get_num_threads()
    try:
        wf = ConfigWorkflow(
            config_file=str(SEG_CONFIGS / "inference.json"), meta_file=str(SEG_CONFIGS / "metadata.json"),
            logging_file=str(SEG_CONFIGS / "logging.conf"), workflow_type=None,
            **_inference_overrides(scans, root / "one"), num_threads=1,
        )
        wf.initialize()
        (summary,) = wf.run()
        wf.finalize()
    finally:
        torch.set_num_threads(threads)
    assert summary["n_ok"] == 4 and summary["n_failed"] == 1

    args = []
    for key, value in _inference_overrides(scans, root / "two").items():
        args += [f"--{key}", value if isinstance(value, str) else json.dumps(value)]
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
        "-m", "monai.bundle", "run",
        "--config_file", str([str(SEG_CONFIGS / "inference.json"), str(SEG_CONFIGS / "multi_gpu_inference.json")]),
        "--meta_file", str(SEG_CONFIGS / "metadata.json"), "--logging_file", str(SEG_CONFIGS / "logging.conf"), *args,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-4000:]
    assert "rank 0 of 2: 3 of 5 case(s)" in log and "rank 1 of 2: 2 of 5 case(s)" in log
    assert "backend gloo" in log and "1 torch thread(s)" in log

    one, two = _tree(root / "one"), _tree(root / "two")
    assert one.keys() == two.keys()
    for name in one:
        if not name.startswith("segmentation."):
            assert one[name] == two[name], name  # masks and probabilities, byte for byte
    rows, extra = _rows(root / "two" / "segmentation.json")
    assert (rows, extra) == _rows(root / "one" / "segmentation.json")
    assert [r["case_id"] for r in rows] == ["sub-00", "sub-01", "sub-01b", "sub-02", "sub-03"]
    assert [r["status"] for r in rows] == ["ok", "ok", "failed", "ok", "ok"]
    assert "ScanLoadError" in rows[2]["reason"]
    voxels = rows[0]["voxels"]
    assert sum(v > 0 for v in voxels.values()) >= 2  # the untrained network does predict several classes


@pytest.mark.parametrize("bundle", ["mobilemamba_segmentation", "mobilemamba_classification"])
def test_overlays_fit_their_base_configs(bundle: str) -> None:
    from monai.bundle import ConfigParser

    configs = REPO / "bundles" / bundle / "configs"
    for base, overlay in (("inference.json", "multi_gpu_inference.json"), ("evaluate.json", "multi_gpu_evaluate.json")):
        parser = ConfigParser()
        parser.read_config([str(configs / base), str(configs / overlay)])
        assert parser["initialize"][-1] == "$medmamba.data.distributed_batch.init_distributed()"
        assert parser["finalize"][-1] == "$medmamba.training.end_distributed_run()"
        assert "rank_device" in parser["device"] and "rank_threads" in parser["num_threads"]
        if base == "evaluate.json":
            assert parser["dataloader"]["sampler"] == "@sampler" and parser["sampler"]["shuffle"] is False
            assert parser["sampler"]["even_divisible"] is False
    if bundle == "mobilemamba_classification":  # every metric and the report gather over the ranks
        gathered = [parser["key_metric"][k] for k in parser["key_metric"]]
        gathered += [parser["additional_metrics"][k] for k in parser["additional_metrics"]]
        gathered += [h for h in parser["handlers"] if h.get("gather")]
        assert all(item.get("gather") is True for item in gathered)
        assert [h["_target_"] for h in parser["handlers"] if h.get("gather")] == ["medmamba.handlers.ClassificationReport"]
