"""Lesion scores of slice classifiers: per-slice lesion log-odds and their aggregation per volume.

A slice classifier's two logits give the slice's lesion log-odds (:func:`lesion_log_odds`); the
volume's score aggregates those of its slices (:func:`volume_log_odds`, the top-k mean by default);
``sigmoid`` of a score is the lesion probability, taken in float64 (:func:`lesion_probability`).
"""

from __future__ import annotations

from typing import Any

import torch

from medmamba.inferers.volume_classification import AGGREGATIONS, aggregate_slice_logits

__all__ = ["check_aggregation", "lesion_log_odds", "lesion_probability", "volume_log_odds"]


def lesion_probability(log_odds: float) -> float:
    """The sigmoid of ``log_odds`` in float64 (a float32 sigmoid is exactly 1.0 from about 17)."""
    return float(torch.sigmoid(torch.tensor(log_odds, dtype=torch.float64)))


def check_aggregation(aggregation: str, top_k: Any) -> None:
    """Raise ``ValueError`` unless ``aggregation`` is one of :data:`AGGREGATIONS` and ``top_k`` fits it.

    Args:
        aggregation: the volume aggregation of the slice log-odds.
        top_k: slices (int) or fraction of slices (float) for ``"topk"``.

    Raises:
        ValueError: an unknown ``aggregation`` or a ``top_k`` out of range.
        TypeError: a ``top_k`` that is not a number.
    """
    if aggregation not in AGGREGATIONS:
        raise ValueError(f"aggregation must be one of {AGGREGATIONS}, got {aggregation!r}.")
    aggregate_slice_logits(torch.zeros(1, 1), aggregation, top_k)  # validates top_k


def lesion_log_odds(logits: torch.Tensor, class_dim: int = 1) -> torch.Tensor:
    """The lesion log-odds ``logit[1] - logit[0]`` (or the single logit of a one-output network).

    Args:
        logits: e.g. ``(N, 2)`` slice logits or ``(B, 2, S)`` per-slice logits of volumes.
        class_dim: the class axis.

    Returns:
        ``logits`` with ``class_dim`` removed, float32.
    """
    x = torch.as_tensor(logits).float()
    k = x.shape[class_dim]
    if k == 2:
        return x.select(class_dim, 1) - x.select(class_dim, 0)
    if k == 1:
        return x.select(class_dim, 0)
    raise ValueError(f"logits must have 1 or 2 classes along dim {class_dim}, got shape {tuple(x.shape)}.")


def volume_log_odds(
    slice_log_odds: torch.Tensor, aggregation: str = "topk", top_k: int | float = 2, dim: int = -1
) -> torch.Tensor:
    """Aggregate per-slice lesion log-odds into one per volume.

    Args:
        slice_log_odds: per-slice log-odds with the slices along ``dim``, e.g. ``(B, S)``.
        aggregation: one of :data:`medmamba.inferers.AGGREGATIONS` (``"topk"``: mean of the
            ``top_k`` highest slices; ``"max"``; ``"mean"``; ``"logsumexp"``).
        top_k: slices (int) or fraction of slices (float) for ``"topk"``.
        dim: the slice axis.

    Returns:
        The volume log-odds (``dim`` removed); ``sigmoid`` of it is the lesion probability.
    """
    return aggregate_slice_logits(slice_log_odds, aggregation, top_k, dim=dim)
