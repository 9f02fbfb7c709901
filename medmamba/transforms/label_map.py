"""Label map from class probabilities: the arg-max over the channel axis, fast on the CPU.

MONAI's ``AsDiscrete(argmax=True)`` calls ``torch.argmax(x, dim=0)``. On the CPU that reduction over
the leading (outermost) axis runs about eight times slower than ``torch.max(x, dim=0)``, which returns
the same indices (the first maximal one, as ``argmax``): for a 4-class 128×128×115 volume on one
thread, 233–261 ms against 28–31 ms on the development VM (``benchmarks/bench_cpu_traps.py`` prints
both side by side; ``docs/benchmarks.md`` names the machine). The segmentation bundle's evaluation and inference do it once
per case.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import torch
from monai.config import KeysCollection
from monai.config.type_definitions import NdarrayOrTensor
from monai.data import MetaTensor
from monai.transforms import MapTransform, Transform
from monai.utils import convert_to_tensor

__all__ = ["LabelMap", "LabelMapd", "argmax_in", "channel_argmax", "renormalised_channels"]


def channel_argmax(x: torch.Tensor) -> torch.Tensor:
    """Index of the largest channel per voxel, ``(1, *spatial)`` int64, as ``torch.argmax(x, 0, keepdim=True)``.

    Args:
        x: Channel-first scores ``(C, *spatial)`` with ``C >= 1``.

    Returns:
        The first maximal channel's index at every voxel.

    Raises:
        ValueError: If ``x`` has fewer than two dimensions or no channel.
    """
    if x.ndim < 2 or x.shape[0] < 1:
        raise ValueError(f"x must be channel-first scores (C, *spatial) with C >= 1, got shape {tuple(x.shape)}.")
    return torch.max(x, dim=0, keepdim=True).indices


def argmax_in(x: torch.Tensor, channels: Sequence[int]) -> torch.Tensor:
    """Whether each voxel's most probable channel (:func:`channel_argmax`) is one of ``channels``.

    Args:
        x: Channel-first scores ``(C, *spatial)``.
        channels: Channel indices, each in ``[0, C)``.

    Returns:
        Boolean ``(*spatial)``, e.g. the network's brain when ``channels`` are the tissue classes.
    """
    member = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
    member[list(channels)] = True
    return member[channel_argmax(x)[0]]


def renormalised_channels(prob: torch.Tensor, channels: Sequence[int], eps: float = 1e-6) -> torch.Tensor:
    """The probabilities of ``channels`` alone, renormalised to sum to one in every voxel (float32).

    What a voxel's class probabilities become when it is given to those classes (e.g. to the brain
    tissues, its background probability dropped); ``eps`` keeps a voxel whose ``channels`` are all
    zero at equal shares.

    Args:
        prob: Channel-first probabilities ``(C, *spatial)``.
        channels: Channel indices, each in ``[0, C)``.
        eps: Added to every probability before the renormalisation.

    Returns:
        ``(len(channels), *spatial)``.
    """
    share = prob[list(channels)].float() + eps
    return share / share.sum(0, keepdim=True)


class LabelMap(Transform):
    """``AsDiscrete(argmax=True)``: channel-first scores to a one-channel label map (float32, meta data kept).

    Args:
        dtype: Data type of the label map (MONAI's ``AsDiscrete`` default: float32).
    """

    def __init__(self, dtype: torch.dtype = torch.float32) -> None:
        self.dtype = dtype

    def __call__(self, img: NdarrayOrTensor) -> torch.Tensor:
        """The label map of ``img`` ``(C, *spatial)``, shape ``(1, *spatial)``."""
        t = convert_to_tensor(img, track_meta=True)
        labels = channel_argmax(t.as_tensor() if isinstance(t, MetaTensor) else t).to(self.dtype)
        if isinstance(t, MetaTensor):
            return MetaTensor(labels, affine=t.affine, meta=dict(t.meta))
        return labels


class LabelMapd(MapTransform):
    """Dictionary version of :class:`LabelMap`."""

    def __init__(self, keys: KeysCollection, dtype: torch.dtype = torch.float32, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.converter = LabelMap(dtype)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        """Replace each score map under ``keys`` by its label map."""
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.converter(d[key])
        return d
