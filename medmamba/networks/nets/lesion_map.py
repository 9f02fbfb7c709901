"""LesionMapClassifier: slice classification pooled from a dense lesion map (multiple-instance pooling).

A small lesion covers a few dozen of the ~16 000 pixels of a slice. A classifier trained on
slice-level labels alone has to discover those pixels from a one-bit signal per slice, and on small
data sets it learns which slices tend to hold lesions (anatomy) instead of what a lesion looks
like. When lesion masks are available for training (or synthetic lesions are inserted, see
:class:`medmamba.apps.classification.RandStackLesionInsertd`), the network can be trained densely, as
a segmentation network, and the slice decision read off its lesion map: the slice is as lesioned as
its most lesioned pixels. This is multiple-instance pooling (a slice is a bag of pixel instances,
positive when any instance is), the max-pooling form used for weakly supervised lesion detection.

The wrapper keeps the classification interface of the rest of the toolkit: ``(B, 2)`` logits, so
:func:`medmamba.apps.classification.lesion_log_odds`, the volume aggregation, the metrics, fusion
and TorchScript / ONNX export work unchanged.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["LesionMapClassifier", "check_pooling", "declared_in_channels", "lesion_log_odds_map", "pool_lesion_map"]

_POOLINGS = ("max", "topk", "mean")


def check_pooling(pooling: str, top_k: int) -> None:
    """Validate a lesion-map pooling (see :func:`pool_lesion_map`).

    Raises:
        ValueError: ``pooling`` is not ``"max"``, ``"topk"`` or ``"mean"``, or ``top_k`` is not a
            positive integer.
    """
    if pooling not in _POOLINGS:
        raise ValueError(f"pooling={pooling!r} is not valid; expected one of {_POOLINGS}.")
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
        raise ValueError(f"top_k={top_k!r} is not valid; expected a positive integer.")


def declared_in_channels(network: nn.Module) -> int:
    """``network.in_channels`` as an int, or ``-1`` when it has none: what wrappers re-declare."""
    channels = getattr(network, "in_channels", None)
    return int(channels) if isinstance(channels, int) and not isinstance(channels, bool) else -1


def lesion_log_odds_map(logits: torch.Tensor, lesion_channel: int = -1) -> torch.Tensor:
    """Per-pixel lesion log-odds ``z_lesion - logsumexp(z_others)`` of segmentation logits.

    Args:
        logits: ``(B, C, *spatial)`` logits with ``C >= 2``.
        lesion_channel: index of the lesion class (negative counts from the end).

    Returns:
        ``(B, *spatial)`` log-odds of "lesion" against every other class.

    Raises:
        ValueError: fewer than two channels.
    """
    channels = logits.shape[1]
    if channels < 2:
        raise ValueError(f"the segmentation network returned {channels} channel(s); expected at least 2 (lesion and not lesion).")
    lesion = lesion_channel % channels
    others = torch.cat([logits[:, :lesion], logits[:, lesion + 1 :]], dim=1)
    return logits[:, lesion] - torch.logsumexp(others, dim=1)


def pool_lesion_map(log_odds: torch.Tensor, pooling: str = "max", top_k: int = 16) -> torch.Tensor:
    """Pool a lesion map ``(B, *spatial)`` into one score per image ``(B,)`` (multiple-instance pooling).

    Args:
        log_odds: per-pixel lesion log-odds, e.g. from :func:`lesion_log_odds_map`.
        pooling: ``"max"``, ``"topk"`` (mean of the ``top_k`` highest) or ``"mean"``.
        top_k: pixels averaged by ``"topk"`` (fewer when the image has fewer).

    Returns:
        ``(B,)`` pooled scores.

    Raises:
        ValueError: unknown ``pooling``.
    """
    z = log_odds.flatten(1)
    if pooling == "max":
        return z.max(dim=1).values
    if pooling == "topk":
        return z.topk(min(int(top_k), z.shape[1]), dim=1).values.mean(dim=1)
    if pooling == "mean":
        return z.mean(dim=1)
    # (no f-string of the module tuple: this function is compiled by torch.jit.script)
    raise ValueError("pooling='" + pooling + "' is not valid; expected one of ('max', 'topk', 'mean').")


class LesionMapClassifier(nn.Module):
    """Slice classifier on top of a segmentation network: pooled lesion log-odds as ``(B, 2)`` logits.

    The segmentation network returns logits ``(B, C, H, W)`` (``C >= 2``), channel
    ``lesion_channel`` being the lesion class and the others "not lesion" (background, or tissue
    classes). Per pixel the lesion log-odds are ``z_lesion - logsumexp(z_others)``; the slice score
    ``s`` pools them over the image (``"max"``; ``"topk"``: the mean of the ``top_k`` highest;
    ``"mean"``) and the classifier returns ``[0, s]``, whose softmax is ``[1 - sigmoid(s),
    sigmoid(s)]``.

    Args:
        network: the segmentation network (e.g. :class:`~medmamba.networks.MobileMambaSeg`). It
            must return one logits tensor in eval mode; in training mode a list (deep supervision)
            is accepted and its first element used.
        lesion_channel: index of the lesion class in the network's output (negative counts from
            the end).
        pooling: ``"max"``, ``"topk"`` or ``"mean"``.
        top_k: pixels averaged by ``"topk"``.

    Raises:
        TypeError: ``network`` is not an ``nn.Module``.
        ValueError: unknown ``pooling``, ``top_k < 1``, or an output with fewer than two channels
            (at call time).

    Example::

        seg = MobileMambaSeg("t2", in_channels=3, out_channels=5)   # background, 3 tissues, lesion
        clf = LesionMapClassifier(seg, lesion_channel=-1)
        logits = clf(torch.randn(4, 3, 128, 128))                  # (4, 2)
    """

    def __init__(self, network: nn.Module, lesion_channel: int = -1, pooling: str = "max", top_k: int = 16) -> None:
        super().__init__()
        if not isinstance(network, nn.Module):
            raise TypeError(f"network must be an nn.Module, got {type(network).__name__}.")
        check_pooling(pooling, top_k)
        self.network = network
        #: the wrapped network's ``in_channels`` (``-1`` if it has none), read by ``SliceStackInferer``.
        self.in_channels: int = declared_in_channels(network)
        self.lesion_channel = int(lesion_channel)
        self.pooling = pooling
        self.top_k = top_k

    def lesion_map(self, x: torch.Tensor) -> torch.Tensor:
        """Per-pixel lesion log-odds ``(B, H, W)`` of an input ``(B, C_in, H, W)``."""
        out = self.network(x)
        if isinstance(out, list):
            out = out[0]
        return lesion_log_odds_map(out, self.lesion_channel)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Slice logits ``(B, 2)``: ``[0, pooled lesion log-odds]``."""
        score = pool_lesion_map(self.lesion_map(x), self.pooling, self.top_k)
        return torch.stack([torch.zeros_like(score), score], dim=1)
