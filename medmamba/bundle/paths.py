"""Optional files a bundle config passes on only when they exist."""

from __future__ import annotations

import os

from .flags import flag

__all__ = ["existing_file", "model_file"]


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


def model_file(
    checkpoint: str | os.PathLike, torchscript_file: str | os.PathLike, use_torchscript: bool | str
) -> str | os.PathLike:
    """The weights a bundle's network loads: the TorchScript export or the checkpoint.

    Args:
        checkpoint: the checkpoint file (``CheckpointSaver`` output).
        torchscript_file: the TorchScript file (``ckpt_export`` output).
        use_torchscript: the config's switch (a bool, or ``"true"``/``"false"`` from the command
            line: :func:`medmamba.bundle.flag`).

    Returns:
        ``torchscript_file`` when the switch is on, else ``checkpoint``.

    Raises:
        ValueError: ``use_torchscript`` is neither a bool nor a spelling of one.
    """
    return torchscript_file if flag(use_torchscript, "use_torchscript") else checkpoint
