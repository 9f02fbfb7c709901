"""Contrast polarity: run a T1-trained network on a T2-like (inverted) scan as on a T1 scan.

The bundles' networks are trained on T1-weighted contrast (white matter bright, CSF dark), with a
small share of random contrasts; on an inverted, T2-like contrast (CSF bright, white matter dark)
their tissue map fails (segmentation mean Dice about 0.1 on the shift suite). Inverting such a scan's
intensities inside the head gives the tissue order of a T1 scan, which the network segments (0.88 on
the same cases; ``docs/real-scans.md``). Which polarity a scan has is decided from the scan itself,
by the network: :class:`ContrastPolarityInferer` runs a tissue network on the normalised volume as
given and inverted (:func:`invert_contrast`), measures how well each tissue map explains that
volume's intensities (:func:`tissue_map_fit`: the share of the intensity variance inside the brain
that the tissue classes explain, and the network's mean confidence there) and inverts when the
inverted volume's map explains at least as much and is clearly more confident
(:func:`prefers_inverted`). On T1 scans the volume goes on exactly as given.

The pass over the volume as given is one the bundle runs anyway (a slice-stack inferer with
``reuse_last_pass`` computes it once); the inverted pass is the probe's own cost. With
``probe_slice_step`` ``s > 1`` the inverted volume is run on every ``s``-th slice stack only
(:meth:`medmamba.inferers.SliceStackInferer.run_slices`) and both fits are measured on those slices:
a systematic sample of the brain's voxels for two whole-brain averages.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from monai.inferers import Inferer
from scipy import ndimage

from medmamba.inferers.chain import find_inferer
from medmamba.inferers.slice_stack import SliceStackInferer

__all__ = [
    "POLARITIES",
    "ContrastPolarityInferer",
    "TissueMapFit",
    "analysed_polarity",
    "invert_contrast",
    "prefers_inverted",
    "probe_slices",
    "tissue_map_fit",
]

logger = logging.getLogger(__name__)

#: what :class:`ContrastPolarityInferer` does with each volume.
POLARITIES = ("auto", "given", "inverted")


def invert_contrast(volume: torch.Tensor) -> torch.Tensor:
    """A normalised volume with its intensities mirrored inside the head.

    Per channel, the head is every voxel above the channel's minimum (the clipped background of a
    normalised volume, :class:`medmamba.transforms.MRNormalize`), closed by two voxels and with its
    holes filled (dark voxels inside the head, e.g. CSF at the clip floor, belong to it); its voxels
    become ``-x`` (a z-scored head stays z-scored) and every other voxel the new minimum, so the
    background stays the darkest value, as in the training data.

    Args:
        volume: ``(C, *spatial)`` normalised volume (2 or 3 spatial dimensions).

    Returns:
        The inverted volume, float32, same shape, on the input's device.

    Raises:
        ValueError: ``volume`` is not ``(C, *spatial)`` with 2 or 3 spatial dimensions.
    """
    x = torch.as_tensor(volume)
    if x.ndim not in (3, 4):
        raise ValueError(f"volume must be (C, *spatial) with 2 or 3 spatial dimensions, got shape {tuple(x.shape)}.")
    out = torch.empty(x.shape, dtype=torch.float32)
    for c, channel in enumerate(x.detach().float().cpu().numpy()):
        head = channel > channel.min()
        if not head.any():  # a constant channel: nothing to invert
            out[c] = torch.from_numpy(channel)
            continue
        head = ndimage.binary_fill_holes(ndimage.binary_closing(head, iterations=2) | head)
        inverted = np.where(head, -channel, 0.0).astype(np.float32)
        inverted[~head] = inverted[head].min()
        out[c] = torch.from_numpy(inverted)
    return out.to(x.device)


@dataclass(frozen=True)
class TissueMapFit:
    """How well a tissue map fits the volume it was predicted from.

    Attributes:
        explained: share of the intensity variance over the brain (voxels not classed background)
            that the tissue classes explain (``1 - within-class / total``, first channel); 0 for a
            brain of fewer than two voxels.
        confidence: mean largest softmax probability over the brain (0 without brain).
        brain_voxels: voxels not classed background.
    """

    explained: float
    confidence: float
    brain_voxels: int


def tissue_map_fit(volume: torch.Tensor, logits: torch.Tensor, background_channel: int = 0) -> TissueMapFit:
    """The :class:`TissueMapFit` of one volume's tissue logits.

    Args:
        volume: ``(C, *spatial)`` the volume the logits were predicted from (channel 0 is measured).
        logits: ``(K, *spatial)`` tissue logits of it (background and tissue classes).
        background_channel: the background class; every other class is a tissue of the brain.

    Returns:
        The fit.

    Raises:
        ValueError: the shapes do not match, or ``background_channel`` is not a channel of ``logits``.
    """
    x = torch.as_tensor(volume).detach().float().cpu()
    z = torch.as_tensor(logits).detach().float().cpu()
    if x.ndim < 2 or z.ndim != x.ndim or tuple(z.shape[1:]) != tuple(x.shape[1:]):
        raise ValueError(f"logits must be (K, *spatial) of the volume {tuple(x.shape)}, got {tuple(z.shape)}.")
    if not 0 <= background_channel < z.shape[0]:
        raise ValueError(f"background_channel {background_channel} is not a channel of the logits ({z.shape[0]}).")
    probs = torch.softmax(z, dim=0)
    confidence, classes = probs.max(dim=0)
    brain = classes != background_channel
    n = int(brain.sum())
    if n < 2:
        return TissueMapFit(explained=0.0, confidence=float(confidence[brain].mean()) if n else 0.0, brain_voxels=n)
    values = x[0][brain].double()
    labels = classes[brain]
    total = float(((values - values.mean()) ** 2).sum())
    within = 0.0
    for k in labels.unique():
        v = values[labels == k]
        within += float(((v - v.mean()) ** 2).sum())
    explained = 1.0 - within / total if total > 0 else 0.0
    return TissueMapFit(explained=explained, confidence=float(confidence[brain].mean()), brain_voxels=n)


def probe_slices(num_slices: int, step: int) -> list[int]:
    """Every ``step``-th of ``num_slices`` slices, the sample centred in the volume (``step // 2``
    from the first slice where the volume is long enough; ``range(num_slices)`` for ``step`` 1).

    Args:
        num_slices: slices along the probed axis (at least 1).
        step: distance between the probed slices (at least 1).

    Returns:
        The slice indices, ascending, at least one.

    Raises:
        ValueError: ``num_slices`` or ``step`` is not a positive int.
    """
    for name, value in (("num_slices", num_slices), ("step", step)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}.")
    first = min(step // 2, (num_slices - 1) // 2)
    return list(range(first, num_slices, step))


def prefers_inverted(given: TissueMapFit, inverted: TissueMapFit, min_explained_gain: float = 0.0,
                     min_confidence_gain: float = 0.05) -> bool:
    """Whether the inverted volume's tissue map is the better: it explains at least ``min_explained_gain``
    more of the intensity variance and is at least ``min_confidence_gain`` more confident.

    On the validation sets (``docs/real-scans.md``), T2-like heads gained 0.10-0.46 explained variance
    and 0.09-0.15 confidence; T1 heads with a strong bias field and noise gained up to 0.30 explained
    variance but at most 0.02 confidence, and real heads with a strong bias field up to 0.06 confidence
    while explaining 0.18-0.44 less: each criterion alone misjudges one of them.
    """
    return (inverted.explained - given.explained >= min_explained_gain
            and inverted.confidence - given.confidence >= min_confidence_gain)


class ContrastPolarityInferer(Inferer):
    """Run an inferer on each volume as given or with its contrast inverted, as the tissue map prefers.

    With ``polarity="auto"`` every volume of the batch is run through ``probe_inferer`` with the
    tissue network, as given and inverted (:func:`invert_contrast`); when the inverted one's tissue
    map fits better (:func:`prefers_inverted`), the volume goes on inverted and a warning is logged
    (the fits of a volume left as given are logged at the info level). ``"given"`` passes every volume on unchanged (no probe), ``"inverted"`` inverts every
    one. Tissue refinement on the scan's own intensities downstream assumes no contrast, so only the
    network's input is inverted.

    Args:
        inferer: what runs on the chosen volumes, e.g. :class:`medmamba.inferers.BrainNormalizingInferer`.
        probe_inferer: how the tissue network runs on the two candidates (e.g. a
            :class:`medmamba.inferers.SliceStackInferer`); ``None``: ``inferer``.
        probe_network: the tissue network (background and tissue classes); ``None``: the network the
            inferer is called with (a tissue segmentation network).
        polarity: one of :data:`POLARITIES`.
        background_channel: the tissue network's background class.
        min_explained_gain, min_confidence_gain: the margins of :func:`prefers_inverted`.
        probe_slice_step: run the inverted volume on every ``probe_slice_step``-th slice stack only
            (:func:`probe_slices`) and measure both fits on those slices; needs a
            :class:`medmamba.inferers.SliceStackInferer` as the probe inferer. 1: every slice.

    Attributes:
        last_polarities: per volume of the last call, the polarity it was analysed in, ``"given"`` or
            ``"inverted"`` (empty before the first call); the bundles report it per case
            (:func:`analysed_polarity`).

    Raises:
        TypeError: ``inferer`` or ``probe_inferer`` is not callable, or ``probe_slice_step > 1``
            without a slice-stack probe inferer.
        ValueError: an unknown ``polarity``, a negative margin or a ``probe_slice_step`` below 1.
    """

    def __init__(
        self,
        inferer: Callable[..., Any],
        probe_inferer: Callable[..., Any] | None = None,
        probe_network: Callable[..., Any] | None = None,
        polarity: str = "auto",
        background_channel: int = 0,
        min_explained_gain: float = 0.0,
        min_confidence_gain: float = 0.05,
        probe_slice_step: int = 1,
    ) -> None:
        super().__init__()
        for name, value in (("inferer", inferer), ("probe_inferer", probe_inferer)):
            if value is not None and not callable(value):
                raise TypeError(f"{name} must be callable, got {type(value).__name__}.")
        if polarity not in POLARITIES:
            raise ValueError(f"polarity must be one of {POLARITIES}, got {polarity!r}.")
        for name, value in (("min_explained_gain", min_explained_gain), ("min_confidence_gain", min_confidence_gain)):
            if not float(value) >= 0:
                raise ValueError(f"{name} must be a number >= 0, got {value!r}.")
        if isinstance(probe_slice_step, bool) or not isinstance(probe_slice_step, (int, np.integer)) or probe_slice_step < 1:
            raise ValueError(f"probe_slice_step must be an int >= 1, got {probe_slice_step!r}.")
        self.inferer = inferer
        self.probe_inferer = probe_inferer if probe_inferer is not None else inferer
        if probe_slice_step > 1 and not isinstance(self.probe_inferer, SliceStackInferer):
            raise TypeError(f"probe_slice_step={probe_slice_step} needs a SliceStackInferer as the probe inferer, "
                            f"got {type(self.probe_inferer).__name__}; use probe_slice_step=1.")
        self.probe_slice_step = int(probe_slice_step)
        if isinstance(probe_network, torch.nn.Module):
            probe_network.eval()  # a fixed probe network only ever infers
        self.probe_network = probe_network
        self.polarity = polarity
        self.background_channel = int(background_channel)
        self.min_explained_gain = float(min_explained_gain)
        self.min_confidence_gain = float(min_confidence_gain)
        self.last_polarities: list[str] = []

    def fits(self, volume: torch.Tensor, network: Any, inverted: torch.Tensor | None = None) -> tuple[TissueMapFit, TissueMapFit]:
        """The tissue map fits of one volume ``(C, *spatial)`` as given and inverted (``inverted``:
        its :func:`invert_contrast`, if already made)."""
        tissue = self.probe_network if self.probe_network is not None else network
        fits = {}
        sample: list[int] | None = None
        if self.probe_slice_step > 1:  # a SliceStackInferer (checked at construction)
            axis = 1 + self.probe_inferer.spatial_dim  # type: ignore[union-attr]
            sample = probe_slices(volume.shape[axis], self.probe_slice_step)

        def take(x: torch.Tensor) -> torch.Tensor:
            """The sampled slices of a ``(C, *spatial)`` tensor (all of it without a sample)."""
            if sample is None:
                return x
            return x.index_select(axis, torch.as_tensor(sample, dtype=torch.long, device=x.device))

        # the volume as given last: the pass a probe inferer with ``reuse_last_pass`` keeps is then the
        # one the volume's next pass (brain normalisation, brain extraction) needs when it goes on as given
        for name, candidate in (("inverted", invert_contrast(volume) if inverted is None else inverted), ("given", volume)):
            with torch.no_grad():
                if sample is not None and name == "inverted":  # only the sampled stacks
                    logits = torch.as_tensor(self.probe_inferer.run_slices(candidate[None], tissue, sample))[0]  # type: ignore[union-attr]
                else:  # the whole pass, which the next step reuses
                    logits = take(torch.as_tensor(self.probe_inferer(candidate[None], tissue))[0])
            fits[name] = tissue_map_fit(take(candidate), logits, self.background_channel)
        return fits["given"], fits["inverted"]

    def _inverted_volumes(self, inputs: torch.Tensor, network: Any) -> list[torch.Tensor | None]:
        """Per volume of ``inputs``: its inverted form where it goes on inverted, else ``None``."""
        if self.polarity == "given":
            return [None] * inputs.shape[0]
        chosen: list[torch.Tensor | None] = []
        for b in range(inputs.shape[0]):
            inverted_volume = invert_contrast(inputs[b])
            if self.polarity == "inverted":
                chosen.append(inverted_volume)
                continue
            given, inverted = self.fits(inputs[b], network, inverted_volume)
            invert = prefers_inverted(given, inverted, self.min_explained_gain, self.min_confidence_gain)
            if invert:
                logger.warning(
                    "volume %d looks like an inverted (T2-like) contrast: its tissue map explains %.2f of the "
                    "intensity variance inverted against %.2f as given (confidence %.2f against %.2f); it is "
                    "analysed inverted (--contrast_polarity given to switch this off).",
                    b, inverted.explained, given.explained, inverted.confidence, given.confidence)
            else:
                logger.info("volume %d analysed as given: tissue map explains %.2f as given, %.2f inverted "
                            "(confidence %.2f, %.2f).", b, given.explained, inverted.explained,
                            given.confidence, inverted.confidence)
            chosen.append(inverted_volume if invert else None)
        return chosen

    def choose(self, inputs: torch.Tensor, network: Any) -> list[bool]:
        """Per volume of ``inputs`` ``(B, C, *spatial)``: whether it goes on inverted."""
        return [v is not None for v in self._inverted_volumes(inputs, network)]

    def __call__(self, inputs: torch.Tensor, network: Any, *args: Any, **kwargs: Any) -> Any:  # type: ignore[override]
        """``inferer(volumes, network)`` with each volume of ``inputs`` ``(B, C, *spatial)`` in its chosen polarity."""
        inverted = self._inverted_volumes(inputs, network)
        self.last_polarities = ["given" if v is None else "inverted" for v in inverted]
        if any(v is not None for v in inverted):
            chosen = inputs.clone()
            for b, volume in enumerate(inverted):
                if volume is not None:
                    chosen[b] = volume.to(dtype=inputs.dtype)
            inputs = chosen
        return self.inferer(inputs, network, *args, **kwargs)


def analysed_polarity(predictor: Any, index: int = 0) -> str | None:
    """The contrast polarity in which a predictor's last call analysed volume ``index``.

    Args:
        predictor: a predictor or inferer whose ``.inferer`` chain may hold a
            :class:`ContrastPolarityInferer` (:func:`medmamba.inferers.find_inferer`).
        index: the volume of the last call's batch.

    Returns:
        ``"inverted"`` where the check inverted the volume, ``"given"`` where it left it as given or
        where the chain holds no check (nothing inverts the volume then), ``None`` where the check has
        no record of that volume (not called yet, or a smaller batch).
    """
    check = find_inferer(predictor, ContrastPolarityInferer)
    if check is None:
        return "given"
    return check.last_polarities[index] if 0 <= index < len(check.last_polarities) else None
