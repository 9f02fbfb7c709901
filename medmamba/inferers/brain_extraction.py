"""Brain extraction (skull stripping) by a tissue segmentation network, before another network runs.

A scanner gives a whole head: scalp, fat, skull, eyes, face and neck around the brain. A network
trained on generated heads can still take the real ones' non-brain tissue for disease (the
classification bundle called every real whole head "lesion", ``docs/real-scans.md``), while the same
brains skull-stripped by an independent tool were scored like the lesion-free training subjects.
:class:`BrainExtractor` finds the brain with a tissue segmentation network (the segmentation
bundle's: every voxel whose most likely class is not background, face and neck tissue joined
through the brainstem detached by an opening, the largest connected part, holes filled;
:class:`medmamba.transforms.BrainMask`), and :class:`SkullStrippingInferer` runs another network on
the volume reduced to that brain, normalised over it, as if the scan had come skull-stripped.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from monai.inferers import Inferer
from torch import nn

from medmamba.inferers.brain_normalization import brain_masks_from_logits, fill_outside_brain
from medmamba.transforms.brain_mask import BrainMask
from medmamba.transforms.brain_normalize import BrainNormalize

__all__ = ["BrainExtractor", "SkullStrippingInferer"]


class BrainExtractor:
    """Brain masks of volumes from a tissue segmentation network.

    Args:
        network: a tissue segmentation network (background and tissue classes), eager or TorchScript.
        inferer: how ``network`` runs over a batch of volumes, returning ``(B, K, *spatial)`` logits,
            e.g. the segmentation bundle's :class:`medmamba.inferers.BrainNormalizingInferer`.
        spacing: voxel size in mm of the volumes it is given (needed when ``opening_mm`` > 0).
        opening_mm: radius in mm of the opening that detaches face and neck tissue joined to the
            brain by thin bridges before the largest component is taken
            (:func:`medmamba.transforms.detach_brain`); 0: none.
        closing_mm: radius in mm of a closing applied to the mask last, which fills notches in its
            outline (:func:`medmamba.transforms.close_brain`), e.g. where the network called a bright
            lesion at the brain's edge non-brain tissue; 0 (the default): none.
        background_channel: index of the background class in the network's output; every other
            class counts as brain.
        device: where the network runs (the volumes are moved there; the masks come back on the CPU).

    Attributes:
        last_tissue_logits: the tissue network's logits ``(B, K, *spatial)`` of the last call, as the
            inferer returned them (``None`` before the first), for a caller that reads the tissue the
            brain was found from (:class:`medmamba.inferers.BrightOutlierRule`).

    Raises:
        TypeError: ``network`` or ``inferer`` is not callable.
        ValueError: ``opening_mm`` or ``closing_mm`` > 0 without ``spacing``, a negative radius, or a
            negative ``background_channel``.
    """

    def __init__(
        self,
        network: Callable[..., Any],
        inferer: Callable[..., Any],
        spacing: Sequence[float] | None = None,
        opening_mm: float = 0.0,
        background_channel: int = 0,
        device: str | torch.device = "cpu",
        closing_mm: float = 0.0,
    ) -> None:
        if not callable(network):
            raise TypeError(f"network must be callable, got {type(network).__name__}.")
        if not callable(inferer):
            raise TypeError(f"inferer must be callable, got {type(inferer).__name__}.")
        for name, radius in (("opening_mm", opening_mm), ("closing_mm", closing_mm)):
            if radius and spacing is None:
                raise ValueError(f"{name}={radius!r} needs spacing, the voxel size in mm of the volumes.")
        if isinstance(background_channel, bool) or not isinstance(background_channel, int) or background_channel < 0:
            raise ValueError(f"background_channel must be a non-negative integer, got {background_channel!r}.")
        self.network = network
        self.inferer = inferer
        self.masker = BrainMask(opening_mm=opening_mm, spacing=spacing, closing_mm=closing_mm)
        self.background_channel = background_channel
        self.device = torch.device(device)
        self.last_tissue_logits: torch.Tensor | None = None

    def __call__(self, volumes: torch.Tensor) -> torch.Tensor:
        """Boolean brain masks ``(B, *spatial)`` of volumes ``(B, C, *spatial)``.

        Raises:
            ValueError: the inferer returns no ``(B, K, *spatial)`` logits, or ``background_channel``
                is not one of their channels.
        """
        x = torch.as_tensor(volumes)
        if isinstance(self.network, nn.Module):
            self.network.eval()
        with torch.no_grad():
            logits = self.inferer(x.to(self.device), self.network)
        masks = brain_masks_from_logits(logits, x, self.masker, self.background_channel)
        self.last_tissue_logits = torch.as_tensor(logits)
        return masks

    def white_matter_probability(self, index: int, channel: int) -> np.ndarray:
        """The probability of tissue class ``channel`` (white matter) of volume ``index`` of the last call:
        the softmax of :attr:`last_tissue_logits` over the classes, as a numpy array ``(*spatial)``.

        Args:
            index: the volume's place in the last call's batch.
            channel: the white-matter class of the tissue network.

        Raises:
            ValueError: no call yet, or ``channel`` is not a class of the logits.
        """
        self.check_tissue_channel(channel)
        return torch.softmax(self.last_tissue_logits[index].float(), dim=0)[channel].cpu().numpy()

    def check_tissue_channel(self, channel: int) -> None:
        """Raise ``ValueError`` unless the last call's tissue logits exist and ``channel`` is one of their classes."""
        logits = self.last_tissue_logits
        if logits is None:
            raise ValueError("the brain extractor has not been called: no tissue logits.")
        if not 0 <= channel < logits.shape[1]:
            raise ValueError(f"white_matter_channel {channel} is not a channel of the tissue probabilities ({logits.shape[1]}).")


class SkullStrippingInferer(Inferer):
    """Run a network on volumes reduced to their brain (brain extraction, skull stripping).

    Each volume's brain mask comes from ``extractor``; the volume is clipped and z-scored over the
    brain (:class:`medmamba.transforms.BrainNormalize`) and every voxel outside the brain gets the
    lowest value inside it, which is what the zero background of a skull-stripped scan becomes after
    the clipping. ``inferer(stripped, network)`` then runs as usual.

    Args:
        inferer: the inferer of the network, e.g. :class:`medmamba.inferers.SliceStackInferer`.
        extractor: volumes ``(B, C, *spatial)`` -> boolean brain masks ``(B, *spatial)``, e.g.
            :class:`BrainExtractor` (the segmentation bundle's network:
            :func:`medmamba.apps.brain_extraction.load_brain_extractor`).
        lower, upper: clipping percentiles over the brain (:class:`medmamba.transforms.BrainNormalize`).
        min_voxels: a volume whose brain has fewer voxels goes to ``inferer`` as given (a scan
            without a brain, where there is nothing to strip to).

    Attributes:
        last_brain_voxels: the extracted brain's voxel count of each volume of the last call (empty
            before the first), for a caller that reports the brain the network was run on (e.g. the
            classification bundle's check that a scan holds a whole brain).
        last_brains: the extracted brain masks of the last call (boolean ``(*spatial)``, on the CPU); with
            the extractor's ``last_tissue_logits`` (:class:`BrainExtractor`) what
            :class:`medmamba.inferers.BrightOutlierRule` reads.

    Raises:
        TypeError: ``inferer`` or ``extractor`` is not callable.
        ValueError: invalid percentiles or ``min_voxels``.
    """

    def __init__(
        self,
        inferer: Callable[..., Any],
        extractor: Callable[[torch.Tensor], torch.Tensor],
        lower: float | None = 0.5,
        upper: float | None = None,
        min_voxels: int = 1000,
    ) -> None:
        if not callable(inferer):
            raise TypeError(f"inferer must be callable, got {type(inferer).__name__}.")
        if not callable(extractor):
            raise TypeError(f"extractor must be callable (volumes -> brain masks), got {type(extractor).__name__}.")
        super().__init__()
        self.inferer = inferer
        self.extractor = extractor
        self.normalizer = BrainNormalize(lower=lower, upper=upper, min_voxels=min_voxels)
        self.min_voxels = min_voxels
        self.last_brain_voxels: list[int] = []
        self.last_brains: list[torch.Tensor] = []

    def strip(self, inputs: torch.Tensor) -> torch.Tensor:
        """``inputs`` ``(B, C, *spatial)`` reduced to each volume's brain and normalised over it."""
        masks = torch.as_tensor(self.extractor(inputs)).to(device=inputs.device, dtype=torch.bool)
        if masks.ndim == inputs.ndim and masks.shape[1] == 1:
            masks = masks[:, 0]
        if tuple(masks.shape) != (inputs.shape[0], *inputs.shape[2:]):
            raise ValueError(f"extractor must give masks of shape {(inputs.shape[0], *inputs.shape[2:])} for "
                             f"inputs {tuple(inputs.shape)}, got {tuple(masks.shape)}.")
        self.last_brain_voxels = [int(m.sum()) for m in masks]
        self.last_brains = [m.cpu() for m in masks]
        stripped = torch.as_tensor(inputs).clone()
        for b in range(inputs.shape[0]):
            brain = masks[b]
            if self.last_brain_voxels[b] < self.min_voxels:
                continue
            volume = self.normalizer(stripped[b], brain)
            volume = volume.as_tensor() if hasattr(volume, "as_tensor") else volume
            stripped[b] = fill_outside_brain(volume, brain)
        return stripped

    def __call__(self, inputs: torch.Tensor, network: Any, *args: Any, **kwargs: Any) -> Any:  # type: ignore[override]
        """``inferer(stripped, network)`` of ``inputs`` ``(B, C, *spatial)`` reduced to their brains."""
        return self.inferer(self.strip(inputs), network, *args, **kwargs)
