"""Two-pass inference: the network's own tissue map first, then the volume normalised over its brain.

:class:`medmamba.transforms.MRNormalize` z-scores a volume over its foreground, which in a whole
head holds scalp, fat, muscle and skull beside the brain, so the same brain reaches the network with
other values with its head than skull-stripped. :class:`BrainNormalizingInferer` runs a network that
predicts background and brain tissue over the volume first, takes the brain (every voxel whose most
likely class is not background: the largest connected part, holes filled,
:class:`medmamba.transforms.BrainMask`), re-normalises the volume with the statistics of those
voxels (:class:`medmamba.transforms.BrainNormalize`) and runs the network again on the result. The
network is a tissue segmentation network (``network_kind="segmentation"``: the segmentation
bundle) or a lesion-map classifier (:class:`medmamba.networks.LesionMapClassifier`,
``network_kind="lesion_map"``), whose segmentation network gives the tissue map.

What the last pass sees (``final_input``): the whole head (``"head"``), the brain alone, as skull
stripping by the tissue pass's brain would leave it (``"brain"``), or both (``"head_and_brain"``, the
segmentation bundle's default since 0.8.0): one run on the head, one on the stripped brain, combined by
:func:`combine_head_and_brain`. Inside a flip test-time augmentation (:class:`medmamba.inferers.FlipTTAInferer`
with one axis) the mirror run is the one that sees the brain, so the last pass costs what it did.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from monai.inferers import Inferer
from torch import nn

from medmamba.inferers.flip_tta import FlipTTAInferer
from medmamba.inferers.slice_stack import expected_in_channels
from medmamba.transforms.brain_mask import BrainMask
from medmamba.transforms.brain_normalize import BrainNormalize
from medmamba.transforms.label_map import channel_argmax

__all__ = [
    "FINAL_INPUTS",
    "BrainNormalizingInferer",
    "brain_masks_from_logits",
    "combine_head_and_brain",
    "fill_outside_brain",
    "tissue_network",
]

#: what the last pass of :class:`BrainNormalizingInferer` sees.
FINAL_INPUTS = ("head", "brain", "head_and_brain")


class _MemberMean(nn.Module):
    """Mean of the members' tissue logits (the tissue network of a seed ensemble)."""

    def __init__(self, members: Sequence[nn.Module]) -> None:
        super().__init__()
        self.members = nn.ModuleList(members)
        self.in_channels = expected_in_channels(members[0]) or -1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([m(x) for m in self.members]).mean(0)


def brain_masks_from_logits(
    logits: Any, volumes: torch.Tensor, masker: BrainMask, background_channel: int = 0
) -> torch.Tensor:
    """Boolean brain masks ``(B, *spatial)`` from a tissue network's logits: every voxel whose most
    likely class is not background, cleaned by ``masker`` (opening, largest component, holes filled).

    Args:
        logits: the tissue logits ``(B, K, *spatial)`` of ``volumes``.
        volumes: the volumes ``(B, C, *spatial)`` the logits are of (for the shape check).
        masker: the :class:`medmamba.transforms.BrainMask` that cleans each mask.
        background_channel: index of the background class; every other class counts as brain.

    Returns:
        The masks, on the CPU.

    Raises:
        ValueError: ``logits`` are not ``(B, K, *spatial)`` of the volumes, or ``background_channel``
            is not one of their channels.
    """
    if not isinstance(logits, torch.Tensor) or logits.ndim != volumes.ndim or tuple(logits.shape[2:]) != tuple(volumes.shape[2:]):
        shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise ValueError(f"the tissue network must give logits (B, K, *spatial) for volumes {tuple(volumes.shape)}, got {shape}.")
    if not 0 <= background_channel < logits.shape[1]:
        raise ValueError(f"background_channel {background_channel} is not a channel of the tissue logits ({logits.shape[1]}).")
    masks = []
    for volume_logits in torch.as_tensor(logits):
        not_background = (channel_argmax(volume_logits)[0] != background_channel).cpu().numpy()
        masks.append(torch.from_numpy(masker.mask(not_background)))
    return torch.stack(masks)


def fill_outside_brain(volume: torch.Tensor, brain: torch.Tensor) -> torch.Tensor:
    """Set every voxel of ``volume`` ``(C, *spatial)`` outside ``brain`` ``(*spatial)`` to the brain's lowest
    value, per channel, in place: what the zero background of a skull-stripped scan becomes after a
    normalisation that clips at a low brain percentile (:class:`medmamba.transforms.BrainNormalize`).

    Returns:
        ``volume``.
    """
    for c in range(volume.shape[0]):
        volume[c][~brain] = volume[c][brain].min()
    return volume


def combine_head_and_brain(
    head_logits: torch.Tensor, brain_logits: torch.Tensor, brains: torch.Tensor, background_channel: int = 0
) -> torch.Tensor:
    """Combine a tissue network's run on a whole head with its run on the same brain stripped.

    Outside the brain the two runs' class probabilities are averaged: the stripped run sees nothing
    there and calls it background, so a rim of CSF and dura that the head's run calls brain beyond the
    tissue pass's brain counts half. Inside the brain the head's run keeps its background probability
    (a stripped run cannot find brain where the fill value of the stripping looks like background, as in a
    dark corner of a strong bias field) and the division of the rest among the tissues is the mean of
    the two runs' divisions (the brain seen without the scalp and neck around it).

    Args:
        head_logits: ``(B, K, *spatial)`` logits (or log-probabilities) of the run on the whole head.
        brain_logits: the same of the run on the stripped brain.
        brains: ``(B, *spatial)`` boolean masks of the brain the stripping kept.
        background_channel: index of the background class.

    Returns:
        ``(B, K, *spatial)`` log-probabilities (float32): a softmax gives the combined probabilities.

    Raises:
        ValueError: the shapes do not match, or ``background_channel`` is not a channel.
    """
    head, brain = torch.as_tensor(head_logits), torch.as_tensor(brain_logits)
    if head.shape != brain.shape or head.ndim < 3 or tuple(brains.shape) != (head.shape[0], *head.shape[2:]):
        raise ValueError(f"head_logits and brain_logits must be (B, K, *spatial) of one shape and brains (B, *spatial), "
                         f"got {tuple(head.shape)}, {tuple(brain.shape)} and {tuple(brains.shape)}.")
    if not 0 <= background_channel < head.shape[1]:
        raise ValueError(f"background_channel {background_channel} is not a channel of the logits ({head.shape[1]}).")
    p_head, p_brain = torch.softmax(head.float(), dim=1), torch.softmax(brain.float(), dim=1)
    tissue = [k for k in range(head.shape[1]) if k != background_channel]

    def division(p: torch.Tensor) -> torch.Tensor:
        """How each voxel's non-background probability divides among the tissue classes."""
        t = p[:, tissue]
        return t / t.sum(dim=1, keepdim=True).clamp_min(1e-12)

    background = p_head[:, background_channel : background_channel + 1]
    inside = torch.empty_like(p_head)
    inside[:, tissue] = (division(p_head) + division(p_brain)) / 2 * (1 - background)
    inside[:, background_channel : background_channel + 1] = background
    combined = torch.where(brains.to(device=head.device, dtype=torch.bool)[:, None], inside, (p_head + p_brain) / 2)
    return torch.log(combined.clamp_min(1e-12))


def tissue_network(network: Any) -> Any:
    """The segmentation network under a lesion-map classifier (its dense background/tissue/lesion logits).

    Unwraps ``DataParallel``-style ``.module``, :class:`medmamba.networks.FuseOnLoad` (``.network``),
    seed ensembles (``.networks``: the mean of the members' logits) and eager or TorchScript
    :class:`medmamba.networks.LesionMapClassifier` (``.network``).

    Raises:
        TypeError: ``network`` holds no lesion-map classifier.
    """
    net = network
    for _ in range(16):
        if hasattr(net, "lesion_channel") and hasattr(net, "network"):
            return net.network
        members = getattr(net, "networks", None)
        if members is not None:
            return _MemberMean([tissue_network(m) for m in members])
        if hasattr(net, "module"):
            net = net.module
        elif hasattr(net, "is_fused") and hasattr(net, "network"):
            net = net.network
        else:
            break
    raise TypeError(
        f"network must be a lesion-map classifier (a module with 'lesion_channel' and 'network', possibly "
        f"fused, wrapped or an ensemble of them), got {type(network).__name__}."
    )


class BrainNormalizingInferer(Inferer):
    """Run a network on volumes normalised over the brain that the network's own tissue map finds.

    Args:
        inferer: the inferer of every pass, e.g. :class:`medmamba.inferers.SliceStackInferer` or
            :class:`medmamba.inferers.FlipTTAInferer` (it must return ``(B, K, *spatial)`` logits
            for the tissue network).
        background_channel: index of the background class in the tissue network's output; every
            other class (tissues and lesion) counts as brain.
        lower, upper: clipping percentiles over the brain (:class:`medmamba.transforms.BrainNormalize`).
        min_voxels: with fewer brain voxels the volume goes to the last pass as given (its own
            normalisation; e.g. a scan without brain).
        tissue_passes: tissue passes before the final one: with 1, the brain found on the given
            volume gives the statistics; with 2, the brain found on that re-normalised volume gives
            them (the tissue network then sees brain-normalised input); 0 switches the brain
            normalisation off (the volume goes to ``inferer`` as given).
        network_kind: ``"segmentation"``: the network itself predicts background and tissue (a
            tissue segmentation network, whose last pass is the returned segmentation; the
            segmentation bundle since 0.6.8); ``"lesion_map"``: the network is a lesion-map
            classifier and the tissue comes from its segmentation network (:func:`tissue_network`;
            tried for the classification bundle, not adopted, ``docs/real-scans.md``).
        opening_mm: radius in mm of the opening that detaches face and neck tissue joined to the
            brain through the brainstem before the largest component is taken
            (:func:`medmamba.transforms.detach_brain`); 0 (the default): none.
        spacing: voxel size in mm of the volumes the network sees (needed when ``opening_mm`` > 0;
            the bundle's ``pixdim``).
        tissue_inferer: the inferer of the tissue passes, whose most likely class per voxel only gives
            the brain mask (e.g. the single slice-stack pass inside ``inferer``'s flip TTA); ``None``
            (the default): ``inferer``, as for the final pass.
        final_input: what the final pass sees (:data:`FINAL_INPUTS`): ``"head"`` the volume as
            normalised; ``"brain"`` the brain alone (skull stripping by the last tissue pass's brain:
            every voxel outside it gets the brain's lowest normalised value, which is what the zero
            background of a skull-stripped scan becomes after the clipping, as
            :class:`medmamba.inferers.SkullStrippingInferer` strips); ``"head_and_brain"`` one run on
            each, combined by :func:`combine_head_and_brain` (needs ``network_kind="segmentation"``).
            With a :class:`medmamba.inferers.FlipTTAInferer` of one axis as ``inferer``, its plain run
            sees the head and its mirror run the brain: no run is added. ``"brain"`` needs
            ``tissue_passes`` >= 1; without a tissue pass (or with a brain of fewer than
            ``min_voxels`` voxels) there is no brain to strip and ``"head_and_brain"`` runs as
            ``"head"`` (the whole flip TTA on the head). Measured in ``docs/real-scans.md`` (twenty-third
            and twenty-fifth sessions).
        strip_to_brain: ``True`` is ``final_input="brain"`` (the segmentation bundle's option since
            0.7.3, ``strip_to_brain``); ``False`` leaves ``final_input`` as it is.

    Raises:
        TypeError: ``inferer`` is not callable.
        ValueError: ``tissue_passes`` is not a non-negative integer, an unknown ``network_kind`` or
            ``final_input``, or a ``final_input`` the other arguments do not allow.
    """

    def __init__(
        self,
        inferer: Callable[..., Any],
        background_channel: int = 0,
        lower: float | None = 0.5,
        upper: float | None = None,
        min_voxels: int = 1000,
        tissue_passes: int = 1,
        network_kind: str = "segmentation",
        opening_mm: float = 0.0,
        spacing: Sequence[float] | None = None,
        tissue_inferer: Callable[..., Any] | None = None,
        strip_to_brain: bool = False,
        final_input: str = "head",
    ) -> None:
        if network_kind not in ("lesion_map", "segmentation"):
            raise ValueError(f"network_kind must be 'lesion_map' or 'segmentation', got {network_kind!r}.")
        self.network_kind = network_kind
        if not callable(inferer):
            raise TypeError(f"inferer must be callable, got {type(inferer).__name__}.")
        if isinstance(tissue_passes, bool) or not isinstance(tissue_passes, int) or tissue_passes < 0:
            raise ValueError(f"tissue_passes must be a non-negative integer, got {tissue_passes!r}.")
        self.tissue_passes = tissue_passes
        if not isinstance(strip_to_brain, bool):
            raise TypeError(f"strip_to_brain must be a bool, got {type(strip_to_brain).__name__} ({strip_to_brain!r}).")
        if final_input not in FINAL_INPUTS:
            raise ValueError(f"final_input must be one of {FINAL_INPUTS}, got {final_input!r}.")
        if strip_to_brain:
            final_input = "brain"
        if final_input == "brain" and tissue_passes == 0:
            what = "strip_to_brain=True" if strip_to_brain else f"final_input={final_input!r}"
            raise ValueError(f"{what} needs a tissue pass to find the brain; got tissue_passes=0.")
        if final_input == "head_and_brain" and network_kind != "segmentation":
            raise ValueError(f"final_input='head_and_brain' combines tissue segmentations; got network_kind={network_kind!r}.")
        self.final_input = final_input
        if tissue_inferer is not None and not callable(tissue_inferer):
            raise TypeError(f"tissue_inferer must be callable or None, got {type(tissue_inferer).__name__}.")
        super().__init__()
        self.inferer = inferer
        self.tissue_inferer = inferer if tissue_inferer is None else tissue_inferer
        self.background_channel = int(background_channel)
        if opening_mm and spacing is None:
            raise ValueError(f"opening_mm={opening_mm!r} needs spacing, the voxel size in mm of the network's input.")
        self.masker = BrainMask(opening_mm=opening_mm, spacing=spacing)
        self.normalizer = BrainNormalize(lower=lower, upper=upper, min_voxels=min_voxels)

    def brain_masks(self, inputs: torch.Tensor, network: Any) -> torch.Tensor:
        """Boolean brain masks ``(B, *spatial)`` from the tissue network's most likely class per voxel."""
        logits = self.tissue_inferer(inputs, tissue_network(network) if self.network_kind == "lesion_map" else network)
        return brain_masks_from_logits(logits, inputs, self.masker, self.background_channel)

    def __call__(self, inputs: torch.Tensor, network: Any, *args: Any, **kwargs: Any) -> Any:  # type: ignore[override]
        """``inferer(volumes, network)`` of ``inputs`` ``(B, C, *spatial)`` normalised over each volume's brain."""
        normalised = inputs
        for _ in range(self.tissue_passes):
            masks = self.brain_masks(normalised, network)
            normalised = inputs.clone()
            for b in range(inputs.shape[0]):
                volume = self.normalizer(inputs[b], masks[b])
                normalised[b] = volume.as_tensor() if hasattr(volume, "as_tensor") else volume
        if self.final_input == "brain":
            normalised = self.stripped(normalised, masks)
        elif self.final_input == "head_and_brain" and self.tissue_passes:
            return self.head_and_brain(normalised, masks, network, *args, **kwargs)
        return self.inferer(normalised, network, *args, **kwargs)

    @property
    def strip_to_brain(self) -> bool:
        """Whether the final pass sees the brain alone (``final_input == "brain"``)."""
        return self.final_input == "brain"

    def head_and_brain(self, volumes: torch.Tensor, masks: torch.Tensor, network: Any, *args: Any, **kwargs: Any) -> torch.Tensor:
        """The final pass of ``final_input="head_and_brain"``: ``volumes`` ``(B, C, *spatial)`` as given and
        stripped to ``masks`` ``(B, *spatial)``, combined by :func:`combine_head_and_brain`. A flip TTA of one
        axis runs its plain run on the head and its mirror run on the brain."""
        kept = self.kept_brains(masks)
        brains = self._fill_outside(volumes, kept)
        tta = self.inferer
        if isinstance(tta, FlipTTAInferer) and len(tta.spatial_axes) == 1:
            head, brain = tta.runs(volumes, network, *args, mirror_inputs=brains, **kwargs)
        else:
            head = self.inferer(volumes, network, *args, **kwargs)
            brain = self.inferer(brains, network, *args, **kwargs)
        return combine_head_and_brain(head, brain, kept, self.background_channel)

    def kept_brains(self, masks: torch.Tensor) -> torch.Tensor:
        """Boolean ``masks`` ``(B, *spatial)``, those with fewer than ``min_voxels`` voxels emptied: the brains
        a volume is stripped to (one with too little brain stays as given)."""
        return torch.stack([m.to(torch.bool) if int(m.sum()) >= self.normalizer.min_voxels else torch.zeros_like(m, dtype=torch.bool)
                            for m in masks])

    def stripped(self, volumes: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        """``volumes`` ``(B, C, *spatial)`` with every voxel outside each brain mask ``(B, *spatial)`` set to the
        brain's lowest value per channel; a volume whose brain has fewer than ``min_voxels`` voxels stays as given."""
        return self._fill_outside(volumes, self.kept_brains(masks))

    @staticmethod
    def _fill_outside(volumes: torch.Tensor, kept: torch.Tensor) -> torch.Tensor:
        """A copy of ``volumes`` with every voxel outside each of the :meth:`kept_brains` ``kept`` set to
        that brain's lowest value per channel (an empty mask leaves its volume as given)."""
        out = torch.as_tensor(volumes).clone()
        for b, brain in enumerate(kept):
            if brain.any():
                fill_outside_brain(out[b], brain.to(out.device))
        return out
