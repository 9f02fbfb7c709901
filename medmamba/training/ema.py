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

Usage from a bundle::

    "ema": {"_target_": "medmamba.training.ModelEMA", "model": "@network", "decay": 0.9998},
    "train#handlers": [..., {"_target_": "medmamba.training.EMAHandler", "ema": "@ema"}],
    "validate#evaluator_ema": {"_target_": "SupervisedEvaluator", "network": "@ema", ...},
    "checkpoint": {"_target_": "CheckpointSaver", "save_dict": {"model": "@network", "ema": "@ema"}, ...}

:class:`ModelEMA` is an ``nn.Module`` whose forward is the averaged network's and whose state dict
(``module.*`` plus ``num_updates``) goes into MONAI's ``CheckpointSaver``/``CheckpointLoader``.
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

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


class ModelEMA(nn.Module):
    """An exponential moving average of ``model``'s weights (a frozen, eval-mode copy).

    Args:
        model: the network being trained; it is deep-copied (on its current device).
        decay: the EMA decay d (paper: 0.9998).
        warmup: use :math:`d_n = \\min(d, (1+n)/(10+n))` for short runs.
        buffers: ``"copy"`` or ``"ema"``, see the module doc.

    The averaged network is :attr:`module`; calling the ``ModelEMA`` runs it. It stays in eval
    mode and without gradients whatever ``.train()`` is called.
    """

    def __init__(self, model: nn.Module, decay: float = 0.9998, warmup: bool = True, buffers: str = "copy") -> None:
        super().__init__()
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be an nn.Module, got {type(model).__name__}.")
        if not 0.0 <= float(decay) < 1.0:
            raise ValueError(f"decay must be in [0, 1), got {decay}.")
        if buffers not in _BUFFER_MODES:
            raise ValueError(f"buffers must be one of {_BUFFER_MODES}, got {buffers!r}.")
        self.decay = float(decay)
        self.warmup = bool(warmup)
        self.buffers_mode = buffers
        self.module = copy.deepcopy(_unwrap(model))
        self.module.requires_grad_(False)
        self.register_buffer("num_updates", torch.zeros((), dtype=torch.long))
        super().train(False)

    def train(self, mode: bool = True) -> ModelEMA:
        """Keep the EMA network in eval mode (``mode`` is ignored)."""
        return super().train(False)

    @property
    def current_decay(self) -> float:
        """The decay the next :meth:`update` will use."""
        return ema_decay(self.decay, int(self.num_updates), self.warmup)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Fold ``model``'s current weights into the average (call after each optimiser step).

        Raises:
            ValueError: when ``model``'s parameter/buffer names differ from the EMA copy's.
        """
        model = _unwrap(model)
        d = self.current_decay
        ema_params = dict(self.module.named_parameters())
        params = dict(model.named_parameters())
        if ema_params.keys() != params.keys():
            raise ValueError("model's parameters do not match the EMA copy (was the model rebuilt?).")
        for name, p in params.items():
            e = ema_params[name]
            e.lerp_(p.detach().to(device=e.device, dtype=e.dtype), 1.0 - d)
        ema_buffers = dict(self.module.named_buffers())
        for name, b in model.named_buffers():
            if name not in ema_buffers:
                raise ValueError(f"buffer {name!r} of model is not in the EMA copy.")
            e = ema_buffers[name]
            b = b.detach().to(e.device)
            if self.buffers_mode == "ema" and e.is_floating_point():
                e.lerp_(b.to(e.dtype), 1.0 - d)
            else:
                e.copy_(b)
        self.num_updates += 1

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.module(*args, **kwargs)


class EMAHandler:
    """Ignite handler updating a :class:`ModelEMA` after every (n-th) training iteration.

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
        self.ema.update(model)
