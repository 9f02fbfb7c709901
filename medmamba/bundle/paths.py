"""Optional files a bundle config passes on only when they exist."""

from __future__ import annotations

import os

__all__ = ["existing_file"]


def existing_file(path: str | os.PathLike | None) -> str | os.PathLike | None:
    """``path`` if it names an existing file, else ``None``.

    For an optional input of a config's function call, e.g. the TorchScript model an ONNX export is
    checked against when ``ckpt_export`` has written it.

    Args:
        path: the file, or ``None``.

    Returns:
        ``path`` unchanged when it is a file, otherwise ``None``.
    """
    return path if path is not None and os.path.isfile(path) else None
