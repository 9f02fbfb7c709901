"""Integrity of gzip-compressed scans: the whole stream decoded, its CRC-32 and length checked.

nibabel reads a ``.nii.gz`` only as far as the header and the voxel data reach, so a file whose
gzip trailer (CRC-32 and length) is missing or wrong, e.g. a copy cut off in its last bytes or a
damaged trailer, loads without any error. :func:`check_gzip_integrity` decodes the stream to its end
in bounded memory (1 MiB chunks, the decoded bytes are discarded) and lets zlib verify every member's
trailer, so a damaged file is refused before it is used.
"""

from __future__ import annotations

import os
import zlib

from medmamba.io.errors import ScanLoadError

__all__ = ["check_gzip_integrity"]

_CHUNK = 1 << 20


def check_gzip_integrity(path: str | os.PathLike[str], where: str | None = None) -> int:
    """Decode a gzip file to its end and check every member's CRC-32 and length.

    Args:
        path: The ``.gz`` file.
        where: How to name the file in errors (default: ``path``).

    Returns:
        The number of decompressed bytes.

    Raises:
        ScanLoadError: If the file is not gzip, is truncated (no end-of-stream marker or trailer), has
            a CRC or length mismatch, or holds trailing bytes that are not a gzip member.
    """
    name = os.fspath(path) if where is None else where
    total = 0
    read_any = False
    decoder: zlib._Decompress | None = None  # the member being decoded; None between members
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            read_any = True
            while chunk:
                if decoder is None:
                    if not chunk.startswith(b"\x1f\x8b"[: len(chunk)]):
                        if total and not chunk.strip(b"\x00"):
                            break  # zero padding after the last member (written by some tools)
                        what = "is not gzip data" if not total else f"has {len(chunk)}+ bytes after the gzip stream that are not a gzip member"
                        raise ScanLoadError(f"path={name!r}: the file {what}; expected an intact .gz file")
                    decoder = zlib.decompressobj(wbits=31)  # gzip framing: CRC-32 and length checked by zlib
                try:
                    total += len(decoder.decompress(chunk, _CHUNK))
                    while decoder.unconsumed_tail and not decoder.eof:  # bounded output per call: no bomb in memory
                        total += len(decoder.decompress(decoder.unconsumed_tail, _CHUNK))
                except zlib.error as exc:
                    raise ScanLoadError(
                        f"path={name!r}: the gzip stream is corrupt ({exc}); expected an intact .gz file "
                        "(re-copy or re-export it)"
                    ) from None
                if decoder.eof:
                    chunk, decoder = decoder.unused_data, None  # (at eof unconsumed_tail repeats it)
                else:
                    chunk = b""
    if not read_any:
        raise ScanLoadError(f"path={name!r}: the file is empty; expected a gzip-compressed image")
    if decoder is not None:
        raise ScanLoadError(
            f"path={name!r}: the gzip stream ends before its end-of-stream marker and trailer (truncated "
            f"after {total} decompressed bytes); expected an intact .gz file (re-copy or re-export it)"
        )
    return total
