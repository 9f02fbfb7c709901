"""The end of a multi-process (DDP) run of a bundle.

The bundles' ``multi_gpu_train.json`` finalizes with :func:`end_distributed_run`. Besides the usual
barrier and ``destroy_process_group``, it ends every rank but 0 with ``os._exit`` once its output is
flushed: those ranks write nothing (the bundles drop their checkpoint savers and loggers there), and
skipping their interpreter teardown avoids a crash of PyTorch's gloo backend at exit that we saw
about once in ten 2-process CPU runs (the rank aborts with "terminate called without an active
exception" after its work is done, so ``torchrun`` reports the whole run as failed). The
distributed-training network (DDP) keeps a reference to the process group, so the group's C++ object
outlives ``destroy_process_group`` until the interpreter tears down; PyTorch's own notes on the abort
(an atexit hook to destroy process groups before interpreter finalization, pytorch/pytorch#179291)
point at that teardown.
"""

from __future__ import annotations

import logging
import os
import sys

import torch.distributed as dist

__all__ = ["end_distributed_run"]


def end_distributed_run(exit_other_ranks: bool = True) -> None:
    """Barrier, destroy the process group, and end ranks other than 0 at once (see the module doc).

    Nothing happens without an initialised process group.

    Args:
        exit_other_ranks: end ranks other than 0 with ``os._exit(0)`` after flushing stdout, stderr
            and the logging handlers (``False``: return on every rank).
    """
    if not (dist.is_available() and dist.is_initialized()):
        return
    rank = dist.get_rank()
    dist.barrier()
    dist.destroy_process_group()
    if exit_other_ranks and rank != 0:
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
