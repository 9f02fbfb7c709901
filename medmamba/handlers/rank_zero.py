"""The handlers a process keeps under DDP: saving and logging on rank 0 only."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from medmamba.handlers.classification_report import ClassificationReport

__all__ = ["rank_zero_handlers"]


def rank_zero_handlers(handlers: Sequence[Any]) -> list[Any]:
    """The handlers a process keeps under DDP: all on rank 0; no saving or logging on other ranks.

    Drops ``CheckpointSaver``, ``StatsHandler``, ``TensorBoardStatsHandler``, ignite's ``ProgressBar``
    and :class:`medmamba.handlers.ClassificationReport` on ranks other than 0 (everything is kept
    without an initialised process group). Metric handlers such as
    :class:`medmamba.handlers.SegmentationMetrics` stay: they gather over all ranks.

    Args:
        handlers: the handlers of a trainer or evaluator (e.g. a bundle's ``train#handlers``).

    Returns:
        The handlers this process keeps, in their order.
    """
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0:
        return list(handlers)
    from ignite.handlers import ProgressBar
    from monai.handlers import CheckpointSaver, StatsHandler, TensorBoardStatsHandler

    drop = (CheckpointSaver, StatsHandler, TensorBoardStatsHandler, ProgressBar, ClassificationReport)
    return [h for h in handlers if not isinstance(h, drop)]
