"""Names of the project's temporary files and folders, and removal of those a killed process left.

Every multi-step write of the project (an atomic file, a DICOM series staged in a hidden folder, a
default data set built beside its destination) works on a hidden temporary that carries its owner:
``.<name>.<host>-<pid>-<random>.tmp[<suffix>]``. A process killed in the middle (out of memory, a
cluster's time limit, a power cut) cannot remove it; the next run of a batch or a build in the same
folder does, with :func:`remove_stale_temporaries`: a temporary whose owner process is gone from this
host. Another host's temporaries (a shared drive) and those of running processes are left alone.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
from pathlib import Path

__all__ = ["owner_tag", "remove_stale_temporaries", "temporary_prefix", "TEMPORARY_SUFFIX"]

#: Ending of every temporary's name (before an optional format suffix such as ``.nii.gz``).
TEMPORARY_SUFFIX = ".tmp"
_NAME = re.compile(r"^\.(?P<name>.+)\.(?P<host>[A-Za-z0-9]{1,32})-(?P<pid>\d+)-[A-Za-z0-9_]+\.tmp(?:\..*)?$")


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9]", "", socket.gethostname())[:32] or "host"


def owner_tag() -> str:
    """``<host>-<pid>``: who owns the temporaries this process makes."""
    return f"{_host()}-{os.getpid()}"


def temporary_prefix(name: str) -> str:
    """The prefix of a temporary for the final ``name`` (give ``tempfile.mkstemp``/``mkdtemp`` this
    and ``suffix=TEMPORARY_SUFFIX + format suffix``; they add the random part)."""
    return f".{name}.{owner_tag()}-"


def _alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def remove_stale_temporaries(folder: str | os.PathLike[str], recursive: bool = False) -> list[Path]:
    """Remove the temporaries in ``folder`` whose owning process no longer runs on this host.

    Args:
        folder: Where to look (missing folders are fine).
        recursive: Also look in sub-folders (symbolic links to folders are not followed).

    Returns:
        The paths removed.
    """
    root = Path(folder)
    if not root.is_dir():
        return []
    host = _host()
    removed: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        for entry in [*dirnames, *filenames]:
            m = _NAME.match(entry)
            if m is None or m.group("host") != host or _alive(int(m.group("pid"))):
                continue
            path = here / entry
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            else:
                try:
                    path.unlink()
                except FileNotFoundError:
                    pass
            removed.append(path)
        # os.walk does not enter folder links (followlinks=False); removed temporaries are not entered
        dirnames[:] = [d for d in dirnames if recursive and not _NAME.match(d)]
    return removed
