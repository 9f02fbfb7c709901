"""Batch inference across processes and nodes: cases sharded by rank, one merged report in input order.

Under ``torchrun`` (PyTorch's launcher) every process gets the same sorted case list (a folder's
cases from :func:`medmamba.data.find_scans`, or a datalist) and :func:`run_batch_distributed`
splits it by rank: case ``i`` goes to rank ``i % world_size``, so every case is processed exactly
once and the split needs no communication. Case IDs are assigned over the *whole* batch exactly as a
single-process :func:`medmamba.data.run_batch` assigns them (each rank derives the IDs of its own
cases, reading their DICOM headers for the privacy check, then the ranks exchange them), so the
per-case output folders are the same as in a one-process run. Each rank runs
:func:`~medmamba.data.run_batch` on its shard (a failing case is recorded and the rank goes on) and
writes its own partial report, ``<report_name>.rank<r>.csv``/``.json``, after every case; at the end
the outcomes are gathered, rank 0 writes the merged ``<report_name>.csv``/``.json`` with the cases
in input order, and a barrier makes sure it is written before any rank returns. The partial reports
are then removed (kept with ``keep_partial_reports=True``); a run that crashes leaves them behind.

Without an initialised process group (a plain ``python -m monai.bundle run``) nothing changes:
:func:`run_batch_distributed` is :func:`~medmamba.data.run_batch`.

The bundles' ``configs/multi_gpu_inference.json`` overlays start the process group with
:func:`init_distributed` (``gloo`` on CPU, ``nccl`` on CUDA; from ``torchrun``'s environment
variables), put each rank on its own GPU (:func:`rank_device`) or, on CPU, give it its share of the
node's cores (:func:`rank_threads`, so that the processes of a node never run more busy threads than
it has cores), and end the run with :func:`medmamba.training.end_distributed_run`.

Multi-node runs need ``out_dir`` on a file system all nodes share (each rank writes its own cases'
outputs there; the merged report is written by rank 0).
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar

import torch
import torch.distributed as dist

from medmamba.data.batch import (
    _SAFE_ID,
    BatchCase,
    BatchReport,
    CaseOutcome,
    _base_id,
    _case_input,
    _common_parent,
    _inside,
    case_redactor,
    run_batch,
)
from medmamba.io.results import write_results_csv, write_results_json

__all__ = [
    "RankInfo",
    "all_gather_in_order",
    "assign_case_ids",
    "init_distributed",
    "interleave_shards",
    "rank_device",
    "rank_info",
    "rank_threads",
    "run_batch_distributed",
    "shard_indices",
    "usable_cores",
]

logger = logging.getLogger(__name__)

T = TypeVar("T")

#: Default time a rank waits in a collective for the slowest rank (torch's default is 30 min, too
#: short for a night's batch split unevenly). A crashed rank does not make the others wait: torchrun
#: stops the whole group when one process fails.
DEFAULT_TIMEOUT_S: float = 6 * 3600.0


@dataclass(frozen=True)
class RankInfo:
    """Where this process stands in a ``torchrun`` group.

    Attributes:
        rank: Global rank (0 without a group).
        world_size: Number of processes (1 without a group).
        local_rank: Rank on this node.
        local_world_size: Number of processes on this node.
        distributed: Whether a ``torch.distributed`` process group is initialised.
    """

    rank: int
    world_size: int
    local_rank: int
    local_world_size: int
    distributed: bool


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"environment variable {name}={value!r} must be an integer (as torchrun sets it)") from None


def _initialised() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank_info() -> RankInfo:
    """This process's rank and group sizes: from the process group if one is initialised, else from
    ``torchrun``'s environment variables (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
    ``LOCAL_WORLD_SIZE``), else a single process.

    Returns:
        The :class:`RankInfo`.
    """
    if _initialised():
        rank, world = dist.get_rank(), dist.get_world_size()
    else:
        rank, world = _env_int("RANK", 0), _env_int("WORLD_SIZE", 1)
    local_rank = _env_int("LOCAL_RANK", rank)
    local_world = _env_int("LOCAL_WORLD_SIZE", world)
    return RankInfo(rank, world, local_rank, max(1, local_world), _initialised())


def usable_cores() -> int:
    """The CPU cores this process may keep busy.

    :func:`medmamba.resources.usable_cores` (affinity capped by a cgroup CPU quota) where that module
    is installed; else the affinity mask (``os.cpu_count()`` where there is none).
    """
    try:
        from medmamba.resources import usable_cores as resources_usable_cores
    except ImportError:
        pass
    else:
        return resources_usable_cores()
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def rank_threads(cores: int | None = None, processes: int | None = None) -> int:
    """Intra-op threads for one of the processes a node runs: its share of the cores, at least 1.

    Args:
        cores: Cores of the node this process may use (default :func:`usable_cores`).
        processes: Processes on the node (default ``LOCAL_WORLD_SIZE`` from ``torchrun``, 1 without).

    Returns:
        ``max(1, cores // processes)``.

    Raises:
        ValueError: If ``cores`` or ``processes`` is not a positive integer.
    """
    n_cores = usable_cores() if cores is None else cores
    n_proc = rank_info().local_world_size if processes is None else processes
    for name, value in (("cores", n_cores), ("processes", n_proc)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return max(1, n_cores // n_proc)


def rank_device() -> torch.device:
    """The device of this process: ``cuda:<LOCAL_RANK mod GPU count>`` when CUDA is available, else the CPU."""
    if torch.cuda.is_available():
        return torch.device(f"cuda:{rank_info().local_rank % torch.cuda.device_count()}")
    return torch.device("cpu")


def init_distributed(
    backend: str | None = None, timeout_s: float | None = DEFAULT_TIMEOUT_S, single_process_group: bool = False
) -> RankInfo:
    """Start the process group from ``torchrun``'s environment (a no-op for a single process).

    Does nothing when a group is already initialised, or when ``WORLD_SIZE`` is unset or 1 unless
    ``single_process_group`` is set. Otherwise initialises ``torch.distributed`` with ``backend``
    (default ``nccl`` when CUDA is available, else ``gloo``) and the ``env://`` rendezvous
    ``torchrun`` prepares, after selecting this rank's GPU (:func:`rank_device`).

    Args:
        backend: ``"gloo"``, ``"nccl"`` or ``None`` (by device).
        timeout_s: How long a collective waits for the slowest rank, in seconds; ``None`` keeps
            ``torch.distributed``'s default (the bundles' training, where ranks stay in step).
        single_process_group: Start a group also for ``torchrun --nproc_per_node 1`` (``WORLD_SIZE``
            1): what ``DistributedDataParallel`` in the bundles' ``multi_gpu_train.json`` needs. Without
            ``torchrun``'s environment (no ``WORLD_SIZE``) nothing is started either way.

    Returns:
        The :class:`RankInfo` after initialisation.

    Raises:
        ValueError: If ``backend`` is not ``None``/``"gloo"``/``"nccl"``, or ``timeout_s`` is neither ``None`` nor positive.
    """
    if backend not in (None, "gloo", "nccl"):
        raise ValueError(f"backend must be None, 'gloo' or 'nccl', got {backend!r}")
    if timeout_s is not None and (
        isinstance(timeout_s, bool) or not isinstance(timeout_s, (int, float)) or not timeout_s > 0
    ):
        raise ValueError(f"timeout_s must be a positive number of seconds or None, got {timeout_s!r}")
    world = _env_int("WORLD_SIZE", 0)
    if _initialised() or world == 0 or (world == 1 and not single_process_group):
        return rank_info()
    chosen = backend or ("nccl" if torch.cuda.is_available() else "gloo")
    if torch.cuda.is_available():
        torch.cuda.set_device(rank_device())
    timeout = None if timeout_s is None else timedelta(seconds=float(timeout_s))
    dist.init_process_group(backend=chosen, timeout=timeout)
    info = rank_info()
    logger.info(
        "distributed: rank %d of %d (local rank %d of %d), backend %s, device %s, %d torch thread(s)",
        info.rank, info.world_size, info.local_rank, info.local_world_size, chosen, rank_device(), torch.get_num_threads(),
    )
    return info


def shard_indices(n: int, rank: int, world_size: int) -> list[int]:
    """The cases of ``rank``: indices ``i`` in ``range(n)`` with ``i % world_size == rank``.

    Args:
        n: Number of cases.
        rank: This process's rank, ``0 <= rank < world_size``.
        world_size: Number of processes.

    Returns:
        The indices, ascending.

    Raises:
        ValueError: If an argument is out of range.
    """
    for name, value in (("n", n), ("rank", rank), ("world_size", world_size)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{name} must be an integer, got {value!r}")
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if world_size < 1:
        raise ValueError(f"world_size must be >= 1, got {world_size}")
    if not 0 <= rank < world_size:
        raise ValueError(f"rank must be in [0, {world_size}), got {rank}")
    return list(range(rank, n, world_size))


def interleave_shards(shards: Sequence[Sequence[T]]) -> list[T]:
    """Undo :func:`shard_indices`: the items of all ranks back in input order.

    ``shards[r]`` holds rank ``r``'s items in its own order (input indices ``r, r + W, r + 2W, …``),
    as :func:`shard_indices` and MONAI's ``DistributedSampler(shuffle=False, even_divisible=False)``
    split a list.

    Args:
        shards: One sequence per rank.

    Returns:
        The items in input order.

    Raises:
        ValueError: If the shard lengths are not those of such a split.
    """
    world = len(shards)
    if world == 0:
        return []
    total = sum(len(s) for s in shards)
    expected = [len(shard_indices(total, r, world)) for r in range(world)]
    lengths = [len(s) for s in shards]
    if lengths != expected:
        raise ValueError(f"shards must have lengths {expected} (a strided split of {total} items), got {lengths}")
    return [shards[i % world][i // world] for i in range(total)]


def all_gather_in_order(values: Sequence[T]) -> list[T]:
    """Every rank's ``values`` in input order, on every rank (a collective: all ranks must call it).

    For per-case results of data split as :func:`shard_indices` and MONAI's
    ``DistributedSampler(shuffle=False, even_divisible=False)`` split it: rank ``r`` holds the
    results of cases ``r, r + W, …``. Without an initialised process group: ``list(values)``.

    Args:
        values: This rank's results, in its own order (picklable).

    Returns:
        All ranks' results, interleaved back into input order.

    Raises:
        ValueError: If the ranks' counts are not those of such a split.
    """
    if not _initialised() or dist.get_world_size() == 1:
        return list(values)
    gathered: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, list(values))
    return interleave_shards(gathered)


def assign_case_ids(
    items: Sequence[tuple[Path, Mapping[str, Any]]],
    indices: Iterable[int],
    id_key: str = "id",
) -> dict[int, str]:
    """The base case IDs of the cases at ``indices`` as :func:`~medmamba.data.run_batch` derives them.

    The datalist ``id`` (or the input's name relative to the common folder of *all* items), made
    file-name safe, or ``case-NNNN`` when it holds an identifying value of the case's DICOM headers.
    Duplicates are resolved afterwards, over the whole batch (:func:`_unique_ids`).

    Args:
        items: ``(input path, datalist item)`` of every case of the batch.
        indices: The cases to derive IDs for.
        id_key: Key of the case ID in the items.

    Returns:
        Index -> base ID.
    """
    common = _common_parent([p for p, _ in items])
    out: dict[int, str] = {}
    for index in indices:
        path, item = items[index]
        case_id = _base_id(item, path, id_key, index, common)
        redact = case_redactor(path)
        if redact(case_id) != case_id:
            case_id = f"case-{index:04d}"
        out[index] = case_id
    return out


def _unique_ids(base_ids: Sequence[str]) -> list[str]:
    """De-duplicate in input order as :func:`~medmamba.data.run_batch` does."""
    used: set[str] = set()
    ids = []
    for index, case_id in enumerate(base_ids):
        while case_id in used:
            case_id = f"{case_id}-{index:04d}"
        used.add(case_id)
        ids.append(case_id)
    return ids


def _fingerprint(items: Sequence[tuple[Path, Mapping[str, Any]]]) -> str:
    """The number and order of the cases, by their paths relative to their common folder (the same on
    nodes that mount a shared file system at different places)."""
    common = _common_parent([p for p, _ in items])
    digest = hashlib.sha256(str(len(items)).encode())
    for path, _ in items:
        try:
            rel = path.absolute().relative_to(common) if common is not None else Path(path.name)
        except ValueError:
            rel = path
        digest.update(b"\0" + str(rel).encode())
    return digest.hexdigest()


def _remove_files(*paths: Path) -> None:
    for path in paths:
        try:
            path.unlink()
        except FileNotFoundError:
            pass


def run_batch_distributed(
    cases: Iterable[str | os.PathLike[str] | Mapping[str, Any]],
    process: Callable[[BatchCase], Mapping[str, Any] | None],
    out_dir: str | os.PathLike[str],
    *,
    input_key: str = "image",
    id_key: str = "id",
    report_name: str = "results",
    logger: logging.Logger | None = None,
    keep_partial_reports: bool = False,
) -> BatchReport:
    """:func:`~medmamba.data.run_batch` over the ranks of a ``torch.distributed`` group (see the module doc).

    Every rank must call it with the same ``cases`` in the same order. Without an initialised
    process group it is :func:`~medmamba.data.run_batch` itself.

    Args:
        cases: Input paths or datalist items (mappings with ``input_key`` and optionally ``id_key``).
        process: Called once per case of this rank with a :class:`~medmamba.data.BatchCase`
            (``index`` is the case's position in ``cases``); see :func:`~medmamba.data.run_batch`.
        out_dir: Output folder, the same for all ranks (shared between nodes).
        input_key: Key of the input path in mapping cases.
        id_key: Key of the case ID in mapping cases.
        report_name: Base name of the merged CSV/JSON report.
        logger: Logger for progress lines.
        keep_partial_reports: Keep each rank's ``<report_name>.rank<r>.csv``/``.json`` after the merge.

    Returns:
        The merged report (all cases, in input order), on every rank.

    Raises:
        RuntimeError: If ``torchrun`` started several processes but no process group is initialised
            (each process would run every case; start the group with :func:`init_distributed`), or
            if the ranks were given different case lists.
        TypeError: If a case is neither a path nor a mapping with ``input_key``.
        ValueError: As :func:`~medmamba.data.run_batch`.
    """
    if not _initialised() or dist.get_world_size() == 1:
        if _env_int("WORLD_SIZE", 1) > 1:
            raise RuntimeError(
                f"launched as one of WORLD_SIZE={os.environ['WORLD_SIZE']} processes without a torch.distributed process "
                "group: every process would run every case. Add the bundle's configs/multi_gpu_inference.json "
                "(or call medmamba.data.distributed_batch.init_distributed() first)."
            )
        return run_batch(cases, process, out_dir, input_key=input_key, id_key=id_key, report_name=report_name, logger=logger)
    log = logger or logging.getLogger("medmamba.data.batch")
    if not report_name or _SAFE_ID.sub("_", report_name) != report_name:
        raise ValueError(f"report_name={report_name!r} must be a plain file name (letters, digits, . _ -)")
    rank, world = dist.get_rank(), dist.get_world_size()
    items = [_case_input(c, input_key) for c in cases]
    for path, _ in items:  # checked on every rank before any exchange, so that all ranks fail alike
        if path.is_dir() and _inside(Path(out_dir), path):
            raise ValueError(f"out_dir={os.fspath(out_dir)!r} lies inside input folder {str(path)!r}; inputs must stay untouched")
    mine = shard_indices(len(items), rank, world)

    # case IDs over the whole batch: each rank derives its own cases' base IDs, then all resolve duplicates
    gathered: list[Any] = [None] * world
    dist.all_gather_object(gathered, (_fingerprint(items), len(items), assign_case_ids(items, mine, id_key)))
    if len({fp for fp, _, _ in gathered}) != 1:  # every rank sees every rank's list: all fail alike
        raise RuntimeError(
            f"the ranks were given different case lists (cases per rank: {[n for _, n, _ in gathered]}); every rank "
            "must list the same cases in the same order (same input folder or datalist)"
        )
    base_ids = {i: cid for _, _, part in gathered for i, cid in part.items()}
    ids = _unique_ids([base_ids[i] for i in range(len(items))])
    log.info("rank %d of %d: %d of %d case(s)", rank, world, len(mine), len(items))

    partial = run_batch(
        [items[i][1] for i in mine],
        process,
        out_dir,
        input_key=input_key,
        id_key=id_key,
        report_name=f"{report_name}.rank{rank}",
        logger=logger,
        case_ids=[ids[i] for i in mine],
        positions=mine,
    )
    shards: list[Any] = [None] * world
    dist.all_gather_object(shards, partial.outcomes)
    outcomes: list[CaseOutcome] = interleave_shards(shards)
    if not keep_partial_reports:
        _remove_files(partial.csv_path, partial.json_path)
    out = Path(out_dir)
    csv_path, json_path = out / f"{report_name}.csv", out / f"{report_name}.json"
    report = BatchReport(outcomes, csv_path, json_path)
    if rank == 0:
        rows = [o.row() for o in outcomes]
        if rows:
            write_results_csv(csv_path, rows)
        else:
            write_results_csv(csv_path, [], columns=["case_id", "status", "reason", "seconds"])
        write_results_json(json_path, rows, extra={"n_ok": report.n_ok, "n_failed": report.n_failed})
        log.info("batch of %d rank(s): %d ok, %d failed; report %s", world, report.n_ok, report.n_failed, csv_path)
    dist.barrier()
    return report
