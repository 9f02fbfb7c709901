"""The end of a DDP run: barrier, process group destroyed, rank 0 returns."""

from __future__ import annotations

from pathlib import Path

import torch.distributed as dist

from medmamba.training import end_distributed_run


def test_end_distributed_run_without_a_process_group_does_nothing() -> None:
    assert not dist.is_initialized()
    assert end_distributed_run() is None
    assert not dist.is_initialized()


def test_rank_zero_returns_with_the_process_group_destroyed(tmp_path: Path) -> None:
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    assert dist.is_initialized()
    end_distributed_run()  # rank 0 is not ended: the test process goes on
    assert not dist.is_initialized()
