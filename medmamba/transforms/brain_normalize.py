"""Brain-tissue intensity normalisation: clip and z-score with statistics of the brain only.

:class:`MRNormalize` takes its statistics over the image's foreground, which in a whole head holds
scalp, fat, muscle and skull as well as the brain: the same brain gets other values with its head
than skull-stripped (on FSL's MNI152 template about 1.5-1.8 times the contrast without the head,
``docs/real-scans.md``). :class:`BrainNormalize` re-normalises an image with the statistics of its
brain voxels alone (percentile clip, then z-score), so that a whole head and the same brain
skull-stripped give the brain the same values. The brain mask comes from a label map: in training
the true tissue labels, at inference the network's own tissue prediction
(:class:`medmamba.inferers.BrainNormalizingInferer`).
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import torch
from monai.config import KeysCollection
from monai.config.type_definitions import NdarrayOrTensor
from monai.transforms import MapTransform, Transform
from monai.utils import convert_to_numpy, convert_to_tensor

from medmamba.transforms.brain_mask import BrainMask
from medmamba.transforms.mr_normalize import MRNormalize

__all__ = ["BrainNormalize", "BrainNormalized"]


class BrainNormalize(Transform):
    """Clip to brain percentiles, then z-score over the brain, per channel.

    Args:
        lower: lower clipping percentile (0-100) over the brain voxels; ``None``: no lower clip.
        upper: upper clipping percentile over the brain voxels; ``None``: no upper clip.
        labels: the label values that make up the brain (``None``: every label > 0).
        min_voxels: below this many brain voxels the image is returned unchanged (a scan without
            brain keeps its own normalisation; a handful of voxels gives no usable statistics).

    Raises:
        ValueError: invalid percentiles, ``labels`` or ``min_voxels``.
    """

    def __init__(
        self,
        lower: float | None = 0.5,
        upper: float | None = None,
        labels: Sequence[int] | None = None,
        min_voxels: int = 1000,
    ) -> None:
        if isinstance(min_voxels, bool) or not isinstance(min_voxels, int) or min_voxels < 1:
            raise ValueError(f"min_voxels must be a positive integer, got {min_voxels!r}.")
        self.normalizer = MRNormalize(lower=lower, upper=upper)
        # the brain voxels are BrainMask's (its label check and selection), without its clean-up
        self.selector = BrainMask(labels=labels, largest_component=False, fill_holes=False)
        self.min_voxels = min_voxels

    def brain(self, label: NdarrayOrTensor) -> torch.Tensor:
        """Boolean brain voxels of a label map (any shape): :meth:`BrainMask.brain_voxels`."""
        return torch.from_numpy(self.selector.brain_voxels(convert_to_numpy(label)))

    def __call__(self, img: NdarrayOrTensor, label: NdarrayOrTensor) -> torch.Tensor:
        """Normalise ``img`` (channel-first) over the brain voxels of ``label``.

        Args:
            img: channel-first image ``(C, *spatial)``.
            label: label map of the same spatial shape, ``(1, *spatial)`` or ``(*spatial)``.

        Returns:
            The normalised image (metadata kept); ``img`` as a float tensor if the brain holds fewer
            than ``min_voxels`` voxels.

        Raises:
            ValueError: ``label``'s spatial shape differs from ``img``'s.
        """
        t = convert_to_tensor(img, track_meta=True, dtype=torch.float32)
        brain = self.brain(label)
        if brain.ndim == t.ndim and brain.shape[0] == 1:
            brain = brain[0]
        if tuple(brain.shape) != tuple(t.shape[1:]):
            raise ValueError(
                f"label must have the image's spatial shape {tuple(t.shape[1:])} (with or without a leading "
                f"channel of 1), got {tuple(torch.as_tensor(label).shape)}."
            )
        if int(brain.sum()) < self.min_voxels:
            return t
        brain = brain.to(t.device)
        out = t.clone()
        for c in range(t.shape[0]):
            x = t[c].as_tensor() if hasattr(t[c], "as_tensor") else t[c]
            out[c] = self.normalizer(x[None], statistics=[self.normalizer.statistics(x, brain)])[0]
        return out


class BrainNormalized(MapTransform):
    """Dictionary version of :class:`BrainNormalize`: the images under ``keys``, the brain from ``label_key``.

    Args:
        keys: keys of the images to normalise.
        label_key: key of the label map whose brain labels give the statistics (in training the
            tissue labels: CSF, grey and white matter; lesions inside them count as brain).
        allow_missing_keys: skip absent keys.
        **kwargs: arguments of :class:`BrainNormalize`.
    """

    def __init__(self, keys: KeysCollection, label_key: str = "label", allow_missing_keys: bool = False, **kwargs: Any) -> None:
        super().__init__(keys, allow_missing_keys)
        self.label_key = label_key
        self.normalizer = BrainNormalize(**kwargs)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        """Normalise each image under ``keys`` over the brain of ``data[label_key]``."""
        d = dict(data)
        if self.label_key not in d:
            raise ValueError(f"label_key {self.label_key!r} is not in the data (keys: {sorted(map(str, d))}).")
        for key in self.key_iterator(d):
            d[key] = self.normalizer(d[key], d[self.label_key])
        return d
