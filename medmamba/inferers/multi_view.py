"""View aggregation: class probabilities of a 2.5D network averaged over axial, coronal and sagittal slices."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from medmamba.inferers.flip_tta import log_mean_softmax
from medmamba.transforms.slice_view import check_views, from_view, to_view

__all__ = ["MultiViewInferer"]


class MultiViewInferer:
    """Run a slice inferer on several slice views of a volume and average the class probabilities.

    Each view turns the ``(B, C, X, Y, Z)`` input so that its slice axis is last
    (:func:`medmamba.transforms.to_view`), ``inferer`` runs on it (e.g. a
    :class:`medmamba.inferers.SliceStackInferer` along the last axis, or a flip TTA around one), the
    output is turned back, and the softmax probabilities of the views are averaged; the logarithm is
    returned, so that a softmax or an arg-max downstream gives the averaged probabilities or their
    arg-max ("view aggregation", FastSurferCNN, Henschel et al., NeuroImage 2020). The network must
    have been trained on those views (:class:`medmamba.transforms.RandSliceViewd`), and each view's
    slice shape must suit it (pad the volume, e.g. every axis to a multiple of 64 for MobileMambaSeg).
    With the single view ``("axial",)`` the wrapped inferer's output is returned as it is.

    Args:
        inferer: the inferer to wrap.
        views: the views to aggregate, out of ``"axial"``, ``"coronal"``, ``"sagittal"``.

    Raises:
        TypeError: ``inferer`` is not callable.
        ValueError: for unknown or repeated views, or (when called) an input that is not ``(B, C, X, Y, Z)``.
    """

    def __init__(self, inferer: Callable[..., Any], views: Sequence[str] = ("axial", "coronal", "sagittal")) -> None:
        if not callable(inferer):
            raise TypeError(f"inferer must be callable, got {type(inferer).__name__}.")
        self.inferer = inferer
        self.views = check_views(views)

    def __call__(self, inputs: torch.Tensor, network: Callable[..., Any], *args: Any, **kwargs: Any) -> torch.Tensor:
        if self.views == ("axial",):
            return self.inferer(inputs, network, *args, **kwargs)
        if inputs.ndim != 5:
            raise ValueError(f"inputs must be volumes (B, C, X, Y, Z), got shape {tuple(inputs.shape)}.")
        return log_mean_softmax(from_view(self.inferer(to_view(inputs, view), network, *args, **kwargs), view)
                                for view in self.views)
