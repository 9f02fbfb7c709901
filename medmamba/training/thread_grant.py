"""Cores granted to a running training process by its launcher.

A launcher that runs several training processes side by side (the main job runs the two bundles'
chains on their shares of the cores) frees cores when one of them ends. A process already training
cannot learn that from its environment: OpenMP read ``OMP_NUM_THREADS`` when torch was imported. The
launcher therefore writes the new thread count into a small *grant file*, and the training engine's
:class:`ThreadGrantHandler` reads it between iterations and resizes torch's intra-op pool
(``torch.set_num_threads``), within the cores this process may use
(:func:`medmamba.resources.resolve_threads`). The data-loading work of the process is unchanged.

A bundle config attaches it with::

    "thread_grant_file": null,
    "handlers": [..., {"_target_": "medmamba.training.ThreadGrantHandler", "grant_file": "@thread_grant_file"}]

and the launcher passes ``--thread_grant_file <path>`` and later calls :func:`grant_threads`.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from medmamba.resources import resolve_threads

if TYPE_CHECKING:
    from ignite.engine import Engine

__all__ = ["ThreadGrantHandler", "grant_threads", "read_thread_grant"]

logger = logging.getLogger(__name__)


def grant_threads(path: str | os.PathLike, threads: int) -> Path:
    """Write ``threads`` into the grant file ``path`` atomically (a reader never sees half a file).

    Args:
        path: the grant file the training process was started with (``--thread_grant_file``).
        threads: the compute threads the process may now use, ``>= 1``.

    Returns:
        The grant file's path.

    Raises:
        ValueError: ``threads`` is not an int ``>= 1``.
    """
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ValueError(f"threads must be an int >= 1, got {threads!r}.")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(f"{threads}\n", encoding="utf-8")
    os.replace(tmp, path)
    return path


def read_thread_grant(path: str | os.PathLike) -> int | None:
    """The thread count in the grant file ``path``; ``None`` while there is no such file.

    Raises:
        ValueError: the file does not hold one integer ``>= 1``.
    """
    try:
        text = Path(path).read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        return None
    try:
        threads = int(text)
    except ValueError:
        raise ValueError(f"thread grant file {str(path)!r} must hold one integer >= 1, got {text[:40]!r}.") from None
    if threads < 1:
        raise ValueError(f"thread grant file {str(path)!r} must hold one integer >= 1, got {threads}.")
    return threads


class ThreadGrantHandler:
    """Ignite handler resizing the process's compute threads to the launcher's latest grant.

    Every ``every_n_iters`` iterations (at ``ITERATION_STARTED``) it looks at ``grant_file``; when the
    file has changed since the last look and names a thread count other than the current one, it
    calls ``torch.set_num_threads`` with that count, capped at the usable cores, and logs the change.

    Args:
        grant_file: the grant file (:func:`grant_threads`); ``None`` (the bundles' default when not
            run by a launcher) makes the handler do nothing.
        every_n_iters: how often to look at the file (one ``stat`` call), ``>= 1``.

    Raises:
        ValueError: ``every_n_iters < 1``.
    """

    def __init__(self, grant_file: str | os.PathLike | None = None, every_n_iters: int = 1) -> None:
        if isinstance(every_n_iters, bool) or not isinstance(every_n_iters, int) or every_n_iters < 1:
            raise ValueError(f"every_n_iters must be an int >= 1, got {every_n_iters!r}.")
        self.grant_file = None if grant_file in (None, "") else Path(grant_file)
        self.every_n_iters = every_n_iters
        self._seen: int | None = None

    def attach(self, engine: Engine) -> None:
        """Look at the grant file on ``ITERATION_STARTED(every=every_n_iters)`` of ``engine``."""
        from ignite.engine import Events

        engine.add_event_handler(Events.ITERATION_STARTED(every=self.every_n_iters), self)

    def poll(self) -> int | None:
        """Apply a new grant if there is one; returns the threads set, or ``None`` when nothing changed."""
        if self.grant_file is None:
            return None
        try:
            stamp = self.grant_file.stat().st_mtime_ns
        except FileNotFoundError:
            return None
        if stamp == self._seen:
            return None
        self._seen = stamp
        granted = read_thread_grant(self.grant_file)
        if granted is None:
            return None
        threads = resolve_threads(granted)
        before = torch.get_num_threads()
        if threads == before:
            return None
        torch.set_num_threads(threads)
        logger.info("compute threads %d -> %d (granted %d in %s)", before, threads, granted, self.grant_file)
        return threads

    def __call__(self, engine: Engine) -> None:
        """Handler body: :meth:`poll`."""
        self.poll()
