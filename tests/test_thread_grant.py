"""Cores granted to a running training process (``medmamba.training.thread_grant``)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from medmamba.training import ThreadGrantHandler, grant_threads, read_thread_grant


@pytest.fixture
def restore_threads():  # noqa: ANN201
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


@pytest.fixture
def two_cores_one_thread(restore_threads: None, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two usable cores, whatever the machine has; this process at one compute thread."""
    import medmamba.resources

    monkeypatch.setattr(medmamba.resources, "usable_cores", lambda *a, **k: 2)
    torch.set_num_threads(1)


def test_grant_file_round_trip_and_errors(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "job.threads"
    assert read_thread_grant(path) is None
    assert grant_threads(path, 3) == path and path.read_text() == "3\n"
    assert read_thread_grant(path) == 3
    assert not path.with_name("job.threads.tmp").exists()  # written whole, then renamed
    for bad in (0, -2, 1.5, True, "2"):
        with pytest.raises(ValueError, match="threads must be an int >= 1"):
            grant_threads(path, bad)  # type: ignore[arg-type]
    path.write_text("two\n")
    with pytest.raises(ValueError, match="must hold one integer >= 1, got 'two'"):
        read_thread_grant(path)
    path.write_text("0\n")
    with pytest.raises(ValueError, match="got 0"):
        read_thread_grant(path)


def test_handler_applies_each_new_grant_once_capped_at_the_usable_cores(tmp_path: Path, two_cores_one_thread: None) -> None:
    path = tmp_path / "job.threads"
    handler = ThreadGrantHandler(path)
    assert handler.poll() is None and torch.get_num_threads() == 1  # no grant yet
    grant_threads(path, 2)
    assert handler.poll() == 2 and torch.get_num_threads() == 2
    torch.set_num_threads(1)
    assert handler.poll() is None and torch.get_num_threads() == 1  # an unchanged file is not read again
    grant_threads(path, 64)
    stamp = path.stat().st_mtime_ns + 1_000_000
    os.utime(path, ns=(stamp, stamp))  # a new grant even on a coarse-clock file system
    assert handler.poll() == 2 and torch.get_num_threads() == 2  # 64 granted, 2 usable


def test_handler_without_file_does_nothing_and_checks_its_period(restore_threads: None) -> None:
    before = torch.get_num_threads()
    assert ThreadGrantHandler(None).poll() is None and ThreadGrantHandler("").grant_file is None
    assert torch.get_num_threads() == before
    with pytest.raises(ValueError, match="every_n_iters must be an int >= 1, got 0"):
        ThreadGrantHandler(None, every_n_iters=0)


def test_handler_attached_to_an_engine_resizes_between_iterations(tmp_path: Path, two_cores_one_thread: None) -> None:
    from ignite.engine import Engine

    path = tmp_path / "job.threads"
    seen: list[int] = []

    def step(engine: Engine, batch: int) -> None:
        seen.append(torch.get_num_threads())
        if engine.state.iteration == 2:
            grant_threads(path, 2)  # the launcher, while iteration 2 runs

    engine = Engine(step)
    ThreadGrantHandler(path).attach(engine)
    engine.run(range(4), max_epochs=1)
    assert seen == [1, 1, 2, 2]


@pytest.mark.parametrize("bundle", ["classification", "segmentation"])
@pytest.mark.parametrize("config", [("train.json",), ("train.json", "train_teacher.json")], ids="+".join)
def test_training_configs_attach_the_handler_off_by_default(bundle: str, config: tuple[str, ...]) -> None:
    from monai.bundle import ConfigParser

    root = Path(__file__).resolve().parents[1] / "bundles" / f"mobilemamba_{bundle}" / "configs"
    cfg = ConfigParser.load_config_files([str(root / c) for c in config])  # the teacher's: an overlay on train.json
    assert cfg["thread_grant_file"] is None
    handlers = [h for h in cfg["train"]["handlers"] if isinstance(h, dict) and h.get("_target_", "").endswith("ThreadGrantHandler")]
    assert handlers == [{"_target_": "medmamba.training.ThreadGrantHandler", "grant_file": "@thread_grant_file"}]


@pytest.mark.parametrize("bundle", ["classification", "segmentation"])
def test_evaluation_configs_attach_the_handler_off_by_default(bundle: str) -> None:
    from monai.bundle import ConfigParser

    root = Path(__file__).resolve().parents[1] / "bundles" / f"mobilemamba_{bundle}" / "configs"
    parser = ConfigParser()
    parser.read_config(str(root / "evaluate.json"))
    assert parser["thread_grant_file"] is None
    handlers = [h for h in parser["handlers"] if isinstance(h, dict) and h.get("_target_", "").endswith("ThreadGrantHandler")]
    assert handlers == [{"_target_": "medmamba.training.ThreadGrantHandler", "grant_file": "@thread_grant_file"}]
    parser["thread_grant_file"] = "/tmp/grant"
    index = [i for i, h in enumerate(parser["handlers"]) if h in handlers][0]
    handler = parser.get_parsed_content(f"handlers#{index}")
    assert isinstance(handler, ThreadGrantHandler) and handler.grant_file == Path("/tmp/grant")
