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

import torch
from monai.data import MetaTensor
from monai.transforms import RandFlipd
from monai.transforms.utils import map_spatial_axes
from monai.utils import ensure_tuple

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
        lazy: as in ``RandFlipd``; a lazy transform takes ``RandFlipd``'s path.
    """

    def _dims(self, ndim: int) -> list[int]:
        """Tensor dimensions of ``spatial_axis`` for a channel-first tensor of ``ndim`` dimensions
        (MONAI's :func:`monai.transforms.utils.map_spatial_axes`, after a range check it leaves out)."""
        axes = self.flipper.spatial_axis
        spatial = ndim - 1
        for a in [] if axes is None else ensure_tuple(axes):
            if not -spatial <= a < spatial:
                raise ValueError(f"spatial_axis {a} is out of range for a tensor with {spatial} spatial dimension(s).")
        return map_spatial_axes(ndim, axes)

    def __call__(self, data: Mapping[Hashable, torch.Tensor], lazy: bool | None = None) -> dict[Hashable, torch.Tensor]:
        """Flip every key's tensor (one draw for all), see the class description."""
        d = dict(data)
        keys = list(self.key_iterator(d))
        if lazy or self.lazy or any(isinstance(d[k], MetaTensor) or not isinstance(d[k], torch.Tensor) for k in keys):
            return super().__call__(d, lazy=lazy)
        self.randomize(None)
        if self._do_transform:
            for key in keys:
                d[key] = torch.flip(d[key], self._dims(d[key].ndim))
        return d
