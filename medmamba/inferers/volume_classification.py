"""Volume-level classification from per-slice logits of a 2D network (slice aggregation)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn

from medmamba.inferers.slice_stack import SliceStackInferer

__all__ = ["AGGREGATIONS", "SliceAggregationInferer", "SliceAggregator", "aggregate_slice_logits"]

AGGREGATIONS = ("mean", "max", "topk", "logsumexp")


def _check_method(method: Any, top_k: Any) -> None:
    if callable(method):
        return
    if method not in AGGREGATIONS:
        raise ValueError(f"method must be one of {AGGREGATIONS} or a callable, got {method!r}.")
    if method == "topk":
        if isinstance(top_k, bool) or not isinstance(top_k, (int, float, np.integer, np.floating)):
            raise TypeError(f"top_k must be an int >= 1 or a float in (0, 1], got {top_k!r}.")
        if isinstance(top_k, (int, np.integer)) and top_k < 1:
            raise ValueError(f"top_k must be an int >= 1 or a float in (0, 1], got {top_k}.")
        if isinstance(top_k, (float, np.floating)) and not 0.0 < top_k <= 1.0:
            raise ValueError(f"top_k as a fraction of the slices must lie in (0, 1], got {top_k}.")


def aggregate_slice_logits(
    logits: torch.Tensor,
    method: str | Callable[[torch.Tensor], torch.Tensor] = "mean",
    top_k: int | float = 3,
    dim: int = -1,
) -> torch.Tensor:
    """Reduce per-slice logits to one prediction per volume.

    Args:
        logits: per-slice logits with the slices along ``dim``, e.g. ``(B, K, S)``.
        method: ``"mean"`` (average logit), ``"max"`` (largest logit per class: "any slice shows
            it"), ``"topk"`` (per class, the mean of its ``top_k`` largest slice logits: robust
            max), ``"logsumexp"`` (``log(mean(exp(logits)))``: a smooth max between mean and max), or
            a callable mapping a tensor with the slices on the last axis to the reduced tensor.
        top_k: for ``"topk"``: an int number of slices (capped at ``S``), or a float fraction of the
            slices in ``(0, 1]`` (at least one slice).
        dim: the slice axis.

    Returns:
        ``logits`` with ``dim`` removed.

    Raises:
        ValueError / TypeError: on an unknown method, a bad ``top_k`` or an empty slice axis.
    """
    _check_method(method, top_k)
    if not isinstance(logits, torch.Tensor):
        raise TypeError(f"logits must be a torch.Tensor, got {type(logits).__name__}.")
    if logits.ndim == 0:
        raise ValueError("logits must have a slice axis, got a 0D tensor.")
    x = logits.movedim(dim, -1)
    num = x.shape[-1]
    if num == 0:
        raise ValueError(f"logits has no slices along dim={dim} (shape {tuple(logits.shape)}).")
    if callable(method):
        return method(x)
    if method == "mean":
        return x.mean(-1)
    if method == "max":
        return x.amax(-1)
    if method == "logsumexp":
        return torch.logsumexp(x, -1) - float(np.log(num))
    k = int(top_k) if isinstance(top_k, (int, np.integer)) else max(1, int(np.ceil(float(top_k) * num)))
    return x.topk(min(k, num), dim=-1).values.mean(-1)


class SliceAggregationInferer(SliceStackInferer):
    """Classify volumes with a 2D (or 2.5D) slice classifier by aggregating its per-slice logits.

    Runs the network on every slice stack as :class:`SliceStackInferer` does, collecting logits
    ``(B, K, S)``, then reduces the slices with :func:`aggregate_slice_logits`. Usable as the
    ``inferer`` of :class:`monai.engines.SupervisedEvaluator` for volume labels.

    Args:
        spatial_dim: spatial axis of the slices: 0, 1 or 2 (default).
        context: neighbouring slices on each side fed as channels (see :class:`SliceStackInferer`).
        method: ``"mean"``, ``"max"``, ``"topk"``, ``"logsumexp"`` or a callable.
        top_k: slices (int) or fraction of slices (float) for ``"topk"``.
        kwargs: further :class:`SliceStackInferer` arguments (``sw_batch_size``, ``progress``, ...).

    Raises:
        ValueError: if the network's per-slice output is not ``(N, K)`` logits (or ``(N, K, 1, 1)``).
    """

    def __init__(
        self,
        spatial_dim: int = 2,
        context: int = 0,
        method: str | Callable[[torch.Tensor], torch.Tensor] = "mean",
        top_k: int | float = 3,
        **kwargs: Any,
    ) -> None:
        super().__init__(spatial_dim=spatial_dim, context=context, **kwargs)
        _check_method(method, top_k)
        self.method = method
        self.top_k = top_k

    def __call__(  # type: ignore[override]
        self, inputs: torch.Tensor, network: Callable[..., Any], *args: Any, **kwargs: Any
    ) -> torch.Tensor:
        """Classify ``inputs`` ``(B, C, H, W, D)``; returns ``(B, K)`` volume logits."""
        per_slice = super().__call__(inputs, network, *args, **kwargs)
        if not isinstance(per_slice, torch.Tensor):
            raise TypeError(f"the network must return one tensor of per-slice logits, got {type(per_slice).__name__}.")
        if per_slice.ndim == 5 and self._spatial_singleton(per_slice):
            per_slice = per_slice.movedim(2 + self.spatial_dim, -1).flatten(2)  # (B, K, 1*1*S)
        if per_slice.ndim != 3:
            raise ValueError(
                "the network must return per-slice logits (N, K) (or (N, K, 1, 1)); the slice volume has shape "
                f"{tuple(per_slice.shape)}."
            )
        return aggregate_slice_logits(per_slice, self.method, self.top_k, dim=-1)

    def _spatial_singleton(self, volume: torch.Tensor) -> bool:
        others = [volume.shape[2 + i] for i in range(3) if i != self.spatial_dim]
        return others == [1, 1]


class SliceAggregator(nn.Module):
    """A volume classifier made of a 2D slice classifier and a slice aggregation (trainable end to end).

    ``SliceAggregator(net)(volume)`` runs ``net`` over every slice stack of ``volume``
    ``(B, C, H, W, D)`` and aggregates the per-slice logits ``(B, K, S)`` into ``(B, K)``. Gradients
    flow through all slices, so it can be trained on volume labels (multiple-instance learning);
    for long volumes mind the memory of keeping every slice's activations.

    Args:
        network: 2D classifier taking ``(N, C * (2 * context + 1), P0, P1)``, returning ``(N, K)``.
        spatial_dim: spatial axis of the slices.
        context: neighbouring slices on each side.
        method: aggregation, see :func:`aggregate_slice_logits`.
        top_k: for ``"topk"``.
        sw_batch_size: slices per call of ``network``.
        return_slice_logits: also return the ``(B, K, S)`` per-slice logits, as ``(volume, slices)``.
    """

    def __init__(
        self,
        network: nn.Module,
        spatial_dim: int = 2,
        context: int = 0,
        method: str | Callable[[torch.Tensor], torch.Tensor] = "mean",
        top_k: int | float = 3,
        sw_batch_size: int = 32,
        return_slice_logits: bool = False,
    ) -> None:
        super().__init__()
        self.network = network
        self.inferer = SliceAggregationInferer(
            spatial_dim=spatial_dim, context=context, method=method, top_k=top_k, sw_batch_size=sw_batch_size
        )
        self.return_slice_logits = bool(return_slice_logits)

    def forward(self, volume: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Volume logits ``(B, K)`` (and the per-slice logits if ``return_slice_logits``)."""
        per_slice = SliceStackInferer.__call__(self.inferer, volume, self.network)
        if not isinstance(per_slice, torch.Tensor):
            raise TypeError(f"the network must return one tensor of per-slice logits, got {type(per_slice).__name__}.")
        if per_slice.ndim != 3:
            raise ValueError(f"the network must return per-slice logits (N, K); got a volume of shape {tuple(per_slice.shape)}.")
        logits = aggregate_slice_logits(per_slice, self.inferer.method, self.inferer.top_k, dim=-1)
        return (logits, per_slice) if self.return_slice_logits else logits
