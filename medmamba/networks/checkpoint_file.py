"""Reading a checkpoint file safely, finding the state dict inside it, and checking its keys.

Every checkpoint the package reads (bundle weights, released ImageNet weights, teachers, logit
caches) goes through :func:`read_checkpoint`: ``torch.load(weights_only=True)`` on the CPU, so an
untrusted file cannot run code, and an empty, truncated or foreign file gets a ``ValueError`` naming
the path and the cause instead of a bare ``EOFError`` or an unpickling error from deep inside torch.

:func:`find_state_dict` takes the network weights out of what such a file holds (a flat state dict,
MONAI ``CheckpointSaver``'s ``{"model": ..., "ema": ...}``, the reference implementation's
``{"net": ..., "net_E": ...}``, a DDP or EMA state dict), and :func:`check_state_dict_keys` lists
every missing, unexpected and mis-shaped key at once before a state dict is loaded.
"""

from __future__ import annotations

import os
import pickle
import zipfile
from collections.abc import Mapping, Sequence
from typing import Any

import torch

__all__ = ["STATE_DICT_ENTRIES", "check_state_dict_keys", "find_state_dict", "is_state_dict", "read_checkpoint"]

#: Entries tried, in order, when a checkpoint holds several named objects and no ``key`` is given
#: (MONAI ``CheckpointSaver``'s ``save_dict`` names first, then the reference implementation's).
STATE_DICT_ENTRIES: tuple[str, ...] = ("model", "network", "state_dict", "net", "ema")
#: Bookkeeping entries of :class:`~medmamba.training.ema.ModelEMA` that are not network weights.
_BOOKKEEPING_KEYS = ("num_updates",)


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


def is_state_dict(obj: object) -> bool:
    """Whether ``obj`` is a non-empty mapping whose values are all tensors."""
    return isinstance(obj, Mapping) and len(obj) > 0 and all(isinstance(v, torch.Tensor) for v in obj.values())


def _key_list(checkpoint: Mapping) -> list[str]:
    return sorted(str(k) for k in checkpoint)[:20]


def find_state_dict(
    checkpoint: Any,
    entries: Sequence[str] = STATE_DICT_ENTRIES,
    *,
    key: str | None = None,
    source: str = "the checkpoint",
) -> dict[str, torch.Tensor]:
    """The network state dict held by a loaded checkpoint.

    Args:
        checkpoint: what :func:`read_checkpoint` returned: a flat state dict, or a mapping of named
            objects (``{"model": ..., "ema": ...}``, ``{"net": ..., "net_E": ...}``).
        entries: the entries tried in order when ``key`` is ``None`` and ``checkpoint`` is not a
            flat state dict; the first one present is taken.
        key: the entry to take; ``None`` takes a flat state dict as is, else the first of
            ``entries`` present.
        source: how error messages name the checkpoint (e.g. ``"checkpoint 'model.pt'"``).

    Returns:
        A new dict of tensors, without the EMA counter ``num_updates`` and without a ``module.``
        prefix (DDP, :class:`~medmamba.training.ema.ModelEMA`) that every key carries.

    Raises:
        ValueError: ``key`` is not in the checkpoint, no entry is present, or the entry taken is not
            a mapping of names to tensors.
    """
    if not isinstance(checkpoint, Mapping):
        raise ValueError(
            f"{source} holds no state dict: expected a mapping of parameter names to tensors or of named "
            f"objects, got {type(checkpoint).__name__}."
        )
    if key is not None:
        if key not in checkpoint:
            raise ValueError(f"key={key!r} is not in {source}; available keys: {_key_list(checkpoint)}.")
        entry: str | None = key
    elif is_state_dict(checkpoint):
        entry = None
    else:
        entry = next((name for name in entries if name in checkpoint), None)
        if entry is None:
            raise ValueError(
                f"{source} holds no state dict: expected a mapping of parameter names to tensors or one "
                f"with an entry {' / '.join(repr(e) for e in entries)}; its keys are {_key_list(checkpoint)}."
            )
    state = checkpoint if entry is None else checkpoint[entry]
    if not is_state_dict(state):
        raise ValueError(
            f"entry {entry!r} of {source} is not a state dict: expected a non-empty mapping of parameter "
            f"names to tensors, got {type(state).__name__}."
        )
    state = {k: v for k, v in state.items() if k not in _BOOKKEEPING_KEYS}
    if state and all(isinstance(k, str) and k.startswith("module.") for k in state):
        state = {k[len("module.") :]: v for k, v in state.items()}
    return state


def check_state_dict_keys(
    state_dict: Mapping[str, torch.Tensor],
    expected: Mapping[str, torch.Tensor],
    *,
    source: str,
    target: str,
    strict: bool = True,
    labels: tuple[str, str] = ("checkpoint", "network"),
) -> None:
    """Check that ``state_dict`` fits ``expected`` (a ``state_dict()``), listing every difference.

    Args:
        state_dict: the weights to load.
        expected: the receiving module's ``state_dict()``.
        source: how the message names the weights (e.g. ``"checkpoint 'model.pt'"``).
        target: how the message names the receiver (e.g. ``"MobileMamba variant='t2'"``).
        strict: also refuse missing and unexpected keys (shape mismatches are always refused).
        labels: how a shape mismatch names the two sides, ``"<key>: <given> (..) vs <expected> (..)"``.

    Raises:
        ValueError: keys missing or unexpected (with ``strict``) or of another shape; the message
            names ``source``, ``target`` and all the keys concerned.
    """
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    mismatched = sorted(
        f"{k}: {labels[0]} {tuple(state_dict[k].shape)} vs {labels[1]} {tuple(expected[k].shape)}"
        for k in set(state_dict) & set(expected)
        if state_dict[k].shape != expected[k].shape
    )
    if mismatched or (strict and (missing or unexpected)):
        raise ValueError(
            f"{source} does not fit {target}: missing keys {missing}; unexpected keys {unexpected}; "
            f"shape mismatches {mismatched}."
        )
