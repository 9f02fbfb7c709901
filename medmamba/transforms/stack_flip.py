"""Random flips of 2.5D training slice stacks without MONAI's meta-data path.

MONAI's :class:`monai.transforms.RandFlipd` turns every input into a ``MetaTensor`` (under MONAI's
global ``track_meta``), computes the flip's affine and records the transform for inversion: about a
millisecond per call on a ``(5, 128, 128)`` slice stack, where ``torch.flip`` takes tens of
microseconds, and the transforms after it then run MONAI's ``MetaTensor`` bookkeeping as well. The
training pipelines flip 16 (segmentation) or 32 (classification, twice) stacks per batch, none of
which is ever inverted.
:class:`RandStackFlipd` makes the same random draw as ``RandFlipd`` and the same flip, and keeps a plain
tensor plain; a ``MetaTensor`` input takes ``RandFlipd``'s own path (meta data, inversion).
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from typing import Any

import torch
from monai.data import MetaTensor
from monai.transforms import RandFlipd
from monai.utils import convert_to_tensor

__all__ = ["RandStackFlipd"]


class RandStackFlipd(RandFlipd):
    """Flip plain-tensor slice stacks along spatial axes with probability ``prob``; ``RandFlipd`` otherwise.

    A drop-in for :class:`monai.transforms.RandFlipd` in training pipelines whose samples are plain
    tensors (after ``EnsureTyped(track_meta=False)``): one draw per call, as ``RandFlipd`` makes it
    (so a pipeline seeded alike gives the same samples, value for value), the flip of every key by
    ``torch.flip`` over the channel-first tensor's spatial axes, and the outputs left plain tensors.
    Inputs that are ``MetaTensor`` (or a call with ``lazy``) go through ``RandFlipd`` unchanged, meta
    data and inversion included.

    Args:
        keys: keys of the channel-first tensors to flip together.
        prob: probability of flipping.
        spatial_axis: spatial axis or axes to flip along (``None``: all of them), as in ``RandFlipd``.
        allow_missing_keys: don't raise an exception if a key is missing.
    """

    def __init__(
        self,
        keys: Any,
        prob: float = 0.1,
        spatial_axis: int | tuple[int, ...] | list[int] | None = None,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, prob=prob, spatial_axis=spatial_axis, allow_missing_keys=allow_missing_keys)

    def _dims(self, ndim: int) -> list[int]:
        """Tensor dimensions of ``spatial_axis`` for a channel-first tensor of ``ndim`` dimensions."""
        spatial = ndim - 1
        axes = self.flipper.spatial_axis
        if axes is None:
            return list(range(1, ndim))
        axes = [axes] if isinstance(axes, int) else list(axes)
        out = []
        for a in axes:
            if not -spatial <= a < spatial:
                raise ValueError(f"spatial_axis {a} is out of range for a tensor with {spatial} spatial dimension(s).")
            out.append(a % spatial + 1)
        return out

    def __call__(self, data: Mapping[Hashable, torch.Tensor], lazy: bool | None = None) -> dict[Hashable, torch.Tensor]:
        """Flip every key's tensor (one draw for all), see the class description."""
        d = dict(data)
        keys = list(self.key_iterator(d))
        if lazy or self.lazy or any(isinstance(d[k], MetaTensor) or not isinstance(d[k], torch.Tensor) for k in keys):
            return super().__call__(d, lazy=lazy)
        self.randomize(None)
        for key in keys:
            x = convert_to_tensor(d[key], track_meta=False)
            d[key] = torch.flip(x, self._dims(x.ndim)) if self._do_transform else x
        return d
