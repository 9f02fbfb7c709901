"""Flip test-time augmentation: class probabilities averaged over a volume and its mirror images."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import torch

__all__ = ["FlipTTAInferer", "log_mean_softmax"]


def log_mean_softmax(outputs: Iterable[torch.Tensor]) -> torch.Tensor:
    """The logarithm of the mean of the softmax probabilities (over channel dim 1) of several logits.

    How test-time augmentations and view aggregation combine their runs: a softmax (or an arg-max)
    downstream gives the averaged probabilities (or their arg-max). ``outputs`` may be a generator,
    so that one run's probabilities are added before the next run starts.

    Raises:
        ValueError: ``outputs`` is empty.
    """
    total, count = None, 0
    for out in outputs:
        probs = torch.softmax(torch.as_tensor(out).float(), dim=1)
        total = probs if total is None else total + probs
        count += 1
    if total is None:
        raise ValueError("outputs must hold at least one tensor of logits, got none.")
    return torch.log((total / count).clamp_min(1e-12))


class FlipTTAInferer:
    """Test-time augmentation: average the class probabilities of the volume and its mirror images.

    Runs ``inferer`` on the input and on the input flipped along each of ``spatial_axes`` (flipped
    back afterwards), averages the softmax probabilities and returns their logarithm, so that a
    softmax (or an argmax) downstream gives the averaged probabilities (or their arg-max). Usable
    wherever an inferer is (``SupervisedEvaluator``, :class:`medmamba.inferers.VolumeSegmenter`).

    Args:
        inferer: the inferer to wrap, e.g. :class:`medmamba.inferers.SliceStackInferer`.
        spatial_axes: spatial axes to mirror (0 is the first spatial axis; for RAS volumes 0 is
            left-right). Empty: no augmentation, the wrapped inferer's logits are returned as they are.

    Raises:
        TypeError: ``inferer`` is not callable.
        ValueError: ``spatial_axes`` holds a negative or repeated axis (or, when called, an axis
            beyond the input's spatial dimensions).
    """

    def __init__(self, inferer: Callable[..., Any], spatial_axes: Sequence[int] = (0,)) -> None:
        if not callable(inferer):
            raise TypeError(f"inferer must be callable, got {type(inferer).__name__}.")
        axes = [int(a) for a in spatial_axes]
        if any(a < 0 for a in axes) or len(set(axes)) != len(axes):
            raise ValueError(f"spatial_axes must be distinct non-negative spatial axes, got {spatial_axes!r}.")
        self.inferer = inferer
        self.spatial_axes = axes

    def __call__(self, inputs: torch.Tensor, network: Callable[..., Any], *args: Any, **kwargs: Any) -> torch.Tensor:
        runs = self.runs(inputs, network, *args, **kwargs)
        if not self.spatial_axes:
            return next(runs)
        return log_mean_softmax(runs)  # one flipped run in memory at a time

    def runs(self, inputs: torch.Tensor, network: Callable[..., Any], *args: Any,
             mirror_inputs: torch.Tensor | None = None, **kwargs: Any) -> Iterator[torch.Tensor]:
        """The wrapped inferer's output on ``inputs``, then on its mirror image along each of
        ``spatial_axes`` (flipped back), one at a time.

        Args:
            inputs: ``(B, C, *spatial)`` volumes.
            network: the network the wrapped inferer runs.
            mirror_inputs: what the mirror runs flip instead of ``inputs`` (the same shape), e.g. the
                stripped brain of a whole head (:class:`medmamba.inferers.BrainNormalizingInferer`'s
                ``final_input="head_and_brain"``); ``None``: ``inputs``.

        Raises:
            ValueError: an axis beyond the input's spatial dimensions, or ``mirror_inputs`` of another shape.
        """
        n_spatial = inputs.ndim - 2
        if any(a >= n_spatial for a in self.spatial_axes):
            raise ValueError(f"spatial_axes {self.spatial_axes} do not fit the {n_spatial} spatial dims of the input.")
        mirrored = inputs if mirror_inputs is None else mirror_inputs
        if tuple(mirrored.shape) != tuple(inputs.shape):
            raise ValueError(f"mirror_inputs must have the inputs' shape {tuple(inputs.shape)}, got {tuple(mirrored.shape)}.")
        yield self.inferer(inputs, network, *args, **kwargs)
        for dim in (2 + axis for axis in self.spatial_axes):
            yield self.inferer(mirrored.flip(dim), network, *args, **kwargs).flip(dim)
