"""What this process may use: CPU cores, compute threads, data-loader workers, native bfloat16.

One place decides the threads and processes of a run, from the CPUs this process may actually use
(its CPU affinity and any cgroup CPU quota, e.g. a container's ``--cpus``), not from the machine's
core count:

- :func:`usable_cores`: the CPUs available to this process (affinity ∩ cgroup v1/v2 quota);
- :func:`resolve_threads` / :func:`configure_threads`: intra-op threads (``0`` or ``"auto"``: all
  usable cores, shared among the ``torchrun`` processes of this node) and inter-op threads, set
  together; never more threads than usable cores;
- :func:`thread_env`: the OpenMP/MKL environment (thread count; the wait policy left at OpenMP's
  default unless asked) that gives a child process the same count from its start; OpenMP reads it when it loads, before any
  config can run, so a launcher (the main job) sets it for the processes it starts;
- :func:`dataloader_workers`: worker processes of a training ``DataLoader``;
- :func:`tune_allocator`: glibc's allocator told to keep large blocks (called by
  :func:`configure_threads`): tensors of a few MiB, freed and allocated again at every step, then
  stop costing a fresh ``mmap`` and the zeroing of every page each time;
- :func:`cpu_native_bf16`: whether the CPU computes bfloat16 natively (AMX / AVX512-BF16), with the
  reason, as used by :func:`medmamba.training.resolve_precision`;
- :func:`run_setup_line` / :func:`log_run_setup`: the one log line that states a run's device,
  precision, threads and CPU.

A bundle config uses it in its ``initialize`` section::

    "num_threads": "auto",
    "initialize": ["$medmamba.resources.configure_threads(@num_threads)",
                   "$medmamba.resources.log_run_setup(@device, @precision, @teacher_precision)"]
"""

from __future__ import annotations

import logging
import math
import os
import platform
from collections.abc import Collection
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "cgroup_cpu_limit",
    "configure_threads",
    "cpu_capability",
    "cpu_model",
    "cpu_native_bf16",
    "dataloader_workers",
    "local_world_size",
    "log_run_setup",
    "onednn_isa_cap",
    "resolve_threads",
    "run_setup_line",
    "thread_env",
    "tune_allocator",
    "usable_cores",
]

logger = logging.getLogger(__name__)

#: oneDNN ISA cap variables (``ONEDNN_MAX_CPU_ISA`` and its older name); read when oneDNN loads.
ISA_CAP_VARIABLES = ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA")

#: ``torch.backends.cpu.get_cpu_capability()`` values of x86 ATen kernels without AVX-512.
_X86_BELOW_AVX512 = ("DEFAULT", "NO AVX", "AVX2")

_AUTO_THREADS = ("auto",)


# ------------------------------------------------------------------------------------------------ cores
def _quota_v2(path: Path) -> float | None:
    """CPUs allowed by a cgroup v2 ``cpu.max`` file (``"<quota> <period>"`` or ``"max <period>"``)."""
    try:
        fields = path.read_text(encoding="utf-8").split()
    except OSError:
        return None
    if len(fields) != 2 or fields[0] == "max":
        return None
    try:
        quota, period = int(fields[0]), int(fields[1])
    except ValueError:
        return None
    return quota / period if quota > 0 and period > 0 else None


def _quota_v1(folder: Path) -> float | None:
    """CPUs allowed by a cgroup v1 ``cpu.cfs_quota_us`` / ``cpu.cfs_period_us`` pair (quota -1: none)."""
    try:
        quota = int((folder / "cpu.cfs_quota_us").read_text(encoding="utf-8").strip())
        period = int((folder / "cpu.cfs_period_us").read_text(encoding="utf-8").strip())
    except (OSError, ValueError):
        return None
    return quota / period if quota > 0 and period > 0 else None


def _own_cgroups(self_cgroup: Path) -> tuple[str | None, str | None]:
    """This process's cgroup v2 path and its v1 ``cpu`` controller path, from ``/proc/self/cgroup``."""
    v2 = v1 = None
    try:
        lines = self_cgroup.read_text(encoding="utf-8").splitlines()
    except OSError:
        return None, None
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, path = parts
        if controllers == "":
            v2 = path
        elif "cpu" in controllers.split(","):
            v1 = path
    return v2, v1


def _along(mount: Path, relative: str | None) -> list[Path]:
    """``mount/relative`` and each of its ancestors up to ``mount`` (a limit anywhere above applies too)."""
    folders = [mount]
    if relative:
        parts = [p for p in relative.strip("/").split("/") if p and p != ".."]
        for i in range(1, len(parts) + 1):
            folders.append(mount.joinpath(*parts[:i]))
    return folders


def cgroup_cpu_limit(
    cgroup_root: str | os.PathLike = "/sys/fs/cgroup", self_cgroup: str | os.PathLike = "/proc/self/cgroup"
) -> float | None:
    """The CPUs a cgroup CPU quota allows this process (e.g. ``1.5``), or ``None`` without a quota.

    Reads cgroup v2 ``cpu.max`` (unified hierarchy mounted at ``cgroup_root`` or, on hybrid systems,
    ``cgroup_root/unified``) and cgroup v1 ``cpu.cfs_quota_us`` / ``cpu.cfs_period_us`` (under
    ``cgroup_root/cpu`` or ``cgroup_root/cpu,cpuacct``), in this process's own cgroup (from
    ``self_cgroup``) and every ancestor; the smallest quota found wins.

    Args:
        cgroup_root: where the cgroup file systems are mounted.
        self_cgroup: the ``/proc/self/cgroup`` file naming this process's cgroups.
    """
    root = Path(cgroup_root)
    v2_path, v1_path = _own_cgroups(Path(self_cgroup))
    limits: list[float] = []
    for mount in (root, root / "unified"):
        if (mount / "cgroup.controllers").exists():
            limits += [q for f in _along(mount, v2_path) if (q := _quota_v2(f / "cpu.max")) is not None]
    for name in ("cpu", "cpu,cpuacct", "cpuacct,cpu"):
        mount = root / name
        if mount.is_dir():
            limits += [q for f in _along(mount, v1_path) if (q := _quota_v1(f)) is not None]
    return min(limits) if limits else None


def usable_cores(
    affinity: Collection[int] | None = None,
    cgroup_root: str | os.PathLike = "/sys/fs/cgroup",
    self_cgroup: str | os.PathLike = "/proc/self/cgroup",
) -> int:
    """The number of CPUs this process may keep busy: its CPU affinity, capped by any cgroup quota.

    A fractional quota rounds down (at least 1): OpenMP threads that wait at a barrier for a
    throttled sibling lose more than the fraction gains.

    Args:
        affinity: the CPU ids this process may run on; ``None`` reads ``os.sched_getaffinity(0)``
            (``os.cpu_count()`` where the platform has no affinity).
        cgroup_root: where the cgroup file systems are mounted (see :func:`cgroup_cpu_limit`).
        self_cgroup: the ``/proc/self/cgroup`` file.

    Returns:
        At least 1.
    """
    if affinity is None:
        try:
            count = len(os.sched_getaffinity(0))
        except (AttributeError, OSError):  # macOS, Windows
            count = os.cpu_count() or 1
    else:
        count = len(affinity)
    count = max(1, count)
    limit = cgroup_cpu_limit(cgroup_root, self_cgroup)
    if limit is not None:
        count = min(count, max(1, math.floor(limit + 1e-6)))
    return count


def local_world_size() -> int:
    """Processes of this run on this node: ``LOCAL_WORLD_SIZE`` as ``torchrun`` sets it, else 1."""
    value = os.environ.get("LOCAL_WORLD_SIZE", "1")
    try:
        return max(1, int(value))
    except ValueError:
        return 1


# ---------------------------------------------------------------------------------------------- threads
def resolve_threads(num_threads: int | str, cores: int | None = None, processes: int | None = None) -> int:
    """The intra-op thread count for ``num_threads``: ``0`` / ``"auto"`` means this process's share of
    the usable cores; a positive count is capped at the usable cores (with a warning).

    Args:
        num_threads: a count ``>= 1``, or ``0`` / ``"auto"`` (also as the strings ``"0"``, ``"3"``,
            as a command line passes them).
        cores: the usable cores; ``None`` calls :func:`usable_cores`.
        processes: the processes sharing those cores (``None``: :func:`local_world_size`, i.e. the
            ``torchrun`` processes of this node); ``"auto"`` gives each ``cores // processes``.

    Raises:
        TypeError: ``num_threads`` is neither an int nor a string.
        ValueError: a negative count or an unknown string.
    """
    if isinstance(num_threads, bool) or not isinstance(num_threads, (int, str)):
        raise TypeError(f"num_threads must be an int >= 0 or 'auto', got {type(num_threads).__name__} {num_threads!r}.")
    if isinstance(num_threads, str):
        text = num_threads.strip().lower()
        if text in _AUTO_THREADS:
            num_threads = 0
        else:
            try:
                num_threads = int(text)
            except ValueError:
                raise ValueError(f"num_threads must be an int >= 0 or 'auto', got {num_threads!r}.") from None
    if num_threads < 0:
        raise ValueError(f"num_threads must be an int >= 0 or 'auto' (0: all usable cores), got {num_threads}.")
    cores = usable_cores() if cores is None else int(cores)
    if num_threads == 0:
        return max(1, cores // (local_world_size() if processes is None else max(1, int(processes))))
    if num_threads > cores:
        logger.warning(
            "num_threads=%d is more than the %d CPU core(s) this process may use; using %d (more busy threads "
            "than cores only adds switching).", num_threads, cores, cores,
        )
        return cores
    return num_threads


def thread_env(num_threads: int, wait_policy: str | None = None) -> dict[str, str]:
    """Environment variables giving a child process ``num_threads`` OpenMP/MKL threads from its start.

    These variables are read when the OpenMP runtime loads (at ``import torch``); set them for a
    child process, not in a running one. The wait policy is left at OpenMP's default (an idle
    thread spins for a while, then sleeps) unless ``wait_policy`` is given: ``OMP_WAIT_POLICY=PASSIVE``
    (sleep at once) only pays where processes run more busy threads than cores; with several threads
    in one process it costs a sleep and a wake-up at every parallel region, and a two-thread training
    step of the classification student was no faster than a one-thread one (1.07x against 1.45x with
    the default policy; ``benchmarks/bench_wait_policy.py``, ``docs/benchmarks.md``).

    Args:
        num_threads: threads per process, ``>= 1``.
        wait_policy: ``None`` (OpenMP's default, the variable not set), ``"PASSIVE"`` or ``"ACTIVE"``.

    Raises:
        ValueError: ``num_threads < 1`` or an unknown ``wait_policy``.
    """
    if isinstance(num_threads, bool) or not isinstance(num_threads, int) or num_threads < 1:
        raise ValueError(f"num_threads must be an int >= 1, got {num_threads!r}.")
    if wait_policy is not None and (not isinstance(wait_policy, str) or wait_policy.upper() not in ("PASSIVE", "ACTIVE")):
        raise ValueError(f"wait_policy must be None, 'PASSIVE' or 'ACTIVE', got {wait_policy!r}.")
    n = str(num_threads)
    env = {"OMP_NUM_THREADS": n, "MKL_NUM_THREADS": n}
    if wait_policy is not None:
        env["OMP_WAIT_POLICY"] = wait_policy.upper()
    return env


def configure_threads(num_threads: int | str = "auto", interop_threads: int = 1) -> int:
    """Set this process's compute threads: torch intra-op and inter-op (if not yet started), and
    the allocator's large-block policy (:func:`tune_allocator`).

    The OpenMP runtime has read its environment (``OMP_WAIT_POLICY`` ...) when torch was imported;
    a launcher sets it for its children with :func:`thread_env`, and :func:`run_setup_line` reports it.

    Args:
        num_threads: see :func:`resolve_threads` (``0`` / ``"auto"``: this process's share of the
            usable cores).
        interop_threads: torch inter-op threads (``torch.jit.fork`` and the like; the bundles run no
            inter-op parallel work, so 1 keeps every busy thread within the intra-op budget). Set
            only while the inter-op pool has not started; otherwise left as it is.

    Returns:
        The intra-op thread count set.

    Raises:
        TypeError, ValueError: as :func:`resolve_threads`; ``interop_threads < 1``.
    """
    if isinstance(interop_threads, bool) or not isinstance(interop_threads, int) or interop_threads < 1:
        raise ValueError(f"interop_threads must be an int >= 1, got {interop_threads!r}.")
    threads = resolve_threads(num_threads)
    torch.set_num_threads(threads)
    tune_allocator()
    if torch.get_num_interop_threads() != interop_threads:
        try:
            torch.set_num_interop_threads(interop_threads)
        except RuntimeError:  # the inter-op pool has started (or was set before): it stays as it is
            logger.debug("inter-op threads already started (%d); left as they are", torch.get_num_interop_threads())
    return threads


#: glibc ``mallopt`` parameters (``malloc.h``) and the values :func:`tune_allocator` sets: blocks up to
#: 32 MiB from the heap instead of ``mmap``; freed memory kept (trim threshold 64 GiB) with 1 GiB of
#: headroom per heap extension (virtual until touched). ``benchmarks/common.py`` sets the same values
#: as ``MALLOC_*_`` variables for its re-executed benchmarks.
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3
ALLOCATOR_SETTINGS = {"mmap_threshold": 32 * 1024**2, "trim_threshold": 64 * 1024**3, "top_pad": 1024**3}
_ALLOCATOR_ENV = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_")
_allocator_state: list[str] = []


def tune_allocator() -> str:
    """Tell glibc's allocator to keep large blocks (``mallopt``), where the C library is glibc.

    A training step frees and allocates tensors of a few MiB (activations, gradients, augmented
    volumes) over and over. By default glibc serves blocks above its mmap threshold with a fresh
    ``mmap`` and returns them at ``free``, so each one costs page faults and the zeroing of its pages
    again; on the development VM (one thread, AVX2 kernels) keeping them cut the classification
    bundle's data time by about a quarter and its step time by about 7 % (``docs/benchmarks.md``). Nothing is changed where the user set the ``MALLOC_*_``
    variables, on another C library, or when ``MEDMAMBA_ALLOCATOR=default``.

    Returns:
        What was done, for the run setup line (``"glibc, large blocks kept"``, or why not).
    """
    if _allocator_state:
        return _allocator_state[0]
    if os.environ.get("MEDMAMBA_ALLOCATOR", "").lower() == "default":
        state = "default (MEDMAMBA_ALLOCATOR=default)"
    elif any(k in os.environ for k in _ALLOCATOR_ENV):
        state = "default (MALLOC_*_ variables set by the user)"
    elif platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        state = "default (not glibc)"
    else:
        import ctypes

        try:
            libc = ctypes.CDLL(None)
            ok = all(
                libc.mallopt(param, value) == 1
                for param, value in (
                    (_M_MMAP_THRESHOLD, ALLOCATOR_SETTINGS["mmap_threshold"]),
                    (_M_TRIM_THRESHOLD, ALLOCATOR_SETTINGS["trim_threshold"]),
                    (_M_TOP_PAD, ALLOCATOR_SETTINGS["top_pad"]),
                )
            )
        except (OSError, AttributeError, ctypes.ArgumentError):
            ok = False
        state = "glibc, large blocks kept" if ok else "default (mallopt refused)"
    _allocator_state.append(state)
    return state


def dataloader_workers(device: torch.device | str, num_threads: int | str = "auto", cores: int | None = None) -> int:
    """Worker processes for a training ``DataLoader`` on ``device``.

    On the CPU: 0. The random transforms then run in the training process between steps, while its
    compute threads wait, and no extra busy process competes with them for the cores. On a GPU: the
    cores this process was given (``num_threads``; ``"auto"``: its share of the usable cores) less
    the one feeding the GPU, at most 4 (cached data sets need few workers).

    Args:
        device: the training device.
        num_threads: the process's compute threads, as given to :func:`configure_threads`.
        cores: the usable cores; ``None`` calls :func:`usable_cores`.
    """
    if torch.device(device).type == "cpu":
        return 0
    given = resolve_threads(num_threads, cores=cores)
    return max(0, min(4, given - 1))


# -------------------------------------------------------------------------------------------------- CPU
def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``), or what ``platform`` knows."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def cpu_capability() -> str:
    """The vector instruction set ATen's CPU kernels use (``torch.backends.cpu.get_cpu_capability()``)."""
    try:
        return str(torch.backends.cpu.get_cpu_capability())
    except (AttributeError, RuntimeError):  # pragma: no cover - very old torch
        return "unknown"


def onednn_isa_cap() -> tuple[str, str] | None:
    """The oneDNN ISA cap set in the environment, as ``(variable, VALUE)``, if any
    (``ONEDNN_MAX_CPU_ISA``, else its older name ``DNNL_MAX_CPU_ISA``)."""
    for name in ISA_CAP_VARIABLES:
        value = os.environ.get(name, "").strip()
        if value:
            return name, value.upper()
    return None


def _cap_allows_bf16(cap: str) -> bool:
    """Whether a oneDNN ISA cap keeps the bfloat16 instructions (AVX512_CORE_BF16 and up, AMX, AVX10)."""
    return cap in ("ALL", "DEFAULT") or "BF16" in cap or "AMX" in cap or cap.startswith("AVX10")


def _cpu_flag(name: str) -> bool:
    check = getattr(torch.cpu, name, None)
    try:
        return bool(check()) if check is not None else False
    except RuntimeError:  # pragma: no cover
        return False


def _mkldnn_bf16() -> bool:
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # pragma: no cover - torch without oneDNN
        return False


def cpu_native_bf16() -> tuple[bool, str]:
    """Whether this CPU computes bfloat16 natively (AMX or AVX512-BF16 on x86, the BF16 extension on
    Arm), and why (for the log).

    All of these must hold: oneDNN reports bfloat16 support (``torch.ops.mkldnn._is_mkldnn_bf16_supported()``);
    no ``ONEDNN_MAX_CPU_ISA`` / ``DNNL_MAX_CPU_ISA`` caps oneDNN below the bfloat16 instructions; on x86,
    the CPU has AMX tiles or AVX512-BF16 and ATen's kernels run at AVX-512
    (``torch.backends.cpu.get_cpu_capability()``, lowered by ``ATEN_CPU_CAPABILITY``). Where one fails,
    bfloat16 is emulated, which the issue measured 12x slower than float32 for a UNet training step.

    Returns:
        ``(native, reason)``.
    """
    cap = onednn_isa_cap()
    if cap is not None and not _cap_allows_bf16(cap[1]):
        return False, f"oneDNN capped at {cap[1]} by {cap[0]}"
    if not _mkldnn_bf16():
        return False, "oneDNN reports no bfloat16 support"
    machine = platform.machine().lower()
    if machine in ("x86_64", "amd64", "i686", "x86"):
        capability = cpu_capability()
        if capability.upper() in _X86_BELOW_AVX512:
            return False, f"ATen CPU capability {capability}"
        amx, avx512_bf16 = _cpu_flag("_is_amx_tile_supported"), _cpu_flag("_is_avx512_bf16_supported")
        if not (amx or avx512_bf16):
            return False, "no AMX or AVX512-BF16 instructions"
        return True, "AMX" if amx else "AVX512-BF16"
    return True, f"oneDNN bfloat16 on {machine}"


# ------------------------------------------------------------------------------------------ the run line
def _precision_text(precision: Any) -> str:
    if precision is None:
        return "-"
    name = getattr(precision, "name", None)
    reason = getattr(precision, "reason", None)
    if name is None:
        return str(precision)
    return f"{name} ({reason})" if reason else str(name)


def run_setup_line(
    device: torch.device | str, precision: Any = None, teacher_precision: Any = None, num_threads: int | None = None
) -> str:
    """One line stating a run's device, precision (student and teacher), threads and CPU.

    Args:
        device: the run's device.
        precision: the network's precision (a :class:`medmamba.training.Precision` or any object
            printed as is); ``None`` for a run without autocast.
        teacher_precision: the distillation teacher's precision, if there is a teacher.
        num_threads: intra-op threads; ``None`` reads ``torch.get_num_threads()``.
    """
    dev = torch.device(device)
    threads = torch.get_num_threads() if num_threads is None else num_threads
    parts = [f"device {dev}"]
    if dev.type == "cuda" and torch.cuda.is_available():
        parts[0] += f" ({torch.cuda.get_device_name(dev)})"
    parts.append(f"precision {_precision_text(precision) if precision is not None else 'fp32'}")
    if teacher_precision is not None:
        parts.append(f"teacher {_precision_text(teacher_precision)}")
    native, why = cpu_native_bf16()
    parts.append(
        f"threads intra-op {threads}, inter-op {torch.get_num_interop_threads()} of {usable_cores()} usable core(s), "
        f"OMP_WAIT_POLICY {os.environ.get('OMP_WAIT_POLICY', 'unset')}; "
        f"allocator {_allocator_state[0] if _allocator_state else 'default'}"
    )
    parts.append(
        f"CPU {cpu_model()}, capability {cpu_capability()}, native bf16 {'yes' if native else 'no'} ({why})"
    )
    return "run setup: " + "; ".join(parts)


def log_run_setup(
    device: torch.device | str, precision: Any = None, teacher_precision: Any = None, num_threads: int | None = None
) -> str:
    """Log :func:`run_setup_line` at INFO (logger ``medmamba.resources``) and return it."""
    line = run_setup_line(device, precision, teacher_precision, num_threads)
    logger.info(line)
    return line
