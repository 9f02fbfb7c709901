"""The distillation teacher: a frozen network, and a disk cache of its logits.

:class:`Teacher` wraps any ``nn.Module`` (a larger MobileMamba, any MONAI network) built from a
bundle config, loads its checkpoint, freezes it and keeps it in eval mode whatever ``.train()``
the surrounding code calls; its forward runs under ``torch.no_grad()`` and can resize and
re-normalise the student's (augmented) batch to the teacher's own input size and statistics, as
the reference ``CLSKDLoss`` does.

On a CPU the teacher's forward pass dominates a distillation epoch. When the training set is
fixed (no random augmentation), :class:`TeacherLogitCache` computes the teacher's logits once,
keyed by a sample id, saves them with ``torch.save`` and serves them back batch by batch.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from medmamba.networks.checkpoint_file import read_checkpoint

from .checkpoint import load_weights

__all__ = ["Teacher", "TeacherLogitCache", "batch_ids"]

logger = logging.getLogger(__name__)

_MODES = {1: "linear", 2: "bilinear", 3: "trilinear"}


def _as_channel_tensor(name: str, value: Sequence[float] | float | None) -> torch.Tensor | None:
    if value is None:
        return None
    t = torch.as_tensor(value, dtype=torch.float32).flatten()
    if t.numel() == 0:
        raise ValueError(f"{name} must be a number or a non-empty sequence, got {value!r}.")
    return t


class Teacher(nn.Module):
    """A frozen, eval-mode teacher network for knowledge distillation.

    Args:
        network: the teacher ``nn.Module`` (e.g. ``MobileMamba("b1", num_classes=2)`` or
            ``monai.networks.nets.DenseNet121``), built by the bundle config.
        checkpoint: optional path to its weights, loaded with ``torch.load(weights_only=True)``
            (a flat state dict or a MONAI ``CheckpointSaver`` file, see
            :func:`~medmamba.training.checkpoint.extract_state_dict`).
        checkpoint_key: entry of a multi-object checkpoint (``"model"``, ``"ema"``...).
        strict: strict state-dict loading.
        input_size: the teacher's own spatial input size (an int for every spatial dim or one
            per dim); the batch is resized with (bi/tri)linear interpolation when it differs.
        mean, std: the teacher's own per-channel input normalisation.
        student_mean, student_std: the normalisation already applied to the student's batch; the
            batch is mapped back with them before ``mean``/``std`` are applied. Default 0 and 1.
        output_index: which element to use when the teacher returns a tuple/list (deep
            supervision, ``(cls, dist)`` pairs); default 0. A ``MobileMamba(distillation=True)``
            teacher in eval mode already returns the mean of its heads.

    The module stays in eval mode after ``.train()``, all its parameters have
    ``requires_grad=False``, and :meth:`forward` runs under ``torch.no_grad()``, returning float32.

    The checkpoint is loaded here, not by MONAI's ``CheckpointLoader`` (which loads at an engine's
    start): a teacher is used outside any trainer too (``TeacherLogitCache.build``, benchmarks).
    """

    def __init__(
        self,
        network: nn.Module,
        checkpoint: str | os.PathLike | None = None,
        checkpoint_key: str | None = None,
        strict: bool = True,
        input_size: int | Sequence[int] | None = None,
        mean: Sequence[float] | float | None = None,
        std: Sequence[float] | float | None = None,
        student_mean: Sequence[float] | float | None = None,
        student_std: Sequence[float] | float | None = None,
        output_index: int = 0,
    ) -> None:
        super().__init__()
        if not isinstance(network, nn.Module):
            raise TypeError(f"network must be an nn.Module, got {type(network).__name__}.")
        if checkpoint is not None:
            load_weights(network, checkpoint, key=checkpoint_key, strict=strict)
            logger.info("Teacher: loaded weights from %s", os.fspath(checkpoint))
        self.network = network
        self.network.requires_grad_(False)
        if input_size is not None:
            sizes = (input_size,) if isinstance(input_size, int) else tuple(input_size)
            if not sizes or any(int(s) <= 0 for s in sizes):
                raise ValueError(f"input_size must be positive int(s), got {input_size!r}.")
            input_size = tuple(int(s) for s in sizes)
        self.input_size: tuple[int, ...] | None = input_size
        self.register_buffer("mean", _as_channel_tensor("mean", mean), persistent=False)
        self.register_buffer("std", _as_channel_tensor("std", std), persistent=False)
        self.register_buffer("student_mean", _as_channel_tensor("student_mean", student_mean), persistent=False)
        self.register_buffer("student_std", _as_channel_tensor("student_std", student_std), persistent=False)
        self.output_index = int(output_index)
        super().train(False)

    def train(self, mode: bool = True) -> Teacher:
        """Keep the teacher in eval mode: ``mode`` is ignored (BatchNorm stats stay frozen)."""
        return super().train(False)

    def _prepare(self, x: torch.Tensor) -> torch.Tensor:
        renorm = any(t is not None for t in (self.mean, self.std, self.student_mean, self.student_std))
        if renorm:
            shape = (1, -1) + (1,) * (x.ndim - 2)
            x = x.float()
            if self.student_std is not None:
                x = x * self.student_std.to(x.device).view(shape)
            if self.student_mean is not None:
                x = x + self.student_mean.to(x.device).view(shape)
            if self.mean is not None:
                x = x - self.mean.to(x.device).view(shape)
            if self.std is not None:
                x = x / self.std.to(x.device).view(shape)
        if self.input_size is not None:
            n_spatial = x.ndim - 2
            size = self.input_size * n_spatial if len(self.input_size) == 1 else self.input_size
            if len(size) != n_spatial:
                raise ValueError(f"input_size {self.input_size} does not match {n_spatial} spatial dims of the batch.")
            if tuple(x.shape[2:]) != tuple(size):
                x = F.interpolate(x, size=size, mode=_MODES[n_spatial], align_corners=False)
        return x

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        """Teacher logits for the student's batch ``x`` (no gradient, float32)."""
        if self.network.training:
            self.network.eval()
        with torch.no_grad():
            x = self._prepare(torch.as_tensor(x) if not isinstance(x, torch.Tensor) else x)
            out = self.network(x, *args, **kwargs)
            if isinstance(out, (tuple, list)):
                out = out[self.output_index]
            return out.detach().float()


def batch_ids(batch: Mapping[str, Any], id_key: str) -> list[str]:
    """The sample ids of a collated batch, as strings.

    Args:
        batch: a collated dict batch.
        id_key: its key holding ids (a list of strings/ints or a tensor of ints). When the key is
            absent and ``id_key`` is ``"filename_or_obj"``, the ``image`` MetaTensor's metadata is
            used.

    Raises:
        KeyError: when the ids cannot be found.
    """
    if id_key in batch:
        ids = batch[id_key]
    else:
        image = batch.get("image")
        meta = getattr(image, "meta", None)
        if meta is None or id_key not in meta:
            raise KeyError(f"id_key {id_key!r} not found in the batch (keys: {sorted(batch)}).")
        ids = meta[id_key]
    if isinstance(ids, torch.Tensor):
        ids = ids.flatten().tolist()
    elif isinstance(ids, (str, int)):
        ids = [ids]
    return [str(i) for i in ids]


class TeacherLogitCache:
    """Teacher logits precomputed once for a fixed data set, keyed by sample id.

    Only valid for inputs that do not change between epochs (no random augmentation, no mixup):
    the cached logits are those of the un-augmented samples.

    Args:
        logits: mapping ``sample id -> logits tensor`` (one sample, no batch dim).
        dtype: storage dtype (``torch.float16`` halves the size of segmentation caches).

    Example::

        cache = TeacherLogitCache.load_or_build("teacher_logits.pt", teacher, train_loader, id_key="id")
        DistillationIteration(teacher_cache=cache, id_key="id")
    """

    def __init__(self, logits: Mapping[str, torch.Tensor] | None = None, dtype: torch.dtype = torch.float32) -> None:
        self.dtype = dtype
        self._logits: dict[str, torch.Tensor] = {}
        for k, v in (logits or {}).items():
            self._logits[str(k)] = torch.as_tensor(v).detach().to("cpu", dtype)

    def __len__(self) -> int:
        return len(self._logits)

    def __contains__(self, sample_id: object) -> bool:
        return str(sample_id) in self._logits

    @property
    def ids(self) -> list[str]:
        """The cached sample ids, in insertion order."""
        return list(self._logits)

    def add(self, ids: Sequence[Any], logits: torch.Tensor) -> None:
        """Store the rows of ``logits`` (batch first) under ``ids``."""
        if len(ids) != logits.shape[0]:
            raise ValueError(f"got {len(ids)} ids for a batch of {logits.shape[0]} logits.")
        for i, row in zip(ids, logits.detach().to("cpu", self.dtype)):
            self._logits[str(i)] = row.clone()

    def get(
        self, ids: Sequence[Any], device: torch.device | str | None = None, dtype: torch.dtype = torch.float32
    ) -> torch.Tensor:
        """The stacked logits of ``ids`` (a batch), on ``device``, as ``dtype``.

        Raises:
            KeyError: naming the first id that is not cached.
        """
        missing = [i for i in ids if str(i) not in self._logits]
        if missing:
            raise KeyError(f"sample id {missing[0]!r} is not in the teacher logit cache ({len(self)} ids).")
        return torch.stack([self._logits[str(i)] for i in ids]).to(device=device, dtype=dtype)

    @classmethod
    def build(
        cls,
        teacher: nn.Module,
        data: Iterable[Mapping[str, Any]],
        image_key: str = "image",
        id_key: str = "id",
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
        progress: bool = False,
    ) -> TeacherLogitCache:
        """Run ``teacher`` once over ``data`` (an iterable of collated dict batches).

        Args:
            teacher: the teacher (a :class:`Teacher` or any module; run in eval mode, no grad).
            data: e.g. a ``DataLoader`` over the *un-augmented* training set.
            image_key: batch key of the input image.
            id_key: batch key of the sample ids (see :func:`batch_ids`).
            device: where to run the teacher (default: where its parameters are).
            dtype: storage dtype.
            progress: show a tqdm progress bar.
        """
        if device is None:
            param = next(iter(teacher.parameters()), None)
            device = param.device if param is not None else torch.device("cpu")
        was_training = teacher.training
        teacher.eval()
        cache = cls(dtype=dtype)
        iterator: Iterable = data
        if progress:
            from tqdm.auto import tqdm

            iterator = tqdm(data, desc="teacher logits")
        with torch.no_grad():
            for batch in iterator:
                ids = batch_ids(batch, id_key)
                images = torch.as_tensor(batch[image_key]).to(device)
                out = teacher(images)
                if isinstance(out, (tuple, list)):
                    out = out[0]
                cache.add(ids, out.float())
        teacher.train(was_training)
        logger.info("TeacherLogitCache: cached logits of %d samples", len(cache))
        return cache

    def save(self, path: str | os.PathLike) -> None:
        """Write the cache with ``torch.save`` (ids and one stacked tensor)."""
        path = os.fspath(path)
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        ids = self.ids
        logits = torch.stack([self._logits[i] for i in ids]) if ids else torch.empty(0)
        torch.save({"format": "medmamba.teacher_logits", "version": 1, "ids": ids, "logits": logits}, path)

    @classmethod
    def load(cls, path: str | os.PathLike) -> TeacherLogitCache:
        """Read a cache written by :meth:`save` (``torch.load(weights_only=True)``)."""
        obj = read_checkpoint(path)
        if not isinstance(obj, Mapping) or obj.get("format") != "medmamba.teacher_logits":
            raise ValueError(f"{os.fspath(path)!r} is not a teacher logit cache written by TeacherLogitCache.save.")
        logits = obj["logits"]
        cache = cls(dtype=logits.dtype)
        if obj["ids"]:
            cache.add(obj["ids"], logits)
        return cache

    @classmethod
    def load_or_build(
        cls,
        path: str | os.PathLike,
        teacher: nn.Module,
        data: Iterable[Mapping[str, Any]],
        **build_kwargs: Any,
    ) -> TeacherLogitCache:
        """Load the cache at ``path`` if it exists, else :meth:`build` it and save it there."""
        if os.path.isfile(os.fspath(path)):
            return cls.load(path)
        cache = cls.build(teacher, data, **build_kwargs)
        cache.save(path)
        return cache
