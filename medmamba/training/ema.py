"""Exponential moving average (EMA) of the weights, as an ignite handler.

The paper keeps an EMA of the network weights with decay 0.9998 and evaluates it alongside the
raw weights. After every optimiser step, for every parameter ``θ``:

.. math::

    \\bar\\theta_{n+1} = d_n \\, \\bar\\theta_n + (1 - d_n) \\, \\theta_{n+1},
    \\qquad d_n = \\min\\Big(d, \\frac{1 + n}{10 + n}\\Big) \\text{ (warm-up) or } d_n = d,

where ``n`` is the number of updates done so far. With 0.9998 and no warm-up the EMA of a short
run (a few thousand iterations) would stay close to the initial weights; the warm-up (as in
TensorFlow's ``ExponentialMovingAverage(num_updates=...)``) lets it follow the early weights.

Buffers (BatchNorm running statistics, ``num_batches_tracked``): with ``buffers="copy"``
(default, as ignite's ``EMAHandler``) they are copied from the raw model at each update, so the
EMA model's BN statistics are those of the latest raw weights; with ``buffers="ema"`` floating
buffers are averaged with the same ``d_n`` (as timm's ``ModelEmaV2``) and integer buffers copied.

:class:`ModelEMA` is PyTorch's :class:`torch.optim.swa_utils.AveragedModel` with the averaging of
:func:`torch.optim.swa_utils.get_ema_multi_avg_fn` at the warm-up decay :math:`d_n`.

Usage from a bundle::

    "ema": {"_target_": "medmamba.training.ModelEMA", "model": "@network", "decay": 0.9998},
    "train#handlers": [..., {"_target_": "medmamba.training.EMAHandler", "ema": "@ema"}],
    "validate#evaluator_ema": {"_target_": "SupervisedEvaluator", "network": "@ema", ...},
    "checkpoint": {"_target_": "CheckpointSaver", "save_dict": {"model": "@network", "ema": "@ema"}, ...}

:class:`ModelEMA` is an ``nn.Module`` whose forward is the averaged network's and whose state dict
(``module.*`` plus ``num_updates``) goes into MONAI's ``CheckpointSaver``/``CheckpointLoader``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

if TYPE_CHECKING:
    from ignite.engine import Engine

__all__ = ["ModelEMA", "EMAHandler", "ema_decay"]

_BUFFER_MODES = ("copy", "ema")


def ema_decay(decay: float, num_updates: int, warmup: bool = True) -> float:
    """The decay :math:`d_n` used for update number ``num_updates`` (0-based)."""
    if warmup:
        return min(decay, (1.0 + num_updates) / (10.0 + num_updates))
    return decay


def _unwrap(model: nn.Module) -> nn.Module:
    if isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
        return model.module
    return model


def _num_updates_to_state_dict(module: nn.Module, state_dict: dict[str, Any], prefix: str, local_metadata: Any) -> None:
    """State-dict post-hook: write ``AveragedModel``'s ``n_averaged`` as this recipe's ``num_updates``."""
    state_dict[prefix + "num_updates"] = state_dict.pop(prefix + "n_averaged") - 1


def _num_updates_from_state_dict(module: nn.Module, state_dict: dict[str, Any], prefix: str, *args: Any) -> None:
    """Load pre-hook: read ``num_updates`` (what :class:`ModelEMA` state dicts hold) into ``n_averaged``."""
    if prefix + "num_updates" in state_dict:
        state_dict[prefix + "n_averaged"] = state_dict.pop(prefix + "num_updates") + 1


class ModelEMA(AveragedModel):
    """An exponential moving average of ``model``'s weights (a frozen, eval-mode copy).

    A :class:`torch.optim.swa_utils.AveragedModel` whose averaging is ``get_ema_multi_avg_fn`` at
    the decay :math:`d_n` of :func:`ema_decay`. The copy made here counts as the first average
    (``n_averaged`` starts at 1), so the first :meth:`update` already averages with :math:`d_0`
    instead of copying; the state dict keeps this recipe's ``num_updates`` (``n_averaged - 1``).

    Args:
        model: the network being trained; it is deep-copied (on its current device).
        decay: the EMA decay d (paper: 0.9998).
        warmup: use :math:`d_n = \\min(d, (1+n)/(10+n))` for short runs.
        buffers: ``"copy"`` or ``"ema"``, see the module doc.

    Raises:
        TypeError: ``model`` is not an ``nn.Module``.
        ValueError: ``decay`` outside [0, 1) or an unknown ``buffers`` mode.

    The averaged network is :attr:`module`; calling the ``ModelEMA`` runs it. It stays in eval
    mode and without gradients whatever ``.train()`` is called.
    """

    def __init__(self, model: nn.Module, decay: float = 0.9998, warmup: bool = True, buffers: str = "copy") -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be an nn.Module, got {type(model).__name__}.")
        if not 0.0 <= float(decay) < 1.0:
            raise ValueError(f"decay must be in [0, 1), got {decay}.")
        if buffers not in _BUFFER_MODES:
            raise ValueError(f"buffers must be one of {_BUFFER_MODES}, got {buffers!r}.")
        super().__init__(_unwrap(model), multi_avg_fn=self._average, use_buffers=buffers == "ema")
        self.decay = float(decay)
        self.warmup = bool(warmup)
        self.buffers_mode = buffers
        self.module.requires_grad_(False)
        self.n_averaged.fill_(1)
        self.register_state_dict_post_hook(_num_updates_to_state_dict)
        self.register_load_state_dict_pre_hook(_num_updates_from_state_dict)
        super().train(False)

    def train(self, mode: bool = True) -> ModelEMA:
        """Keep the EMA network in eval mode (``mode`` is ignored)."""
        return super().train(False)

    @property
    def num_updates(self) -> int:
        """How many times :meth:`update` has folded the model in."""
        return int(self.n_averaged) - 1

    @property
    def current_decay(self) -> float:
        """The decay the next :meth:`update` will use."""
        return ema_decay(self.decay, self.num_updates, self.warmup)

    @torch.no_grad()
    def _average(self, ema_tensors: list[torch.Tensor], tensors: list[torch.Tensor], n_averaged: torch.Tensor) -> None:
        """``AveragedModel``'s ``multi_avg_fn``: EMA at :math:`d_n` for floats, a copy for integer buffers."""
        if ema_tensors[0].is_floating_point() or ema_tensors[0].is_complex():
            decay = ema_decay(self.decay, int(n_averaged) - 1, self.warmup)
            get_ema_multi_avg_fn(decay)(ema_tensors, tensors, n_averaged)
        else:
            for e, t in zip(ema_tensors, tensors):
                e.copy_(t)

    def update_parameters(self, model: nn.Module) -> None:
        """Fold ``model``'s current weights into the average (call after each optimiser step).

        Raises:
            ValueError: when ``model``'s parameter/buffer names differ from the EMA copy's.
        """
        model = _unwrap(model)
        if dict(self.module.named_parameters()).keys() != dict(model.named_parameters()).keys():
            raise ValueError("model's parameters do not match the EMA copy (was the model rebuilt?).")
        ema_buffers = dict(self.module.named_buffers())
        for name, _ in model.named_buffers():
            if name not in ema_buffers:
                raise ValueError(f"buffer {name!r} of model is not in the EMA copy.")
        super().update_parameters(model)

    def update(self, model: nn.Module) -> None:
        """Alias of :meth:`update_parameters`."""
        self.update_parameters(model)


class EMAHandler:
    """Ignite handler updating a :class:`ModelEMA` after every (n-th) training iteration.

    Not ignite's ``EMAHandler``: that keeps its own copy, warms the momentum up linearly and updates
    with ``mul_``/``add_``, which would change this recipe's ``(1+n)/(10+n)`` lerp average.

    Args:
        ema: the :class:`ModelEMA` to update (share it with the evaluator and the checkpoint
            saver). When ``None`` one is created at :meth:`attach` from the trainer's network with
            ``decay``, ``warmup``, ``buffers``; it is then available as :attr:`ema`.
        decay, warmup, buffers: used only when ``ema`` is ``None``.
        every_n_iters: update period; set it to the gradient-accumulation steps, so the EMA is
            updated once per optimiser step.
        model: the raw network to average; default the engine's ``network``.
    """

    def __init__(
        self,
        ema: ModelEMA | None = None,
        decay: float = 0.9998,
        warmup: bool = True,
        buffers: str = "copy",
        every_n_iters: int = 1,
        model: nn.Module | None = None,
    ) -> None:
        if ema is not None and not isinstance(ema, ModelEMA):
            raise TypeError(f"ema must be a ModelEMA or None, got {type(ema).__name__}.")
        if int(every_n_iters) < 1:
            raise ValueError(f"every_n_iters must be >= 1, got {every_n_iters}.")
        self.ema = ema
        self.decay = decay
        self.warmup = warmup
        self.buffers = buffers
        self.every_n_iters = int(every_n_iters)
        self.model = model

    def attach(self, engine: Engine) -> None:
        """Register the update on ``ITERATION_COMPLETED(every=every_n_iters)`` of ``engine``."""
        from ignite.engine import Events

        if self.ema is None:
            source = self.model if self.model is not None else getattr(engine, "network", None)
            if source is None:
                raise ValueError("EMAHandler needs ema=, model= or an engine with a `network` attribute.")
            self.ema = ModelEMA(source, decay=self.decay, warmup=self.warmup, buffers=self.buffers)
        engine.add_event_handler(Events.ITERATION_COMPLETED(every=self.every_n_iters), self)

    def __call__(self, engine: Engine) -> None:
        model = self.model if self.model is not None else engine.network  # type: ignore[attr-defined]
        if self.ema is None:
            raise RuntimeError("EMAHandler was called before attach(); call handler.attach(trainer).")
        self.ema.update_parameters(model)
