"""The process group, the device and the handlers of one rank of a multi-process bundle run."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.distributed as dist

__all__ = ["handlers_of_rank", "rank_cuda_device", "start_process_group"]


def start_process_group() -> bool:
    """Initialise the default ``torch.distributed`` process group unless one is initialised already.

    The rendezvous is ``torchrun``'s environment (``env://``); the backend is ``nccl`` when CUDA is
    available, else ``gloo``.

    Returns:
        Whether a process group was initialised already (nothing was done then).
    """
    if dist.is_initialized():
        return True
    dist.init_process_group(backend="nccl" if torch.cuda.is_available() else "gloo")
    return False


def rank_cuda_device() -> torch.device:
    """The device of this rank: GPU ``rank % number of GPUs`` when CUDA is available, else the CPU.

    Returns:
        ``torch.device("cuda:<rank % device_count>")`` or ``torch.device("cpu")``.

    Raises:
        ValueError: If CUDA is available and no process group is initialised (the rank is unknown).
    """
    if not torch.cuda.is_available():
        return torch.device("cpu")
    if not dist.is_initialized():
        raise ValueError("rank_cuda_device needs an initialised process group (start_process_group), got none.")
    return torch.device(f"cuda:{dist.get_rank() % torch.cuda.device_count()}")


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
