"""A brain mask from a tissue label map: the brain labels, their largest connected part, holes filled.

The segmentation bundle labels CSF (1), grey matter (2) and white matter (3) inside the brain and
everything else (air, scalp, skull, eyes, neck) 0. :class:`BrainMask` turns that label map into a
0/1 mask usable for skull stripping: voxels with a brain label, reduced to the largest connected
component (stray voxels labelled as tissue outside the brain go) with enclosed holes filled
(``scipy.ndimage``; MONAI's ``KeepLargestConnectedComponent`` needs scikit-image, which the project
does not require). :class:`KeepBrainComponent` cleans the label map itself the same way: tissue
labels outside the largest connected brain component become background.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform, Transform
from monai.utils import convert_to_dst_type

__all__ = ["BrainMask", "BrainMaskd", "KeepBrainComponent", "KeepBrainComponentd"]


def _label_array(img: Any) -> np.ndarray:
    """A channel-first label map ``(1, *spatial)`` as a NumPy array; ``ValueError`` for another shape."""
    if len(img.shape) < 2 or int(img.shape[0]) != 1:
        raise ValueError(f"img must be a channel-first label map (1, *spatial), got shape {tuple(img.shape)}.")
    return img.detach().cpu().numpy() if isinstance(img, torch.Tensor) else np.asarray(img)


class BrainMask(Transform):
    """Label map ``(1, *spatial)`` to a 0/1 brain mask of the same shape, type and metadata.

    Args:
        labels: the labels that make up the brain (``None``: every label > 0).
        largest_component: keep only the largest connected component.
        fill_holes: fill the holes enclosed by the mask (``scipy.ndimage.binary_fill_holes``).
        connectivity: neighbourhood of the components, 1 (faces, the default: thin bridges through
            the skull do not join a blob to the brain) to the number of spatial dimensions (corners).

    Raises:
        ValueError: for invalid arguments.
    """

    def __init__(
        self,
        labels: Sequence[int] | None = None,
        largest_component: bool = True,
        fill_holes: bool = True,
        connectivity: int = 1,
    ) -> None:
        if labels is not None and (isinstance(labels, (str, bytes)) or not len(labels)):
            raise ValueError(f"labels must be a non-empty sequence of label values or None, got {labels!r}.")
        valid_int = not isinstance(connectivity, bool) and isinstance(connectivity, (int, np.integer))
        if not valid_int or not 1 <= connectivity <= 3:
            raise ValueError(f"connectivity must be 1, 2 or 3, got {connectivity!r}.")
        self.labels = None if labels is None else [int(v) for v in labels]
        self.largest_component = bool(largest_component)
        self.fill_holes = bool(fill_holes)
        self.connectivity = int(connectivity)

    def brain_voxels(self, labels: np.ndarray) -> np.ndarray:
        """The voxels carrying a brain label (``labels``, or every label > 0), any shape."""
        lab = np.rint(np.asarray(labels)).astype(np.int64)
        return lab > 0 if self.labels is None else np.isin(lab, self.labels)

    def mask(self, labels: np.ndarray) -> np.ndarray:
        """The boolean brain mask of a label array without channel dimension."""
        from scipy import ndimage

        brain = self.brain_voxels(labels)
        if not brain.any():
            return brain
        structure = ndimage.generate_binary_structure(brain.ndim, min(self.connectivity, brain.ndim))
        if self.largest_component:
            components, n = ndimage.label(brain, structure=structure)
            if n > 1:
                sizes = np.bincount(components.ravel())
                sizes[0] = 0
                brain = components == int(np.argmax(sizes))
        if self.fill_holes:
            brain = ndimage.binary_fill_holes(brain)
        return brain

    def __call__(self, img: Any) -> Any:
        """The 0/1 mask of a channel-first label map ``(1, *spatial)`` (float32, metadata kept).

        Raises:
            ValueError: if ``img`` does not have exactly one channel.
        """
        arr = _label_array(img)
        out = self.mask(arr[0])[None].astype(np.float32)
        return convert_to_dst_type(out, img, dtype=torch.float32 if isinstance(img, torch.Tensor) else np.float32)[0]


class BrainMaskd(MapTransform):
    """Dictionary version of :class:`BrainMask`.

    Args:
        keys: keys of the label maps.
        output_key_postfix: the mask of ``key`` goes to ``f"{key}_{output_key_postfix}"``
            (``None``: replace the label map).
        allow_missing_keys: skip absent keys.
        **kwargs: arguments of :class:`BrainMask`.
    """

    def __init__(
        self,
        keys: KeysCollection,
        output_key_postfix: str | None = "brain_mask",
        allow_missing_keys: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.output_key_postfix = output_key_postfix
        self.masker = BrainMask(**kwargs)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        """Add (or replace by) the brain mask of each label map under ``keys``."""
        d = dict(data)
        for key in self.key_iterator(d):
            out_key = key if self.output_key_postfix is None else f"{key}_{self.output_key_postfix}"
            d[out_key] = self.masker(d[key])
        return d


class KeepBrainComponent(Transform):
    """Label map ``(1, *spatial)``: every brain label outside the largest connected brain component set to 0.

    A network that predicts at full resolution also labels small islands outside the brain (in the
    scalp, the eyes, the neck) as tissue; they add little to the Dice but inflate the brain volume
    and the Hausdorff distance. The brain is the union of ``labels`` (all labels > 0 by default) and
    its largest component is found as in :class:`BrainMask` (no hole filling: holes keep their labels).

    Args:
        labels: the labels that make up the brain (``None``: every label > 0).
        connectivity: neighbourhood of the components (1: faces, the default; up to the number of
            spatial dimensions).

    Raises:
        ValueError: for invalid arguments.
    """

    def __init__(self, labels: Sequence[int] | None = None, connectivity: int = 1) -> None:
        self.masker = BrainMask(labels=labels, largest_component=True, fill_holes=False, connectivity=connectivity)

    def __call__(self, img: Any) -> Any:
        """The label map with the voxels outside the largest brain component set to 0 (same type and metadata).

        Raises:
            ValueError: if ``img`` does not have exactly one channel.
        """
        arr = _label_array(img)
        clear = self.masker.brain_voxels(arr) & ~self.masker.mask(arr[0])[None]
        if isinstance(img, torch.Tensor):  # a MetaTensor keeps its metadata and applied operations
            out = img.clone()
            out[torch.as_tensor(clear, device=img.device)] = 0
            return out
        return np.where(clear, np.zeros((), dtype=arr.dtype), arr)


class KeepBrainComponentd(MapTransform):
    """Dictionary version of :class:`KeepBrainComponent` (the label maps under ``keys`` replaced).

    Args:
        keys: keys of the label maps.
        allow_missing_keys: skip absent keys.
        **kwargs: arguments of :class:`KeepBrainComponent`.
    """

    def __init__(self, keys: KeysCollection, allow_missing_keys: bool = False, **kwargs: Any) -> None:
        super().__init__(keys, allow_missing_keys)
        self.cleaner = KeepBrainComponent(**kwargs)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        """Clean each label map under ``keys``."""
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.cleaner(d[key])
        return d
