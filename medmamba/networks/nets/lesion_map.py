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

__all__ = [
    "LesionMapClassifier",
    "brain_readout_mask",
    "check_pooling",
    "check_readout",
    "declared_in_channels",
    "lesion_log_odds_map",
    "pool_lesion_map",
]

_POOLINGS = ("max", "topk", "mean")
_READOUTS = ("image", "brain")
#: Lesion log-odds given to the pixels a ``"brain"`` read-out leaves out (``sigmoid`` of it is 0).
OUTSIDE_READOUT_LOG_ODDS = -1.0e4


def check_readout(readout: str, background_channel: int) -> None:
    """Validate a lesion-map read-out region (see :class:`LesionMapClassifier`).

    Raises:
        ValueError: ``readout`` is not ``"image"`` or ``"brain"``, or ``background_channel`` is not an int.
    """
    if readout not in _READOUTS:
        raise ValueError(f"readout={readout!r} is not valid; expected one of {_READOUTS}.")
    if isinstance(background_channel, bool) or not isinstance(background_channel, int):
        raise ValueError(f"background_channel={background_channel!r} is not valid; expected an integer channel index.")


def brain_readout_mask(logits: torch.Tensor, lesion_channel: int = -1, background_channel: int = 0) -> torch.Tensor:
    """Pixels whose strongest class other than the lesion is a tissue class, not the background.

    The dense lesion classifier predicts tissue classes beside the lesion; a pixel whose
    non-lesion prediction is background (air, scalp, skull, neck) cannot hold a brain lesion.

    Args:
        logits: ``(B, C, *spatial)`` logits with ``C >= 3`` (background, at least one tissue, lesion).
        lesion_channel: index of the lesion class (negative counts from the end).
        background_channel: index of the background class (negative counts from the end).

    Returns:
        ``(B, *spatial)`` boolean mask.

    Raises:
        ValueError: fewer than three channels, or the lesion and background channels are the same.
    """
    channels = logits.shape[1]
    if channels < 3:
        raise ValueError(
            f"a 'brain' read-out needs background, tissue and lesion channels; the network returned {channels}."
        )
    lesion = lesion_channel % channels
    background = background_channel % channels
    if lesion == background:
        raise ValueError(f"lesion_channel and background_channel name the same channel ({lesion}).")
    tissue_max = torch.full_like(logits[:, 0], float("-inf"))
    for c in range(channels):
        if c != lesion and c != background:
            tissue_max = torch.maximum(tissue_max, logits[:, c])
    return tissue_max > logits[:, background]


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
        readout: where the lesion map is pooled: ``"image"`` (every pixel) or ``"brain"`` (only the
            pixels whose strongest non-lesion class is a tissue class, :func:`brain_readout_mask`;
            the others get :data:`OUTSIDE_READOUT_LOG_ODDS`). Needs a network that also predicts
            background and tissue classes.
        background_channel: index of the background class, for ``readout="brain"``.

    Raises:
        TypeError: ``network`` is not an ``nn.Module``.
        ValueError: unknown ``pooling`` or ``readout``, ``top_k < 1``, or an output with fewer than
            two channels (three for ``readout="brain"``; at call time).

    Example::

        seg = MobileMambaSeg("t2", in_channels=3, out_channels=5)   # background, 3 tissues, lesion
        clf = LesionMapClassifier(seg, lesion_channel=-1)
        logits = clf(torch.randn(4, 3, 128, 128))                  # (4, 2)
    """

    def __init__(
        self,
        network: nn.Module,
        lesion_channel: int = -1,
        pooling: str = "max",
        top_k: int = 16,
        readout: str = "image",
        background_channel: int = 0,
    ) -> None:
        super().__init__()
        if not isinstance(network, nn.Module):
            raise TypeError(f"network must be an nn.Module, got {type(network).__name__}.")
        check_pooling(pooling, top_k)
        check_readout(readout, background_channel)
        self.readout = readout
        self.background_channel = int(background_channel)
        self.outside_log_odds: float = OUTSIDE_READOUT_LOG_ODDS
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
        z = lesion_log_odds_map(out, self.lesion_channel)
        if self.readout == "brain":
            inside = brain_readout_mask(out, self.lesion_channel, self.background_channel)
            z = torch.where(inside, z, torch.full_like(z, self.outside_log_odds))
        return z

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Slice logits ``(B, 2)``: ``[0, pooled lesion log-odds]``."""
        score = pool_lesion_map(self.lesion_map(x), self.pooling, self.top_k)
        return torch.stack([torch.zeros_like(score), score], dim=1)
