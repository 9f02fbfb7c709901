"""Tests of volume classification from per-slice logits."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from medmamba.inferers import (
    SliceAggregationInferer,
    SliceAggregator,
    aggregate_slice_logits,
)

LOGITS = torch.tensor([[[1.0, 2.0, 3.0, 10.0], [0.0, -1.0, -2.0, -3.0]]])  # (B=1, K=2, S=4)


@pytest.mark.parametrize(
    ("method", "top_k", "expected"),
    [
        ("mean", 3, [4.0, -1.5]),
        ("max", 3, [10.0, 0.0]),
        ("topk", 2, [6.5, -0.5]),
        ("topk", 0.5, [6.5, -0.5]),
        ("topk", 0.1, [10.0, 0.0]),  # a fraction keeps at least one slice
        ("topk", 99, [4.0, -1.5]),  # capped at the number of slices
        ("logsumexp", 3, [math.log(sum(math.exp(v) for v in (1, 2, 3, 10)) / 4), math.log((1 + math.exp(-1) + math.exp(-2) + math.exp(-3)) / 4)]),
    ],
)
def test_aggregation_on_known_logits(method: str, top_k: float, expected: list[float]) -> None:
    out = aggregate_slice_logits(LOGITS, method, top_k=top_k)
    torch.testing.assert_close(out, torch.tensor([expected]))


def test_aggregation_dim_and_callable() -> None:
    moved = LOGITS.permute(2, 0, 1)  # slices first
    torch.testing.assert_close(aggregate_slice_logits(moved, "max", dim=0), torch.tensor([[10.0, 0.0]]))
    median = aggregate_slice_logits(LOGITS, lambda x: x.median(dim=-1).values)
    torch.testing.assert_close(median, torch.tensor([[2.0, -2.0]]))


class _SliceMean(nn.Module):
    """Per-slice logits (mean of the centre channel, minus that mean)."""

    in_channels = 3

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = x[:, 1].mean(dim=(1, 2))
        return torch.stack([m, -m], dim=1)


def _slice_index_volume(num_slices: int = 6) -> torch.Tensor:
    return torch.arange(num_slices, dtype=torch.float32).reshape(1, 1, 1, 1, -1).expand(2, 1, 4, 5, num_slices).clone()


@pytest.mark.parametrize(("method", "expected"), [("mean", 2.5), ("max", 5.0), ("topk", 4.5)])
def test_aggregation_inferer_on_volumes(method: str, expected: float) -> None:
    inferer = SliceAggregationInferer(spatial_dim=2, context=1, method=method, top_k=2, sw_batch_size=4)
    out = inferer(_slice_index_volume(), _SliceMean())
    assert out.shape == (2, 2)
    torch.testing.assert_close(out[:, 0], torch.full((2,), expected))


def test_aggregation_inferer_accepts_n_k_1_1_outputs() -> None:
    inferer = SliceAggregationInferer(spatial_dim=2, context=1, method="max")
    out = inferer(_slice_index_volume(), lambda x: _SliceMean()(x)[:, :, None, None])
    torch.testing.assert_close(out[:, 0], torch.full((2,), 5.0))


def test_slice_aggregator_module_trains_end_to_end() -> None:
    torch.manual_seed(0)
    slice_net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))
    model = SliceAggregator(slice_net, spatial_dim=2, context=1, method="topk", top_k=2, sw_batch_size=3,
                            return_slice_logits=True)
    volume = torch.randn(2, 1, 8, 8, 7)
    logits, per_slice = model(volume)
    assert logits.shape == (2, 2) and per_slice.shape == (2, 2, 7)
    torch.testing.assert_close(logits, per_slice.topk(2, dim=-1).values.mean(-1))
    nn.functional.cross_entropy(logits, torch.tensor([0, 1])).backward()
    assert slice_net[0].weight.grad is not None and slice_net[0].weight.grad.abs().sum() > 0


def test_aggregation_errors() -> None:
    with pytest.raises(ValueError, match="method must be one of"):
        aggregate_slice_logits(LOGITS, "median")
    with pytest.raises(ValueError, match="top_k"):
        aggregate_slice_logits(LOGITS, "topk", top_k=0)
    with pytest.raises(ValueError, match="top_k"):
        SliceAggregationInferer(method="topk", top_k=1.5)
    with pytest.raises(ValueError, match="no slices"):
        aggregate_slice_logits(torch.zeros(1, 2, 0))
    with pytest.raises(ValueError, match="per-slice logits"):
        SliceAggregationInferer(context=0)(torch.randn(1, 1, 4, 4, 3), lambda x: x)  # segmentation output
