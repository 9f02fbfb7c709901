"""Reading a checkpoint file safely, with an error that says what is wrong with it.

Every checkpoint the package reads (bundle weights, released ImageNet weights, teachers, logit
caches) goes through :func:`read_checkpoint`: ``torch.load(weights_only=True)`` on the CPU, so an
untrusted file cannot run code, and an empty, truncated or foreign file gets a ``ValueError`` naming
the path and the cause instead of a bare ``EOFError`` or an unpickling error from deep inside torch.
"""

from __future__ import annotations

import os
import pickle
import zipfile
from typing import Any

import torch

__all__ = ["read_checkpoint"]


def read_checkpoint(path: str | os.PathLike[str]) -> Any:
    """Load a checkpoint file with ``torch.load(path, map_location="cpu", weights_only=True)``.

    Args:
        path: the checkpoint file.

    Returns:
        What the file holds (usually a mapping of tensors or of state dicts).

    Raises:
        FileNotFoundError: there is no such file.
        ValueError: the file is a folder, empty, truncated, not a PyTorch checkpoint, or holds objects
            other than tensors and plain containers (refused by ``weights_only``).
    """
    name = os.fspath(path)
    if not os.path.exists(name):
        raise FileNotFoundError(f"checkpoint {name!r} does not exist.")
    if os.path.isdir(name):
        raise ValueError(f"checkpoint {name!r} is a folder; expected a file written by torch.save.")
    if os.path.getsize(name) == 0:
        raise ValueError(f"checkpoint {name!r} is empty (0 bytes); expected a file written by torch.save.")
    try:
        return torch.load(name, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        lines = [line.strip() for line in str(exc).splitlines() if "Unsupported" in line or "global" in line.lower()]
        what = f" ({lines[0][:200]})" if lines else ""
        raise ValueError(
            f"checkpoint {name!r} was refused: it is not a plain PyTorch checkpoint of tensors and containers, "
            f"or it holds objects that loading with weights_only=True does not construct{what}; only load such "
            "a file if you trust its source, and convert it to a state dict."
        ) from None
    except (EOFError, RuntimeError, zipfile.BadZipFile, OSError, ValueError) as exc:
        message = " ".join(str(exc).split())[:200] or type(exc).__name__
        raise ValueError(
            f"checkpoint {name!r} cannot be read: truncated, corrupt or not written by torch.save "
            f"({type(exc).__name__}: {message})."
        ) from None
