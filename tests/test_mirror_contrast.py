"""The mirror read-out of the lesion-map classifier (medmamba.inferers.mirror_contrast)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from medmamba.inferers import BrainExtractor, SkullStrippingInferer, SliceStackInferer, VolumeClassifier, symmetry_plane
from medmamba.inferers.mirror_contrast import (
    OUTSIDE_LOG_ODDS,
    DenseLesionMap,
    MirrorContrastInferer,
    mirror_contrast,
    mirrored,
    volume_readout_inferer,
)
from medmamba.networks import LesionMapClassifier, MeanEnsemble
from medmamba.networks.fuse_on_load import FuseOnLoad

from lesion_rule_stand_ins import keep_extraction_records, symmetric_head


def _brain(shape=(12, 6, 5), lo=2, hi=9):
    brain = torch.zeros(shape, dtype=torch.bool)
    brain[lo:hi + 1] = True  # centre of mass on axis 0: (lo + hi) / 2
    return brain


def test_mirrored_reflects_about_the_brain_centre_and_marks_outside():
    lesion = torch.arange(12, dtype=torch.float32)[:, None, None].expand(12, 6, 5).clone()
    out = mirrored(lesion, _brain(lo=2, hi=9))  # centre 5.5: i -> 11 - i
    assert out[:, 0, 0].tolist() == [11.0 - i for i in range(12)]
    out = mirrored(lesion, _brain(lo=4, hi=9))  # centre 6.5: i -> 13 - i, 0 and 1 fall outside
    assert out[0, 0, 0].item() == OUTSIDE_LOG_ODDS and out[1, 0, 0].item() == OUTSIDE_LOG_ODDS
    assert out[2, 0, 0].item() == 11.0 and out[11, 0, 0].item() == 2.0


def test_mirrored_of_an_empty_brain_subtracts_nothing():
    lesion = torch.randn(6, 4, 3)
    out = mirror_contrast(lesion, torch.zeros(6, 4, 3, dtype=torch.bool), margin=0.0)
    assert torch.equal(out, lesion)


def test_mirror_contrast_keeps_a_one_sided_lesion_and_flattens_a_symmetric_pair():
    lesion = torch.full((12, 6, 5), -8.0)
    lesion[2, 3, 2] = 15.0  # one-sided: the mirror voxel (9) is normal tissue
    lesion[4, 1, 1] = lesion[7, 1, 1] = 12.0  # a mirror-symmetric pair
    out = mirror_contrast(lesion, _brain(lo=2, hi=9), margin=4.0)
    assert out[2, 3, 2].item() == 15.0
    assert out[4, 1, 1].item() == pytest.approx(4.0) and out[7, 1, 1].item() == pytest.approx(4.0)
    assert out[0, 0, 0].item() == -8.0  # mirror below the margin: unchanged


def test_mirror_contrast_equals_the_formula_voxel_by_voxel():
    """``L[i] - max(L[round(2c - i)] - margin, 0)`` with ``c`` the brain's centre of mass on axis 0, written
    out as a loop over the left-right index (the read-out chosen in docs/real-scans.md)."""
    rng = np.random.default_rng(3)
    lesion = rng.normal(0, 6, (20, 16, 9)).astype(np.float32)
    brain = np.zeros((20, 16, 9), bool)
    brain[3:15, 2:14, 1:8] = True
    brain[3:6, 2:5, 1:3] = False  # an asymmetric brain: a centre of mass off the grid's middle
    centre = (brain.sum(axis=(1, 2)) * np.arange(20)).sum() / brain.sum()
    expected = lesion.copy()
    for i in range(20):
        j = int(np.round(2 * centre - i))
        if 0 <= j < 20:
            expected[i] = lesion[i] - np.maximum(lesion[j] - 4.0, 0.0)
    got = mirror_contrast(torch.from_numpy(lesion), torch.from_numpy(brain), margin=4.0).numpy()
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5)


def test_mirrored_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match=r"must have the same shape"):
        mirrored(torch.zeros(4, 4, 4), torch.zeros(4, 4, 3, dtype=torch.bool))


class _TinySeg(nn.Module):
    """Three classes per pixel from a one-channel slice: background, tissue, lesion."""

    def __init__(self) -> None:
        super().__init__()
        self.in_channels = 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        v = x[:, :1]
        return torch.cat([-4 * v, torch.zeros_like(v), v * 2 - 3], dim=1)  # background where v < 0


class _Shifted(_TinySeg):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x) + torch.tensor([0.0, 1.0, 0.5]).view(1, 3, 1, 1)


def _phantom():
    vol = torch.full((1, 1, 12, 6, 4), -1.0)  # background
    vol[0, 0, 2:10, 1:5, :] = 0.5  # brain: centre 5.5 on the left-right axis
    vol[0, 0, 3, 2, 1] = 5.0  # a one-sided bright spot in slice 1
    vol[0, 0, 4, 2, 2] = vol[0, 0, 7, 2, 2] = 5.0  # a mirror pair in slice 2
    return vol


def test_mirror_inferer_gives_slice_logits_of_the_contrast():
    classifier = LesionMapClassifier(_TinySeg(), lesion_channel=-1)
    vol = _phantom()
    plain = SliceStackInferer(spatial_dim=2, context=0)(vol, classifier)  # (1, 2, S): [0, slice max]
    mirror = MirrorContrastInferer(SliceStackInferer(spatial_dim=2, context=0), margin=4.0)(vol, classifier)
    assert tuple(mirror.shape) == (1, 2, 4) and torch.all(mirror[:, 0] == 0)
    z = classifier.lesion_map(torch.tensor([[[5.0]]])[None])[0, 0, 0].item()  # the spot's log-odds
    assert plain[0, 1, 1].item() == pytest.approx(z) and plain[0, 1, 2].item() == pytest.approx(z)
    assert mirror[0, 1, 1].item() == pytest.approx(z)  # one-sided: kept
    assert mirror[0, 1, 2].item() == pytest.approx(4.0)  # symmetric pair: down to the margin
    scores = VolumeClassifier(classifier, MirrorContrastInferer(SliceStackInferer(spatial_dim=2, context=0)), "max")(vol)
    assert scores["lesion_log_odds"].item() == pytest.approx(z)


def test_dense_lesion_map_reads_a_fused_classifier_and_its_torchscript():
    wrapped = FuseOnLoad(LesionMapClassifier(_TinySeg(), lesion_channel=-1))
    x = torch.randn(3, 1, 8, 8)
    dense = DenseLesionMap(wrapped)(x)
    expected = wrapped.network.lesion_map(x)
    assert tuple(dense.shape) == (3, 2, 8, 8)
    torch.testing.assert_close(dense[:, 0], expected)
    assert torch.equal(dense[:, 1], (x[:, 0] >= 0).float())  # background where the input is negative
    scripted = torch.jit.script(wrapped)
    torch.testing.assert_close(DenseLesionMap(scripted)(x), dense)


def test_dense_lesion_map_refuses_a_network_without_lesion_map():
    with pytest.raises(TypeError, match=r"needs a lesion-map classifier .* got Conv2d"):
        DenseLesionMap(nn.Conv2d(1, 2, 1))


@pytest.mark.parametrize("kwargs", [{"pooling": "topk"}, {"readout": "brain"}])
def test_dense_lesion_map_refuses_a_classifier_pooled_otherwise(kwargs):
    with pytest.raises(ValueError, match=r"takes each slice's maximum over the whole image.*expected 'max' and 'image'"):
        DenseLesionMap(LesionMapClassifier(_TinySeg(), lesion_channel=-1, **kwargs))


def test_dense_lesion_map_of_an_ensemble_is_the_members_mean():
    first = LesionMapClassifier(_TinySeg(), lesion_channel=-1)
    second = LesionMapClassifier(_Shifted(), lesion_channel=-1)
    x = torch.randn(2, 1, 6, 6)
    dense = DenseLesionMap(FuseOnLoad(MeanEnsemble([first, second])))(x)
    torch.testing.assert_close(dense[:, 0], (first.lesion_map(x) + second.lesion_map(x)) / 2)
    assert torch.equal(dense[:, 1], (x[:, 0] >= 0).float())  # the first member's brain


def test_volume_readout_inferer_choices():
    base = SliceStackInferer(spatial_dim=2, context=0)
    assert volume_readout_inferer(base, "maximum") is base
    mirror = volume_readout_inferer(base, "mirror", margin=2.5)
    assert isinstance(mirror, MirrorContrastInferer) and mirror.margin == 2.5 and mirror.inferer is base
    aligned = volume_readout_inferer(base, "aligned_mirror", margin=6.0)
    assert isinstance(aligned, MirrorContrastInferer) and (aligned.margin, aligned.plane, aligned.widen) == (6.0, "symmetry", 3)
    assert (mirror.plane, mirror.widen) == ("upright", 1)
    with pytest.raises(ValueError, match=r"volume_readout='median' is not valid"):
        volume_readout_inferer(base, "median")


# ------------------------------------------------------------------ the aligned mirror read-out
def test_mirror_contrast_about_an_oblique_plane_flattens_the_turned_pair():
    """A head turned by 9 degrees: its mirror pair cancels about the fitted plane, not about the upright one;
    the one-sided spot keeps its log-odds either way."""
    image, brain = symmetric_head(9.0)
    point, normal = symmetry_plane(image, brain)
    lesion = torch.from_numpy(np.where(image < 0.5, 12.0, -8.0).astype(np.float32))  # the dark structures marked
    one_sided = tuple(np.argwhere(np.isclose(image, 0.3))[0])
    pair = tuple(np.argwhere(np.isclose(image, 0.2))[0])
    brain_t = torch.from_numpy(brain)
    aligned = mirror_contrast(lesion, brain_t, 4.0, plane=(point, normal), widen=3)
    upright = mirror_contrast(lesion, brain_t, 4.0)
    assert aligned[one_sided].item() == 12.0 and upright[one_sided].item() == 12.0
    assert aligned[pair].item() == pytest.approx(4.0)
    inside = np.isclose(image, 0.2)
    assert (aligned.numpy()[inside] <= 4.0).mean() > (upright.numpy()[inside] <= 4.0).mean()
    with pytest.raises(ValueError, match="widen must be an odd int >= 1, got 2"):
        mirror_contrast(lesion, brain_t, plane=(point, normal), widen=2)


class _RecordingStripping(SkullStrippingInferer):
    """Stand-in brain extraction: keeps ``brain`` and tissue logits with white matter ``wm``, returns ``dense``."""

    def __init__(self, dense: torch.Tensor, brain: np.ndarray, wm: np.ndarray) -> None:
        super().__init__(lambda x, net: x, BrainExtractor(lambda x: x, lambda x, net: x))
        self.dense, self.brain, self.wm = dense, brain, wm

    def __call__(self, inputs, network, *args, **kwargs):
        keep_extraction_records(self, self.brain, self.wm)
        return self.dense


def test_aligned_read_out_fits_the_plane_of_the_brain_extraction():
    image, brain = symmetric_head(-8.0)
    lesion = np.where(image < 0.5, 12.0, -8.0).astype(np.float32)
    dense = torch.stack([torch.from_numpy(lesion), torch.from_numpy(brain.astype(np.float32))])[None]
    classifier = LesionMapClassifier(_TinySeg(), lesion_channel=-1)
    readout = volume_readout_inferer(_RecordingStripping(dense, brain, image), "aligned_mirror", margin=4.0)
    assert isinstance(readout, MirrorContrastInferer) and (readout.plane, readout.widen) == ("symmetry", 3)
    slices = readout(torch.zeros(1, 1, *brain.shape), classifier)
    point, normal = readout.last_planes[0]
    assert np.degrees(np.arctan2(normal[1], normal[0])) == pytest.approx(-8.0, abs=1.5)
    expected = mirror_contrast(torch.from_numpy(lesion), torch.from_numpy(brain), 4.0, plane=(point, normal), widen=3)
    torch.testing.assert_close(readout.last_contrast_maps[0], expected)
    torch.testing.assert_close(slices[0, 1], expected.amax(dim=(0, 1)))
    small = _RecordingStripping(dense, brain, image)
    small.min_voxels = int(brain.sum()) + 1  # too small to strip to: the upright plane
    fallback = MirrorContrastInferer(small, margin=4.0, plane="symmetry", widen=3)
    fallback(torch.zeros(1, 1, *brain.shape), classifier)
    assert fallback.last_planes == [None]


def test_aligned_read_out_without_brain_extraction_mirrors_upright(caplog):
    classifier = LesionMapClassifier(_TinySeg(), lesion_channel=-1)
    vol = _phantom()
    upright = MirrorContrastInferer(SliceStackInferer(spatial_dim=2, context=0), margin=4.0)(vol, classifier)
    readout = MirrorContrastInferer(SliceStackInferer(spatial_dim=2, context=0), margin=4.0, plane="symmetry")
    with caplog.at_level("WARNING", logger="medmamba.inferers.mirror_contrast"):
        torch.testing.assert_close(readout(vol, classifier), upright)
    assert readout.last_planes == [None] and "the upright mirror plane is used" in caplog.text
    stale = _RecordingStripping(torch.zeros(1, 2, 4, 4, 4), np.ones((4, 4, 4), bool), np.ones((4, 4, 4)))
    with pytest.raises(ValueError, match=r"holds no record of the 2 volume\(s\) of this call"):
        MirrorContrastInferer(stale, plane="symmetry")._planes(torch.zeros(2, 2, 4, 4, 4))


def test_aligned_read_out_settings_are_checked():
    with pytest.raises(ValueError, match=r"plane='oblique' is not valid; expected one of \('upright', 'symmetry'\)"):
        MirrorContrastInferer(SliceStackInferer(spatial_dim=2), plane="oblique")
    with pytest.raises(ValueError, match="widen must be an odd int >= 1, got 0"):
        MirrorContrastInferer(SliceStackInferer(spatial_dim=2), widen=0)
