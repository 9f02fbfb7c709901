"""Volume predictors: a 2D network applied to whole volumes through an inferer, for inference scripts.

:class:`VolumePredictor` runs a network through an inferer (e.g.
:class:`medmamba.inferers.SliceStackInferer`) in eval mode without gradients;
:class:`VolumeSegmenter` returns the logit volume (for :func:`medmamba.apps.pipeline.segment_scans`),
:class:`VolumeClassifier` the per-slice and volume lesion probabilities of a slice classifier.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from medmamba.inferers.lesion_scores import check_aggregation, lesion_log_odds, volume_log_odds

__all__ = ["VolumeClassifier", "VolumePredictor", "VolumeSegmenter"]


class VolumePredictor:
    """A 2D network applied to whole volumes through an inferer, in eval mode without gradients.

    The shared part of :class:`VolumeSegmenter` and :class:`VolumeClassifier`.

    Args:
        network: a 2D network taking ``2k + 1``-slice stacks (eager or TorchScript).
        inferer: e.g. :class:`medmamba.inferers.SliceStackInferer`; any ``inferer(x, network)``.
        device: where the network runs (the volume is moved there).

    Raises:
        TypeError: ``network`` or ``inferer`` is not callable.
    """

    def __init__(self, network: Callable[..., Any], inferer: Callable[..., Any], device: str | torch.device = "cpu") -> None:
        if not callable(network):
            raise TypeError(f"network must be callable, got {type(network).__name__}.")
        if not callable(inferer):
            raise TypeError(f"inferer must be callable, got {type(inferer).__name__}.")
        self.network = network
        self.inferer = inferer
        self.device = torch.device(device)

    def predict(self, volume: torch.Tensor) -> Any:
        """The inferer's output for a batch of volumes ``(B, C, H, W, D)``."""
        if isinstance(self.network, nn.Module):
            self.network.eval()
        with torch.no_grad():
            return self.inferer(torch.as_tensor(volume).to(self.device), self.network)


class VolumeSegmenter(VolumePredictor):
    """A predictor for :func:`medmamba.apps.pipeline.segment_scans`: volume in, logit volume out.

    Args:
        network: a 2D network taking ``2k + 1``-slice stacks (eager or TorchScript).
        inferer: e.g. :class:`medmamba.inferers.SliceStackInferer`; any ``inferer(x, network)``.
        device: where the network runs (the volume is moved there).
    """

    def __call__(self, volume: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, K, H, W, D)`` of a batch of volumes ``(B, C, H, W, D)``."""
        return self.predict(volume)


class VolumeClassifier(VolumePredictor):
    """Volume in, per-slice logits and volume lesion probability out.

    Args:
        network: a 2D slice classifier taking ``2k + 1``-slice stacks (eager or TorchScript).
        inferer: e.g. :class:`medmamba.inferers.SliceStackInferer` (returns ``(B, K, S)``).
        aggregation, top_k: volume aggregation of the slice log-odds
            (:func:`medmamba.inferers.volume_log_odds`).
        device: where the network runs.

    Raises:
        TypeError: ``network`` or ``inferer`` is not callable, or ``top_k`` is not a number.
        ValueError: an unknown ``aggregation`` or a ``top_k`` out of range.
    """

    def __init__(
        self,
        network: Callable[..., Any],
        inferer: Callable[..., Any],
        aggregation: str = "topk",
        top_k: int | float = 2,
        device: str | torch.device = "cpu",
    ) -> None:
        super().__init__(network, inferer, device)
        check_aggregation(aggregation, top_k)
        self.aggregation = aggregation
        self.top_k = top_k

    def slice_logits(self, volume: torch.Tensor) -> torch.Tensor:
        """Per-slice logits ``(B, K, S)`` of volumes ``(B, C, H, W, D)``."""
        out = torch.as_tensor(self.predict(volume)).float()
        if out.ndim != 3:
            raise ValueError(f"the inferer must return per-slice logits (B, K, S), got shape {tuple(out.shape)}.")
        return out

    def __call__(self, volume: torch.Tensor) -> dict[str, torch.Tensor]:
        """``{"slice_probabilities": (B, S), "lesion_probability": (B,), "lesion_log_odds": (B,)}`` of
        volumes ``(B, C, H, W, D)``; the volume probability in float64 (a float32 sigmoid is 1.0 from
        about 17 log-odds, and the log-odds still rank such cases)."""
        z = lesion_log_odds(self.slice_logits(volume), class_dim=1)
        volume_z = volume_log_odds(z, self.aggregation, self.top_k)
        return {
            "slice_probabilities": torch.sigmoid(z),
            "lesion_probability": torch.sigmoid(volume_z.double()),
            "lesion_log_odds": volume_z,
        }
