"""Slice views (axial, coronal, sagittal) for training and view aggregation at inference."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.data import MetaTensor

from medmamba.inferers import MultiViewInferer, SliceStackInferer, log_mean_softmax
from medmamba.transforms import SLICE_VIEWS, RandSliceViewd, SliceStackd, from_view, to_view


def test_each_view_puts_its_slice_axis_last_and_back() -> None:
    x = torch.arange(2 * 3 * 4 * 5).reshape(1, 2, 3, 4, 5)
    shapes = {view: tuple(to_view(x, view).shape) for view in SLICE_VIEWS}
    assert shapes == {"axial": (1, 2, 3, 4, 5), "coronal": (1, 2, 3, 5, 4), "sagittal": (1, 2, 4, 5, 3)}
    for view in SLICE_VIEWS:
        assert torch.equal(from_view(to_view(x, view), view), x)
        assert np.array_equal(from_view(to_view(x.numpy(), view), view), x.numpy())
    # a coronal slice j is the volume's plane y = j: (X, Z)
    assert torch.equal(to_view(x, "coronal")[..., 2], x[:, :, :, 2, :])
    assert torch.equal(to_view(x, "sagittal")[..., 1], x[:, :, 1, :, :])


def test_a_turned_metatensor_keeps_its_voxels_world_positions() -> None:
    affine = torch.tensor([[2.0, 0, 0, -10], [0, 3.0, 0, 5], [0, 0, 4.0, 7], [0, 0, 0, 1]], dtype=torch.float64)
    img = MetaTensor(torch.zeros(1, 3, 4, 5), affine=affine)
    turned = to_view(img, "sagittal")  # (1, Y, Z, X)
    ijk = torch.tensor([2.0, 3.0, 1.0, 1.0], dtype=torch.float64)  # voxel (y=2, z=3, x=1) of the turned volume
    original = torch.tensor([1.0, 2.0, 3.0, 1.0], dtype=torch.float64)
    assert torch.allclose(turned.affine @ ijk, affine @ original)


def test_rand_slice_view_draws_every_view_and_turns_image_and_label_alike() -> None:
    image = torch.randn(1, 6, 7, 8)
    label = (image > 0).float()
    t = RandSliceViewd(keys=["image", "label"])
    t.set_random_state(seed=0)
    seen = {}
    for _ in range(60):
        out = t({"image": image, "label": label})
        assert torch.equal(out["label"], (out["image"] > 0).float())
        seen[tuple(out["image"].shape)] = seen.get(tuple(out["image"].shape), 0) + 1
    assert set(seen) == {(1, 6, 7, 8), (1, 6, 8, 7), (1, 7, 8, 6)}
    assert min(seen.values()) >= 10  # drawn about equally (60 draws, 3 views)
    only = RandSliceViewd(keys="image", views=["coronal", "axial"], weights=[1.0, 0.0])
    assert tuple(only({"image": image})["image"].shape) == (1, 6, 8, 7)
    # then slice stacks along the last axis are coronal slices
    stacks = SliceStackd(keys="image", spatial_axis=2, context=0, slices=[3])(only({"image": image}))
    assert torch.equal(torch.as_tensor(stacks[0]["image"]), image[:, :, 3, :])


def test_bad_views_and_weights_are_refused() -> None:
    with pytest.raises(ValueError, match="views must be distinct views out of"):
        RandSliceViewd(keys="image", views=["axial", "oblique"])
    with pytest.raises(ValueError, match="views must be distinct views out of"):
        MultiViewInferer(SliceStackInferer(), views=["axial", "axial"])
    with pytest.raises(ValueError, match="weights must be 3 non-negative numbers"):
        RandSliceViewd(keys="image", weights=[1.0, -1.0, 1.0])
    with pytest.raises(ValueError, match="must be a channel-first volume"):
        RandSliceViewd(keys="image")({"image": torch.zeros(1, 4, 4)})
    with pytest.raises(TypeError, match="inferer must be callable"):
        MultiViewInferer(None)  # type: ignore[arg-type]


class _PlaneMean(torch.nn.Module):
    """A per-slice 'network' whose two class logits depend on the slice's plane: the pixel value and
    the slice's mean, so that the views give different outputs."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = x.mean(dim=(2, 3), keepdim=True).expand_as(x)
        return torch.cat([x, mean], dim=1)


def test_view_aggregation_averages_the_probabilities_of_each_view() -> None:
    x = torch.randn(1, 1, 5, 6, 7)
    net = _PlaneMean()
    inner = SliceStackInferer(spatial_dim=2, context=0, check_channels=False)
    with torch.no_grad():
        agg = MultiViewInferer(inner)(x, net)
        per_view = [torch.softmax(from_view(inner(to_view(x, v), net), v), 1) for v in SLICE_VIEWS]
        axial_only = MultiViewInferer(inner, views=["axial"])(x, net)
    assert agg.shape == (1, 2, 5, 6, 7)
    assert torch.allclose(torch.exp(agg), sum(per_view) / 3, atol=1e-6)
    assert not torch.allclose(per_view[0], per_view[1])  # the views do differ
    assert torch.equal(axial_only, inner(x, net))  # one axial view: the wrapped inferer's output itself
    # the coronal view's slice means are the planes y = const of the input
    coronal = per_view[1][0, 1] / per_view[1][0].sum(0)
    y_means = x[0, 0].mean(dim=(0, 2))
    expected = torch.sigmoid(torch.stack([y_means[j] - x[0, 0, :, j, :] for j in range(6)], dim=1))
    assert torch.allclose(coronal, expected, atol=1e-5)


def test_log_mean_softmax_is_the_log_of_the_averaged_probabilities() -> None:
    """The combination shared by the flip TTA and the view aggregation."""
    a, b = torch.randn(2, 3, 4, 5), torch.randn(2, 3, 4, 5)
    expected = torch.log((torch.softmax(a, 1) + torch.softmax(b, 1)) / 2)
    assert torch.allclose(log_mean_softmax(iter([a, b])), expected, atol=1e-6)
    assert torch.allclose(torch.softmax(log_mean_softmax([a, b]), 1).sum(1), torch.ones(2, 4, 5), atol=1e-6)
    with pytest.raises(ValueError, match="at least one tensor of logits"):
        log_mean_softmax([])
