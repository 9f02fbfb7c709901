"""Loading network weights from the checkpoints the training recipe writes.

MONAI's :class:`~monai.handlers.CheckpointSaver` writes a dict keyed by the names of its
``save_dict`` (``{"model": ..., "ema": ..., "optimizer": ...}``); a plain ``torch.save`` of
``model.state_dict()`` is a flat dict of tensors; a :class:`~medmamba.training.ema.ModelEMA`
state dict prefixes every tensor with ``module.`` and carries a ``num_updates`` counter; DDP
prefixes with ``module.`` too. :func:`extract_state_dict` accepts all of these so that the teacher,
the export step and the benchmarks can load "the best (or EMA) checkpoint" the same way.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence

import torch
from torch import nn

from medmamba.networks.checkpoint_file import STATE_DICT_ENTRIES, find_state_dict, read_checkpoint

__all__ = ["ensemble_state_dict", "extract_state_dict", "load_weights", "save_ensemble_checkpoint"]

logger = logging.getLogger(__name__)


def extract_state_dict(checkpoint: Mapping | str | os.PathLike, key: str | None = None) -> dict[str, torch.Tensor]:
    """Return the network state dict held by ``checkpoint``.

    Args:
        checkpoint: a path (loaded with ``torch.load(weights_only=True)`` on the CPU) or an
            already loaded object: a flat state dict, or a dict of named objects as written by
            MONAI's ``CheckpointSaver`` (e.g. ``{"model": ..., "ema": ...}``).
        key: which entry to take from a dict of named objects (``"model"``, ``"ema"``...). When
            ``None``, a flat state dict is used as is, otherwise the first of ``model``,
            ``network``, ``state_dict``, ``net``, ``ema`` present is taken.

    Returns:
        The state dict with a leading ``module.`` prefix (DDP, :class:`ModelEMA`) removed and the
        EMA counter ``num_updates`` dropped
        (:func:`~medmamba.networks.checkpoint_file.find_state_dict`).

    Raises:
        ValueError: when ``key`` is not in the checkpoint or no state dict can be found.
        TypeError: when ``checkpoint`` is neither a path nor a mapping.
    """
    source = "the checkpoint"
    if isinstance(checkpoint, (str, os.PathLike)):
        source = f"checkpoint {os.fspath(checkpoint)!r}"
        checkpoint = read_checkpoint(checkpoint)
    if not isinstance(checkpoint, Mapping):
        raise TypeError(f"checkpoint must be a path or a mapping, got {type(checkpoint).__name__}.")
    return find_state_dict(checkpoint, STATE_DICT_ENTRIES, key=key, source=source)


def load_weights(
    network: nn.Module, checkpoint: Mapping | str | os.PathLike, key: str | None = None, strict: bool = True
) -> nn.Module:
    """Load ``checkpoint`` (see :func:`extract_state_dict`) into ``network`` in place and return it.

    Not MONAI's ``CheckpointLoader``: that loads at an engine's start, while the teacher, the export
    and ``load_network`` need the weights when the network is built, before any engine exists.

    Args:
        network: the module to fill.
        checkpoint: path or loaded checkpoint.
        key: entry of a multi-object checkpoint (``"model"``, ``"ema"``...).
        strict: passed to :meth:`torch.nn.Module.load_state_dict`.
    """
    state = extract_state_dict(checkpoint, key=key)
    result = network.load_state_dict(state, strict=strict)
    if not strict and (result.missing_keys or result.unexpected_keys):
        logger.warning(
            "load_weights: %d missing and %d unexpected keys", len(result.missing_keys), len(result.unexpected_keys)
        )
    return network


def ensemble_state_dict(
    members: Sequence[Mapping[str, torch.Tensor] | str | os.PathLike[str]], key: str | None = None
) -> dict[str, torch.Tensor]:
    """The state dict of a :class:`~medmamba.networks.MeanEnsemble` from its members' checkpoints.

    Args:
        members: each member's checkpoint: a path or a loaded state dict, in any form
            :func:`extract_state_dict` reads (flat, ``CheckpointSaver``'s
            ``{"model": ...}``, EMA, DDP).
        key: entry of multi-object checkpoints (``"model"``...), as in ``extract_state_dict``.

    Returns:
        ``{"networks.<i>.<name>": tensor}`` for member ``i``.

    Raises:
        ValueError: ``members`` is empty, or the members' state dicts have different keys or shapes
            (they must share one architecture).
    """
    if len(members) == 0:
        raise ValueError("members must hold at least one checkpoint, got an empty sequence.")
    states = [extract_state_dict(m, key=key) for m in members]
    first = {k: tuple(v.shape) for k, v in states[0].items()}
    for i, state in enumerate(states[1:], start=1):
        shapes = {k: tuple(v.shape) for k, v in state.items()}
        if shapes != first:
            differ = sorted(set(first).symmetric_difference(shapes)) or sorted(k for k in first if first[k] != shapes[k])
            raise ValueError(
                f"members[{i}] does not match members[0] (one architecture expected); differing entries: {differ[:5]}."
            )
    return {f"networks.{i}.{k}": v for i, state in enumerate(states) for k, v in state.items()}


def save_ensemble_checkpoint(
    members: Sequence[str | os.PathLike[str]], filepath: str | os.PathLike[str], key: str | None = None
) -> str:
    """Write the members' checkpoints as one :class:`~medmamba.networks.MeanEnsemble` checkpoint.

    The file holds ``{"model": ensemble_state_dict(members)}`` (the layout of MONAI's
    ``CheckpointSaver``), so evaluation, inference and ``ckpt_export`` load it like any checkpoint.

    Args:
        members: the members' checkpoint files.
        filepath: where to write (folders are created; an existing file is replaced).
        key: see :func:`ensemble_state_dict`.

    Returns:
        ``filepath`` as a string.

    Raises:
        FileNotFoundError: a member's file does not exist.
    """
    for i, path in enumerate(members):
        if not os.path.isfile(os.fspath(path)):
            raise FileNotFoundError(f"members[{i}]={os.fspath(path)!r} does not exist; train that member first.")
    state = ensemble_state_dict(list(members), key=key)
    out = os.fspath(filepath)
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    torch.save({"model": state}, out)
    logger.info("wrote the %d-member ensemble checkpoint %s", len(members), out)
    return out
