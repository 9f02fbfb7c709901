"""Atomic file writes: a temporary file in the target folder, then an ``os.replace``.

A crash or an exception while writing leaves either the previous file or no file at the target
path, never a half-written one. The temporary file lives in the same folder as the target, so the
final rename never crosses a file system.
"""

from __future__ import annotations

import contextlib
import gzip
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from medmamba.io.temporaries import TEMPORARY_SUFFIX, temporary_prefix

__all__ = ["atomic_path", "atomic_write_bytes", "atomic_write_text", "gzip_bytes"]


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str], suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; move it onto ``path`` when the block succeeds.

    The caller writes the whole file to the yielded path (with any library). If the block raises,
    the temporary file is removed and ``path`` is left untouched.

    Args:
        path: Final destination of the file. Its parent folder is created if missing.
        suffix: Suffix of the temporary file (some writers choose the format from it); defaults to
            the full suffix of ``path`` (e.g. ``.nii.gz``).

    Yields:
        The temporary path to write to.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    if suffix is None:
        suffix = "".join(target.suffixes)
    # owner in the name: a killed writer's leftover is removed by the next batch in this folder
    fd, tmp_name = tempfile.mkstemp(prefix=temporary_prefix(target.name), suffix=f"{TEMPORARY_SUFFIX}{suffix}", dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (temporary file, fsync, rename).

    Args:
        path: Destination file.
        data: The complete file content.

    Returns:
        The destination path.

    Raises:
        TypeError: If ``data`` is not bytes-like.
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"data must be bytes-like, got {type(data).__name__}")
    target = Path(path)
    with atomic_path(target) as tmp:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
    return target


def atomic_write_text(path: str | os.PathLike[str], text: str, encoding: str = "utf-8") -> Path:
    """Write ``text`` to ``path`` atomically.

    Args:
        path: Destination file.
        text: The complete file content.
        encoding: Text encoding.

    Returns:
        The destination path.

    Raises:
        TypeError: If ``text`` is not a string.
    """
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, got {type(text).__name__}")
    return atomic_write_bytes(path, text.encode(encoding))


def gzip_bytes(data: bytes, compresslevel: int = 6) -> bytes:
    """Gzip ``data`` reproducibly: no file name and a zero modification time in the header.

    Args:
        data: Bytes to compress.
        compresslevel: zlib compression level, 0-9.

    Returns:
        The gzip stream; identical input gives identical output.

    Raises:
        ValueError: If ``compresslevel`` is outside 0-9.
    """
    if not 0 <= int(compresslevel) <= 9:
        raise ValueError(f"compresslevel must be in 0..9, got {compresslevel!r}")
    return gzip.compress(bytes(data), compresslevel=int(compresslevel), mtime=0)
