"""The handlers of one rank of a multi-process bundle run.

The process group and the rank's device: :func:`medmamba.data.distributed_batch.init_distributed` and
:func:`~medmamba.data.distributed_batch.rank_device`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.distributed as dist

__all__ = ["handlers_of_rank"]


def handlers_of_rank(handlers: Sequence[Any], keep: type | tuple[type, ...]) -> list[Any]:
    """The handlers one rank of a distributed evaluation attaches: all on rank 0, only ``keep`` elsewhere.

    The handlers kept on every rank are those that gather their results across ranks (their
    collective calls need every rank); the others log or write files, which rank 0 does alone.

    Args:
        handlers: the evaluation's handlers.
        keep: the handler class (or classes) every rank attaches.

    Returns:
        The handlers to attach on this rank, in their order.

    Raises:
        ValueError: If no process group is initialised.
    """
    if not dist.is_initialized():
        raise ValueError("handlers_of_rank needs an initialised process group, got none.")
    rank = dist.get_rank()
    return [h for h in handlers if rank == 0 or isinstance(h, keep)]
