"""Networks and inferers take an empty batch and return an empty result of the right shape."""

from __future__ import annotations

import pytest
import torch

from medmamba.apps.classification import VolumeClassifier
from medmamba.inferers import SliceStackInferer
from medmamba.networks import LesionMapClassifier, MobileMamba, MobileMambaSeg, fuse_norms


@pytest.mark.parametrize("fused", [False, True])
def test_networks_return_an_empty_batch(fused: bool) -> None:
    torch.manual_seed(0)
    cls = MobileMamba("t2", spatial_dims=2, in_channels=3, num_classes=4).eval()
    seg = MobileMambaSeg("t2", spatial_dims=2, in_channels=3, out_channels=4).eval()
    if fused:
        cls, seg = fuse_norms(cls), fuse_norms(seg)
    with torch.no_grad():
        assert cls(torch.zeros(0, 3, 64, 64)).shape == (0, 4)
        assert seg(torch.zeros(0, 3, 64, 64)).shape == (0, 4, 64, 64)
        assert cls(torch.zeros(1, 3, 64, 64)).shape == (1, 4)  # and a batch of one still works after it


def test_slice_stack_inferer_returns_an_empty_volume_batch() -> None:
    seg = MobileMambaSeg("t2", spatial_dims=2, in_channels=3, out_channels=4).eval()
    with torch.no_grad():
        out = SliceStackInferer(spatial_dim=2, context=1)(torch.zeros(0, 1, 64, 64, 7), seg)
        assert isinstance(out, torch.Tensor) and out.shape == (0, 4, 64, 64, 7)

        def as_mapping(x: torch.Tensor) -> dict[str, torch.Tensor]:
            return {"seg": seg(x), "mean": x.mean(dim=(2, 3))}

        out = SliceStackInferer(spatial_dim=1, context=1)(torch.zeros(0, 1, 64, 9, 64), as_mapping)
        assert out["seg"].shape == (0, 4, 64, 9, 64) and out["mean"].shape == (0, 3, 9)


def test_volume_classifier_returns_empty_scores() -> None:
    net = LesionMapClassifier(MobileMambaSeg("t2", spatial_dims=2, in_channels=5, out_channels=5), lesion_channel=4).eval()
    with torch.no_grad():
        out = VolumeClassifier(net, SliceStackInferer(spatial_dim=2, context=2), "topk", 2)(torch.zeros(0, 1, 64, 64, 7))
    assert out["slice_probabilities"].shape == (0, 7)
    assert out["lesion_probability"].shape == out["lesion_log_odds"].shape == (0,)
