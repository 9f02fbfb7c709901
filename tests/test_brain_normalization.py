"""Brain-tissue normalisation: the transform, MRNormalize's region statistics, the two-pass inferer."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from medmamba.inferers import BrainNormalizingInferer, SliceStackInferer, tissue_network
from medmamba.networks import LesionMapClassifier, MeanEnsemble
from medmamba.networks.fuse_on_load import FuseOnLoad
from medmamba.transforms import BrainNormalize, BrainNormalized, MRNormalize


def _head_and_brain(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A (1, 24, 24, 8) "head": brain in the centre box, a bright scalp ring around it, air outside."""
    g = torch.Generator().manual_seed(seed)
    label = torch.zeros(1, 24, 24, 8, dtype=torch.long)
    label[:, 6:18, 6:18, :] = 2
    label[:, 9:15, 9:15, 2:6] = 3
    brain = 600.0 + 100.0 * label.float() + 20.0 * torch.randn(1, 24, 24, 8, generator=g)
    head = torch.where(label > 0, brain, torch.zeros_like(brain))
    head[:, 3:21, 3:21, :][label[:, 3:21, 3:21, :] == 0] = 1500.0  # scalp: brighter than any brain voxel
    head[:, :3] = head[:, 21:] = 0.0
    head[:, :, :3] = head[:, :, 21:] = 0.0
    stripped = torch.where(label > 0, brain, torch.zeros_like(brain))
    return head, stripped, label


def test_a_whole_head_and_the_same_brain_stripped_get_the_same_brain_values() -> None:
    head, stripped, label = _head_and_brain()
    norm = BrainNormalize(lower=0.5, upper=None)
    a, b = norm(head, label), norm(stripped, label)
    inside = label > 0
    torch.testing.assert_close(a[inside], b[inside])
    # the foreground z-score does not: the scalp moves the brain's statistics
    fg = MRNormalize(lower=0.5, upper=None)
    assert (fg(head)[inside] - fg(stripped)[inside]).abs().max() > 0.5


def test_without_clipping_the_brain_has_zero_mean_and_unit_standard_deviation() -> None:
    head, _, label = _head_and_brain(1)
    out = BrainNormalize(lower=None, upper=None)(head, label[0])  # a label without channel works too
    v = out[label > 0]
    assert abs(float(v.mean())) < 1e-5
    assert float(v.std()) == pytest.approx(1.0, abs=1e-5)


def test_brain_labels_select_the_statistics_region() -> None:
    head, _, label = _head_and_brain(2)
    out = BrainNormalize(lower=None, upper=None, labels=[3], min_voxels=50)(head, label)
    v = out[label == 3]
    assert abs(float(v.mean())) < 1e-5 and float(v.std()) == pytest.approx(1.0, abs=1e-5)


def test_too_little_brain_leaves_the_image_as_it_is() -> None:
    head, _, label = _head_and_brain()
    out = BrainNormalize(min_voxels=10_000)(head, label)  # the brain has 12 * 12 * 8 = 1152 voxels
    torch.testing.assert_close(out.as_tensor(), head)


def test_bad_arguments_and_shapes_are_named() -> None:
    head, _, label = _head_and_brain()
    with pytest.raises(ValueError, match=r"label must have the image's spatial shape \(24, 24, 8\)"):
        BrainNormalize()(head, label[..., :4])
    with pytest.raises(ValueError, match="min_voxels must be a positive integer, got 0"):
        BrainNormalize(min_voxels=0)
    with pytest.raises(ValueError, match="labels must be a non-empty sequence"):
        BrainNormalize(labels=[])
    with pytest.raises(ValueError, match="label_key 'tissue' is not in the data"):
        BrainNormalized(keys="image", label_key="tissue")({"image": head})


def test_dictionary_version_uses_the_label_key() -> None:
    head, _, label = _head_and_brain()
    d = BrainNormalized(keys="image", label_key="label")({"image": head, "label": label})
    torch.testing.assert_close(d["image"], BrainNormalize()(head, label))
    assert torch.equal(d["label"], label)


def test_mr_normalize_statistics_over_a_region() -> None:
    head, _, label = _head_and_brain()
    inside = (label > 0)[0]
    lo, hi, mean, std = MRNormalize(lower=None, upper=None).statistics(head[0], region=inside)
    v = head[0][inside]
    assert lo is None and hi is None
    assert mean == pytest.approx(float(v.mean()), rel=1e-6)
    assert std == pytest.approx(float(v.std()), rel=1e-5)
    with pytest.raises(ValueError, match="region selects no voxel"):
        MRNormalize().statistics(head[0], region=torch.zeros_like(inside))
    with pytest.raises(ValueError, match=r"region must have the channel's shape \(24, 24, 8\)"):
        MRNormalize().statistics(head[0], region=inside[:, :, :4])


class _BoxTissue(nn.Module):
    """Tissue network stub: background / tissue / lesion logits; tissue in a fixed box, lesion = input / 1000."""

    in_channels = 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        box = torch.zeros(x.shape[0], *x.shape[2:], dtype=torch.bool)
        box[:, 6:18, 6:18] = True
        bg = torch.where(box, torch.zeros(()), torch.full((), 5.0))
        tissue = torch.where(box, torch.full((), 5.0), torch.zeros(()))
        return torch.stack([bg, tissue, 1e-3 * x[:, 0]], dim=1)


def test_tissue_network_unwraps_fused_ensembles_and_refuses_other_networks() -> None:
    seg = _BoxTissue()
    clf = LesionMapClassifier(seg, lesion_channel=-1)
    assert tissue_network(clf) is seg
    assert tissue_network(FuseOnLoad(clf)) is seg
    x = torch.randn(2, 1, 24, 24)
    ens = tissue_network(MeanEnsemble([clf, LesionMapClassifier(_BoxTissue(), lesion_channel=-1)]))
    torch.testing.assert_close(ens(x), seg(x))
    with pytest.raises(TypeError, match="network must be a lesion-map classifier .* got Conv2d"):
        tissue_network(nn.Conv2d(1, 1, 1))


def test_the_inferer_normalises_over_the_brain_its_tissue_pass_finds() -> None:
    head, stripped, label = _head_and_brain()
    clf = LesionMapClassifier(_BoxTissue(), lesion_channel=-1, readout="brain").eval()
    slices = SliceStackInferer(spatial_dim=2, context=0)
    inferer = BrainNormalizingInferer(slices, min_voxels=100, network_kind="lesion_map")
    masks = inferer.brain_masks(head[None], clf)
    expected_mask = torch.zeros(1, 24, 24, 8, dtype=torch.bool)
    expected_mask[:, 6:18, 6:18, :] = True
    assert torch.equal(masks, expected_mask)
    with torch.no_grad():
        out_head = inferer(head[None], clf)
        out_stripped = inferer(stripped[None], clf)
        explicit = slices(BrainNormalize(min_voxels=100)(head, expected_mask)[None].as_tensor(), clf)
    assert out_head.shape == (1, 2, 8)
    torch.testing.assert_close(out_head, explicit)
    # the brain-readout scores depend only on the box, whose values both inputs normalise alike
    torch.testing.assert_close(out_head, out_stripped)
    with pytest.raises(ValueError, match="tissue_passes must be a non-negative integer, got -1"):
        BrainNormalizingInferer(slices, tissue_passes=-1)
    with pytest.raises(ValueError, match="network_kind must be 'lesion_map' or 'segmentation', got 'unet'"):
        BrainNormalizingInferer(slices, network_kind="unet")
    # no tissue pass: the volume as given
    with torch.no_grad():
        torch.testing.assert_close(BrainNormalizingInferer(slices, tissue_passes=0, network_kind="lesion_map")(head[None], clf), slices(head[None], clf))
    with pytest.raises(TypeError, match="inferer must be callable"):
        BrainNormalizingInferer(None)  # type: ignore[arg-type]


def test_a_segmentation_network_gives_its_own_brain_and_returns_its_second_pass() -> None:
    head, _, _ = _head_and_brain(3)
    seg = _BoxTissue().eval()
    slices = SliceStackInferer(spatial_dim=2, context=0)
    box = torch.zeros(1, 24, 24, 8, dtype=torch.bool)
    box[:, 6:18, 6:18, :] = True
    with torch.no_grad():
        out = BrainNormalizingInferer(slices, min_voxels=100)(head[None], seg)  # network_kind="segmentation"
        explicit = slices(BrainNormalize(min_voxels=100)(head, box)[None].as_tensor(), seg)
        one_pass = slices(head[None], seg)
    assert out.shape == (1, 3, 24, 24, 8)
    torch.testing.assert_close(out, explicit)
    # the third channel follows the input: normalised over the box it differs from the raw pass
    assert (out[:, 2] - one_pass[:, 2]).abs().max() > 0.1


def test_the_tissue_passes_may_run_another_inferer_than_the_final_one() -> None:
    """``tissue_inferer``: the mask's pass (e.g. without the flip TTA) apart from the final pass."""
    head, _, _ = _head_and_brain(4)
    seg = _BoxTissue().eval()
    calls: list[str] = []

    def recording(name: str, inferer: SliceStackInferer):
        def run(x: torch.Tensor, network: nn.Module) -> torch.Tensor:
            calls.append(name)
            return inferer(x, network)
        return run

    slices = SliceStackInferer(spatial_dim=2, context=0)
    with torch.no_grad():
        out = BrainNormalizingInferer(recording("final", slices), min_voxels=100,
                                      tissue_inferer=recording("tissue", slices))(head[None], seg)
        same = BrainNormalizingInferer(slices, min_voxels=100)(head[None], seg)
    assert calls == ["tissue", "final"]
    torch.testing.assert_close(out, same)  # the same inferer in both roles: the result of the default
    with pytest.raises(TypeError, match="tissue_inferer must be callable or None, got int"):
        BrainNormalizingInferer(slices, tissue_inferer=3)  # type: ignore[arg-type]


def test_strip_to_brain_gives_the_final_pass_a_whole_head_as_its_stripped_brain() -> None:
    """``strip_to_brain``: outside the tissue pass's brain the final pass sees the brain's lowest value,
    which is what the same brain skull-stripped (zero background) becomes after the normalisation."""
    head, stripped, _ = _head_and_brain(5)
    seg = _BoxTissue().eval()
    seen: list[torch.Tensor] = []
    slices = SliceStackInferer(spatial_dim=2, context=0)

    def final(x: torch.Tensor, network: nn.Module) -> torch.Tensor:
        seen.append(x.clone())
        return slices(x, network)

    inferer = BrainNormalizingInferer(final, min_voxels=100, tissue_inferer=slices, strip_to_brain=True)
    with torch.no_grad():
        inferer(head[None], seg)
        inferer(stripped[None], seg)
    box = torch.zeros(24, 24, 8, dtype=torch.bool)
    box[6:18, 6:18, :] = True
    from_head, from_stripped = seen[0][0, 0], seen[1][0, 0]
    assert torch.unique(from_head[~box]).tolist() == [from_head[box].min().item()]  # scalp and air are gone
    torch.testing.assert_close(from_head, from_stripped)  # the head's final input is the stripped brain's
    plain = BrainNormalizingInferer(final, min_voxels=100, tissue_inferer=slices)
    with torch.no_grad():
        plain(head[None], seg)
    assert seen[2][0, 0][~box].max() > from_head[box].max()  # without stripping the bright scalp stays
    with pytest.raises(ValueError, match="strip_to_brain=True needs a tissue pass.*tissue_passes=0"):
        BrainNormalizingInferer(slices, tissue_passes=0, strip_to_brain=True)
    with pytest.raises(TypeError, match="strip_to_brain must be a bool, got str"):
        BrainNormalizingInferer(slices, strip_to_brain="yes")  # type: ignore[arg-type]


def test_head_and_brain_keep_the_head_s_background_inside_and_average_the_rest() -> None:
    """``combine_head_and_brain``: outside the brain the mean of the two runs' probabilities; inside it the
    head run's background probability, the tissue division the mean of the two runs' divisions."""
    from medmamba.inferers import combine_head_and_brain

    g = torch.Generator().manual_seed(0)
    head, brain = torch.randn(2, 4, 5, 6, generator=g), torch.randn(2, 4, 5, 6, generator=g)
    brains = torch.zeros(2, 5, 6, dtype=torch.bool)
    brains[:, 1:4, 2:5] = True
    out = combine_head_and_brain(head, brain, brains).exp()
    torch.testing.assert_close(out.sum(1), torch.ones(2, 5, 6))
    p_head, p_brain = head.softmax(1), brain.softmax(1)
    inside = brains[:, None].expand_as(out)
    torch.testing.assert_close(out[~inside], ((p_head + p_brain) / 2)[~inside])
    torch.testing.assert_close(out[:, 0][brains], p_head[:, 0][brains])  # the head decides what is brain
    division = out[:, 1:] / out[:, 1:].sum(1, keepdim=True)
    expected = (p_head[:, 1:] / p_head[:, 1:].sum(1, keepdim=True) + p_brain[:, 1:] / p_brain[:, 1:].sum(1, keepdim=True)) / 2
    torch.testing.assert_close(division.movedim(1, -1)[brains], expected.movedim(1, -1)[brains])
    # another background channel: the same rule with the channels reordered
    moved = combine_head_and_brain(head.roll(1, 1), brain.roll(1, 1), brains, background_channel=1).exp()
    torch.testing.assert_close(moved, out.roll(1, 1))
    with pytest.raises(ValueError, match=r"brains \(B, \*spatial\), got \(2, 4, 5, 6\), \(2, 4, 5, 6\) and \(2, 5, 5\)"):
        combine_head_and_brain(head, brain, brains[:, :, :5])
    with pytest.raises(ValueError, match=r"background_channel 4 is not a channel of the logits \(4\)"):
        combine_head_and_brain(head, brain, brains, background_channel=4)


def test_head_and_brain_runs_the_flip_tta_s_mirror_run_on_the_stripped_brain() -> None:
    """``final_input="head_and_brain"`` (segmentation 0.8.0): the final pass costs what the flip TTA did, its
    plain run sees the brain-normalised head and its mirror run the stripped brain, flipped."""
    from medmamba.inferers import FlipTTAInferer, combine_head_and_brain

    head, _, _ = _head_and_brain(6)
    seg = _BoxTissue().eval()
    slices = SliceStackInferer(spatial_dim=2, context=0)
    seen: list[torch.Tensor] = []

    def recording(x: torch.Tensor, network: nn.Module) -> torch.Tensor:
        seen.append(x.clone())
        return slices(x, network)

    tta = FlipTTAInferer(recording, spatial_axes=[0])
    inferer = BrainNormalizingInferer(tta, min_voxels=100, tissue_inferer=slices, final_input="head_and_brain")
    with torch.no_grad():
        out = inferer(head[None], seg)
    assert len(seen) == 2  # the flip TTA's two runs, no more
    box = torch.zeros(1, 24, 24, 8, dtype=torch.bool)
    box[:, 6:18, 6:18, :] = True
    normalised = BrainNormalize(min_voxels=100)(head, box[0]).as_tensor()[None]
    torch.testing.assert_close(seen[0], normalised)
    stripped = seen[1].flip(2)  # the mirror run's input, flipped back
    assert torch.unique(stripped[0, 0][~box[0]]).tolist() == [normalised[0, 0][box[0]].min().item()]
    torch.testing.assert_close(stripped[0, 0][box[0]], normalised[0, 0][box[0]])
    with torch.no_grad():
        expected = combine_head_and_brain(slices(seen[0], seg), slices(seen[1], seg).flip(2), box)
    torch.testing.assert_close(out, expected)
    assert inferer.strip_to_brain is False
    assert BrainNormalizingInferer(tta, strip_to_brain=True, final_input="head_and_brain").final_input == "brain"
    with pytest.raises(ValueError, match=r"final_input must be one of \('head', 'brain', 'head_and_brain'\), got 'both'"):
        BrainNormalizingInferer(tta, final_input="both")
    with pytest.raises(ValueError, match="final_input='brain' needs a tissue pass.*tissue_passes=0"):
        BrainNormalizingInferer(tta, tissue_passes=0, final_input="brain")
    # no tissue pass, or no brain found: nothing to strip, the whole flip TTA on the head
    seen.clear()
    with torch.no_grad():
        no_pass = BrainNormalizingInferer(tta, tissue_passes=0, final_input="head_and_brain")(head[None], seg)
        torch.testing.assert_close(no_pass, tta(head[None], seg))
        no_brain = BrainNormalizingInferer(tta, min_voxels=10_000, tissue_inferer=slices, final_input="head_and_brain")(head[None], seg)
        torch.testing.assert_close(no_brain, BrainNormalizingInferer(tta, min_voxels=10_000, tissue_inferer=slices)(head[None], seg))
    with pytest.raises(ValueError, match="combines tissue segmentations; got network_kind='lesion_map'"):
        BrainNormalizingInferer(tta, network_kind="lesion_map", final_input="head_and_brain")


def test_the_flip_tta_s_runs_and_what_its_mirror_runs_see() -> None:
    """``FlipTTAInferer.runs``: the plain run, then each mirror run flipped back; ``mirror_inputs`` is what the
    mirror runs flip (the stripped brain of ``final_input="head_and_brain"``); the TTA averages the runs."""
    from medmamba.inferers import FlipTTAInferer, log_mean_softmax

    seg = _BoxTissue().eval()
    slices = SliceStackInferer(spatial_dim=2, context=0)
    g = torch.Generator().manual_seed(7)
    x, other = torch.randn(1, 1, 24, 24, 8, generator=g), torch.randn(1, 1, 24, 24, 8, generator=g)
    tta = FlipTTAInferer(slices, spatial_axes=[0, 1])
    with torch.no_grad():
        plain, flip0, flip1 = tta.runs(x, seg)
        torch.testing.assert_close(plain, slices(x, seg))
        torch.testing.assert_close(flip0, slices(x.flip(2), seg).flip(2))
        torch.testing.assert_close(flip1, slices(x.flip(3), seg).flip(3))
        torch.testing.assert_close(tta(x, seg), log_mean_softmax([plain, flip0, flip1]))
        same, mirror = FlipTTAInferer(slices, spatial_axes=[0]).runs(x, seg, mirror_inputs=other)
        torch.testing.assert_close(same, plain)
        torch.testing.assert_close(mirror, slices(other.flip(2), seg).flip(2))
        torch.testing.assert_close(FlipTTAInferer(slices, spatial_axes=[])(x, seg), plain)
    with pytest.raises(ValueError, match=r"mirror_inputs must have the inputs' shape \(1, 1, 24, 24, 8\), got \(1, 1, 24, 24, 4\)"):
        list(tta.runs(x, seg, mirror_inputs=other[..., :4]))
    with pytest.raises(ValueError, match=r"spatial_axes \[0, 3\] do not fit the 3 spatial dims"):
        FlipTTAInferer(slices, spatial_axes=[0, 3])(x, seg)
