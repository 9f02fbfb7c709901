"""Contrast polarity: the inversion, the tissue map's fit, and the inferer that chooses between them."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from medmamba.inferers import (
    ContrastPolarityInferer,
    TissueMapFit,
    analysed_polarity,
    find_inferer,
    invert_contrast,
    prefers_inverted,
    tissue_map_fit,
)

#: normalised T1 values of the phantom's classes: background (the clip floor), CSF, grey, white matter
T1_MEANS = torch.tensor([-2.0, -1.0, 0.0, 1.0])


def _labels() -> torch.Tensor:
    """(20, 20, 6) labels: background around a scalp ring (3, like grey matter) around CSF, grey matter
    and a white-matter centre."""
    label = torch.zeros(20, 20, 6, dtype=torch.long)
    label[2:18, 2:18] = 2  # scalp, as bright as grey matter
    label[4:16, 4:16] = 1
    label[5:15, 5:15] = 2
    label[8:12, 8:12] = 3
    return label


def _t1_volume(seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = T1_MEANS[_labels()] + 0.05 * torch.randn(20, 20, 6, generator=g)
    x[_labels() == 0] = -2.0
    return x[None]


class T1Reader(nn.Module):
    """A stand-in for a network trained on T1 only: where the volume's centre is bright (a T1 brain's
    white matter), each voxel gets the class of the nearest T1 mean, confidently; elsewhere it is
    unsure (small random logits)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = []
        for v in x:
            if float(v[0, 8:12, 8:12].mean()) > 0.5:
                out.append(-8.0 * (v[0][None] - T1_MEANS.view(4, 1, 1, 1)) ** 2)
            else:
                g = torch.Generator().manual_seed(0)
                out.append(0.3 * torch.randn(4, *v.shape[1:], generator=g))
        return torch.stack(out)


def _volume_inferer(x: torch.Tensor, network: nn.Module) -> torch.Tensor:
    return network(x)


class Recorder:
    """An inferer that records what it was given and returns it."""

    def __init__(self) -> None:
        self.calls: list[torch.Tensor] = []

    def __call__(self, x: torch.Tensor, network: nn.Module) -> torch.Tensor:
        self.calls.append(x.clone())
        return x


def test_inversion_mirrors_the_head_and_keeps_the_background_darkest() -> None:
    x = _t1_volume()
    head = _labels() > 0
    x[0, 9, 9, 2] = -2.0  # a voxel at the clip floor inside the head (dark CSF) stays head
    y = invert_contrast(x)
    assert y.shape == x.shape and y.dtype == torch.float32
    torch.testing.assert_close(y[0][head], -x[0][head])
    assert float(y[0, 9, 9, 2]) == pytest.approx(2.0)
    assert torch.all(y[0][~head] == y[0][head].min())
    # the white matter is now the darkest tissue and the CSF the brightest, as on a T2 scan
    label = _labels()
    assert float(y[0][label == 3].mean()) < float(y[0][label == 2].mean()) < float(y[0][label == 1].mean())
    # twice is the head as given (the background then sits at the head's minimum)
    torch.testing.assert_close(invert_contrast(y)[0][head], x[0][head])


def test_inversion_of_2d_and_constant_channels_and_its_errors() -> None:
    x = _t1_volume()[..., 3]  # (1, 20, 20)
    torch.testing.assert_close(invert_contrast(x)[0][_labels()[..., 3] > 0], -x[0][_labels()[..., 3] > 0])
    flat = torch.full((1, 4, 4, 4), 3.0)
    torch.testing.assert_close(invert_contrast(flat), flat)
    with pytest.raises(ValueError, match=r"volume must be \(C, \*spatial\).*got shape \(4, 4\)"):
        invert_contrast(torch.zeros(4, 4))


def test_the_fit_of_a_tissue_map_that_follows_the_intensities() -> None:
    x = _t1_volume()
    label = _labels()
    exact = torch.nn.functional.one_hot(label, 4).permute(3, 0, 1, 2).float() * 20.0
    fit = tissue_map_fit(x, exact)
    assert isinstance(fit, TissueMapFit)
    assert fit.brain_voxels == int((label > 0).sum())
    assert 0.98 < fit.explained < 1.0 and fit.confidence == pytest.approx(1.0, abs=1e-6)  # noise is unexplained
    noiseless = T1_MEANS[label][None]
    assert tissue_map_fit(noiseless, exact).explained == pytest.approx(1.0, abs=1e-12)
    # one tissue class for the whole brain explains nothing; a uniform map is unsure
    one = torch.zeros(4, *label.shape)
    one[2] = 1.0
    fit = tissue_map_fit(x, one)
    assert fit.explained == pytest.approx(0.0, abs=1e-9)
    assert fit.confidence == pytest.approx(float(torch.softmax(torch.tensor([0.0, 0.0, 1.0, 0.0]), 0)[2]))
    # no brain at all
    bg = torch.zeros(4, *label.shape)
    bg[0] = 1.0
    assert tissue_map_fit(x, bg) == TissueMapFit(explained=0.0, confidence=0.0, brain_voxels=0)


def test_the_fit_names_shape_and_channel_errors() -> None:
    x = _t1_volume()
    with pytest.raises(ValueError, match=r"logits must be \(K, \*spatial\) of the volume \(1, 20, 20, 6\), got \(4, 20, 20, 5\)"):
        tissue_map_fit(x, torch.zeros(4, 20, 20, 5))
    with pytest.raises(ValueError, match="background_channel 4 is not a channel of the logits \\(4\\)"):
        tissue_map_fit(x, torch.zeros(4, 20, 20, 6), background_channel=4)


def test_inverting_needs_both_the_explained_variance_and_the_confidence() -> None:
    given = TissueMapFit(explained=0.40, confidence=0.80, brain_voxels=100)
    assert prefers_inverted(given, TissueMapFit(0.50, 0.89, 100))  # a T2-like head: both gain
    # a strongly biased, noisy T1 head: more variance explained inverted, hardly more confidence
    assert not prefers_inverted(given, TissueMapFit(0.70, 0.82, 100))
    # a real head with a strong bias field: more confidence inverted, much less variance explained
    assert not prefers_inverted(given, TissueMapFit(0.22, 0.857, 100))
    assert not prefers_inverted(given, TissueMapFit(0.50, 0.84, 100))  # below the 0.05 confidence margin
    assert prefers_inverted(given, TissueMapFit(0.50, 0.84, 100), min_confidence_gain=0.03)
    assert not prefers_inverted(given, TissueMapFit(0.50, 0.89, 100), min_explained_gain=0.2)


def test_a_t1_volume_goes_on_as_given_and_an_inverted_one_inverted() -> None:
    t1 = _t1_volume()
    t2 = invert_contrast(_t1_volume(1))  # CSF bright, white matter dark
    recorder = Recorder()
    inferer = ContrastPolarityInferer(recorder, probe_inferer=_volume_inferer)
    batch = torch.stack([t1, t2])
    assert inferer.choose(batch, T1Reader()) == [False, True]
    out = inferer(batch, T1Reader())
    assert len(recorder.calls) == 1
    torch.testing.assert_close(out[0], t1)  # exactly as given
    head = _labels() > 0
    torch.testing.assert_close(out[1][0][head], _t1_volume(1)[0][head])  # back to T1 order
    given, inverted = inferer.fits(t2, T1Reader())
    assert inverted.explained > given.explained + 0.5 and inverted.confidence > given.confidence + 0.3
    assert inferer.last_polarities == ["given", "inverted"]  # what the reports show per case


def test_the_reports_polarity_is_that_of_the_last_call_anywhere_in_the_chain() -> None:
    """``analysed_polarity`` finds the check under a predictor's ``.inferer`` links and reads its last call."""

    class Link:
        def __init__(self, inferer: object) -> None:
            self.inferer = inferer

    check = ContrastPolarityInferer(Recorder(), probe_inferer=_volume_inferer)
    predictor = Link(Link(check))
    assert find_inferer(predictor, ContrastPolarityInferer) is check
    assert find_inferer(predictor, ContrastPolarityInferer, max_depth=1) is None  # two links away
    assert analysed_polarity(predictor) is None  # not called yet: no record
    check(invert_contrast(_t1_volume())[None], T1Reader())
    assert analysed_polarity(predictor) == "inverted"
    check(_t1_volume()[None], T1Reader())
    assert analysed_polarity(predictor) == "given" and analysed_polarity(predictor, index=1) is None
    assert analysed_polarity(Link(Recorder())) == "given"  # no check: nothing inverts the volume
    always = ContrastPolarityInferer(Recorder(), polarity="inverted")
    always(_t1_volume()[None], T1Reader())
    assert analysed_polarity(always) == "inverted"
    with pytest.raises(TypeError, match="kind must be a class, got str"):
        find_inferer(predictor, "ContrastPolarityInferer")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="max_depth must be a non-negative int, got -1"):
        find_inferer(predictor, ContrastPolarityInferer, max_depth=-1)


def test_polarity_given_skips_the_probe_and_inverted_always_inverts() -> None:
    probes = []

    def probe(x: torch.Tensor, network: nn.Module) -> torch.Tensor:
        probes.append(x)
        return network(x)

    t1 = _t1_volume()[None]
    given = ContrastPolarityInferer(Recorder(), probe_inferer=probe, polarity="given")
    torch.testing.assert_close(given(t1, T1Reader()), t1)
    assert probes == []
    inverted = ContrastPolarityInferer(Recorder(), probe_inferer=probe, polarity="inverted")
    torch.testing.assert_close(inverted(t1, T1Reader()), invert_contrast(t1[0])[None])
    assert probes == []


def test_a_fixed_probe_network_replaces_the_called_one() -> None:
    """The classification bundle probes with the segmentation network, not its lesion-map classifier."""
    t2 = invert_contrast(_t1_volume())[None]
    probe = T1Reader().train()
    inferer = ContrastPolarityInferer(Recorder(), probe_inferer=_volume_inferer, probe_network=probe)
    assert not probe.training  # put in inference mode once
    assert inferer.choose(t2, nn.Identity()) == [True]


def test_constructor_errors_name_the_argument() -> None:
    with pytest.raises(ValueError, match=r"polarity must be one of \('auto', 'given', 'inverted'\), got 'T2'"):
        ContrastPolarityInferer(Recorder(), polarity="T2")
    with pytest.raises(ValueError, match="min_confidence_gain must be a number >= 0, got -0.1"):
        ContrastPolarityInferer(Recorder(), min_confidence_gain=-0.1)
    with pytest.raises(TypeError, match="probe_inferer must be callable, got int"):
        ContrastPolarityInferer(Recorder(), probe_inferer=3)


def test_the_bundle_helper_reads_the_segmentation_bundle_only_for_auto(tmp_path) -> None:
    from medmamba.apps.brain_extraction import contrast_polarity_inferer

    recorder = Recorder()
    missing = tmp_path / "no_segmentation_bundle"
    assert contrast_polarity_inferer(recorder, "given", missing) is recorder
    inverted = contrast_polarity_inferer(recorder, "inverted", missing)
    assert isinstance(inverted, ContrastPolarityInferer) and inverted.polarity == "inverted"
    with pytest.raises(ValueError, match=r"polarity must be one of \('auto', 'given', 'inverted'\), got 'T1'"):
        contrast_polarity_inferer(recorder, "T1", missing)
    with pytest.raises(ValueError, match="has no configs/inference.json.*--contrast_polarity given skips it"):
        contrast_polarity_inferer(recorder, "auto", missing)


def test_the_probe_s_slice_sample_is_centred_and_never_empty() -> None:
    from medmamba.inferers import probe_slices

    assert probe_slices(10, 4) == [2, 6]
    assert probe_slices(9, 3) == [1, 4, 7]
    assert probe_slices(5, 1) == [0, 1, 2, 3, 4]
    assert probe_slices(3, 8) == [1]  # shorter than the step: its middle slice
    assert probe_slices(1, 3) == [0]
    with pytest.raises(ValueError, match="step must be a positive int, got 0"):
        probe_slices(10, 0)
    with pytest.raises(ValueError, match="num_slices must be a positive int, got 0"):
        probe_slices(0, 2)
