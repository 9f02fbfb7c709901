"""SliceStackInferer(reuse_last_pass=True): a second pass over an equal volume is the first one's output,
and only then; the contrast-polarity probe leaves the pass the next step needs."""

from __future__ import annotations

import pytest
import torch
from monai.data import MetaTensor
from torch import nn

from medmamba.apps.brain_extraction import contrast_polarity_inferer, single_pass_extractor
from medmamba.inferers import (
    BrainExtractor,
    ContrastPolarityInferer,
    SkullStrippingInferer,
    SliceStackInferer,
    invert_contrast,
    tissue_map_fit,
)


class CountingNet(nn.Module):
    """A 2D network that counts the stacks it is run on."""

    def __init__(self, in_channels: int = 3, out_channels: int = 2) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.stacks = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.stacks += x.shape[0]
        return self.conv(x)


def _as_given(x: torch.Tensor, network: nn.Module) -> torch.Tensor:
    return x


def _volume(seed: int = 0) -> torch.Tensor:
    return torch.randn(1, 1, 12, 10, 8, generator=torch.Generator().manual_seed(seed))


def test_an_equal_volume_gets_the_last_pass_without_running_the_network() -> None:
    net = CountingNet().eval()
    x = _volume()
    reused = SliceStackInferer(context=1, sw_batch_size=3, reuse_last_pass=True)
    plain = SliceStackInferer(context=1, sw_batch_size=3)
    with torch.no_grad():
        expected = plain(x, net)
        net.stacks = 0
        first = reused(x, net)
        second = reused(x.clone(), net)  # another tensor, equal values
    assert net.stacks == 8  # the 8 slices once
    assert torch.equal(first, expected) and torch.equal(second, expected)
    second += 1.0  # the caller owns what it gets: the kept pass is not changed
    with torch.no_grad():
        assert torch.equal(reused(x, net), expected)
    assert net.stacks == 8


def test_any_difference_runs_the_network_again() -> None:
    net = CountingNet().eval()
    other = CountingNet().eval()
    x = _volume()
    inferer = SliceStackInferer(context=1, sw_batch_size=8, reuse_last_pass=True)
    with torch.no_grad():
        inferer(x, net)
        changed = x.clone()
        changed[0, 0, 0, 0, 0] += 1e-6
        inferer(changed, net)  # one value differs
        assert net.stacks == 16
        inferer(changed, other)  # another network
        assert other.stacks == 8
        inferer(changed, net)  # the last pass is other's: run again
        assert net.stacks == 24
        net.conv.weight.add_(0.1)  # weights changed in place (an optimiser step)
        inferer(changed, net)
        assert net.stacks == 32
        net.train()
        inferer(changed, net)  # train mode
        assert net.stacks == 40
    net.eval()
    inferer(changed, net)  # gradients on (training): neither reused nor kept
    inferer(changed, net)
    assert net.stacks == 56
    with torch.no_grad():
        inferer(changed, net)  # nothing kept since the gradient-enabled calls
        assert net.stacks == 64
        inferer(changed, net)
        assert net.stacks == 64


def test_without_reuse_every_call_runs_and_meta_data_follow_each_input() -> None:
    net = CountingNet().eval()
    x = _volume()
    with torch.no_grad():
        plain = SliceStackInferer(context=1)
        plain(x, net)
        plain(x, net)
        assert net.stacks == 16
        reused = SliceStackInferer(context=1, reuse_last_pass=True)
        a = reused(MetaTensor(x, affine=torch.eye(4)), net)
        shifted = torch.eye(4)
        shifted[0, 3] = 5.0
        b = reused(MetaTensor(x, affine=shifted), net)
    assert net.stacks == 24
    assert isinstance(b, MetaTensor) and float(b.affine[0, 3]) == 5.0 and float(a.affine[0, 3]) == 0.0
    with pytest.raises(TypeError, match="reuse_last_pass must be a bool, got str"):
        SliceStackInferer(reuse_last_pass="yes")


def test_the_polarity_probe_leaves_the_given_volume_s_pass_for_the_brain_extraction() -> None:
    """The classification bundle's chain: probe (inverted, then as given) and brain extraction share the
    segmentation network's single pass; the volume as given is run once."""
    seg = CountingNet(in_channels=3, out_channels=2).eval()
    with torch.no_grad():
        seg.conv.bias.copy_(torch.tensor([0.0, 1.0]))  # most voxels brain
    slices = SliceStackInferer(context=1, sw_batch_size=8, reuse_last_pass=True)
    extractor = BrainExtractor(seg, slices)
    classifier = CountingNet(in_channels=1, out_channels=2).eval()

    def classify(x: torch.Tensor, network: nn.Module) -> torch.Tensor:
        return network(x[:, :, :, :, 0])

    stripping = SkullStrippingInferer(classify, extractor, min_voxels=10)
    assert single_pass_extractor(stripping, "inferer#inferer") is extractor
    assert single_pass_extractor(stripping, "inferer::inferer") is extractor  # as a bundle config gives it
    assert single_pass_extractor(stripping, "brain_normalizing_inferer") is None
    assert single_pass_extractor(classify, "inferer#inferer") is None
    chain = contrast_polarity_inferer(stripping, "auto", "/nowhere", extractor=extractor)
    assert isinstance(chain, ContrastPolarityInferer) and chain.probe_network is seg
    x = _volume()
    with torch.no_grad():
        out = chain(x, classifier)
    assert seg.stacks == 2 * 8  # inverted and as given; the extraction reused the latter
    fresh = SkullStrippingInferer(classify, BrainExtractor(seg, SliceStackInferer(context=1, sw_batch_size=8)), min_voxels=10)
    with torch.no_grad():
        assert torch.equal(out, fresh(x, classifier))  # what the extraction gives without reuse
    with pytest.raises(TypeError, match="extractor must be a BrainExtractor or None, got str"):
        contrast_polarity_inferer(stripping, "auto", "/nowhere", extractor="seg")


def test_stacks_of_some_slices_equal_those_slices_of_the_full_pass() -> None:
    net = CountingNet().eval()
    x = MetaTensor(_volume(3))
    inferer = SliceStackInferer(context=1, sw_batch_size=3, reuse_last_pass=True)
    with torch.no_grad():
        full = inferer(x, net)
        net.stacks = 0
        some = inferer.run_slices(x, net, [7, 0, 4, 5])  # edges included, any order
    assert net.stacks == 4
    assert isinstance(some, MetaTensor) and some.shape == (1, 2, 12, 10, 4)
    torch.testing.assert_close(some.as_tensor(), full.as_tensor()[..., [7, 0, 4, 5]], rtol=0, atol=1e-6)
    with torch.no_grad():
        again = inferer(x, net)  # the full pass kept for reuse was not replaced by the partial one
    assert net.stacks == 4 and torch.equal(again, full)
    on_height = SliceStackInferer(spatial_dim=0, context=1)
    with torch.no_grad():
        torch.testing.assert_close(on_height.run_slices(x, net, [11]), on_height(x, net)[:, :, 11:12], rtol=0, atol=1e-6)
    for bad in ([], [8], [-1]):
        with pytest.raises(ValueError, match=r"indices must be a non-empty sequence of slices in \[0, 7\]"):
            inferer.run_slices(x, net, bad)


def test_the_polarity_probe_runs_the_inverted_volume_on_sampled_stacks_only() -> None:
    seg = CountingNet(in_channels=3, out_channels=3).eval()
    slices = SliceStackInferer(context=1, sw_batch_size=8, reuse_last_pass=True)
    x = _volume(4)
    full = ContrastPolarityInferer(_as_given, probe_inferer=slices, probe_network=seg)
    sampled = ContrastPolarityInferer(_as_given, probe_inferer=slices, probe_network=seg, probe_slice_step=3)
    seg.stacks = 0
    given, inverted = sampled.fits(x[0], seg)
    assert seg.stacks == 8 + 3  # the volume as given whole (kept for reuse), inverted on slices 1, 4, 7
    with torch.no_grad():
        assert torch.equal(slices(x, seg), slices(x, seg))  # the given pass is the one kept
    assert seg.stacks == 8 + 3
    with torch.no_grad():
        given_logits = SliceStackInferer(context=1)(x, seg)[0][..., [1, 4, 7]]
    assert given == tissue_map_fit(x[0][..., [1, 4, 7]], given_logits)
    with torch.no_grad():
        inverted_logits = SliceStackInferer(context=1)(invert_contrast(x[0])[None], seg)[0][..., [1, 4, 7]]
    expected = tissue_map_fit(invert_contrast(x[0])[..., [1, 4, 7]], inverted_logits)
    assert inverted.brain_voxels == expected.brain_voxels
    assert inverted.explained == pytest.approx(expected.explained, abs=1e-6)
    assert inverted.confidence == pytest.approx(expected.confidence, abs=1e-6)
    assert full.fits(x[0], seg)[0].brain_voxels > given.brain_voxels  # step 1: every slice
    with pytest.raises(TypeError, match="probe_slice_step=2 needs a SliceStackInferer as the probe inferer, got function"):
        ContrastPolarityInferer(_as_given, probe_inferer=lambda v, n: n(v), probe_slice_step=2)
    with pytest.raises(ValueError, match="probe_slice_step must be an int >= 1, got 0"):
        ContrastPolarityInferer(_as_given, probe_inferer=slices, probe_slice_step=0)
