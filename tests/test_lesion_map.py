from __future__ import annotations

import pytest
import torch
from torch import nn

from medmamba.networks import LesionMapClassifier, MobileMambaSeg, fuse_norms


class _Fixed(nn.Module):
    """Returns the given logits whatever the input (batch taken from the input)."""

    def __init__(self, logits: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("logits", logits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits[: x.shape[0]]


def _logits() -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.randn(2, 3, 5, 4, generator=g)


def test_max_pooling_is_the_highest_pixel_log_odds_against_the_other_classes() -> None:
    z = _logits()
    clf = LesionMapClassifier(_Fixed(z), lesion_channel=-1, pooling="max").eval()
    out = clf(torch.zeros(2, 1, 5, 4))
    expected = (z[:, 2] - torch.logsumexp(z[:, :2], dim=1)).flatten(1).max(dim=1).values
    assert out.shape == (2, 2)
    assert torch.equal(out[:, 0], torch.zeros(2))
    torch.testing.assert_close(out[:, 1], expected)


def test_topk_mean_and_lesion_channel_index() -> None:
    z = _logits()
    clf = LesionMapClassifier(_Fixed(z), lesion_channel=0, pooling="topk", top_k=3).eval()
    lo = (z[:, 0] - torch.logsumexp(z[:, 1:], dim=1)).flatten(1)
    expected = lo.sort(dim=1, descending=True).values[:, :3].mean(dim=1)
    torch.testing.assert_close(clf(torch.zeros(2, 1, 5, 4))[:, 1], expected)
    # the map itself
    torch.testing.assert_close(clf.lesion_map(torch.zeros(2, 1, 5, 4)).flatten(1), lo)


def test_two_class_network_gives_the_logit_difference() -> None:
    z = _logits()[:, :2]
    clf = LesionMapClassifier(_Fixed(z), pooling="mean").eval()
    torch.testing.assert_close(clf(torch.zeros(2, 1, 5, 4))[:, 1], (z[:, 1] - z[:, 0]).flatten(1).mean(dim=1))


def test_mobilemamba_seg_wrapper_scripts_and_fuses_with_equal_outputs() -> None:
    torch.manual_seed(0)
    clf = LesionMapClassifier(MobileMambaSeg("t2", in_channels=3, out_channels=5), pooling="topk", top_k=4).eval()
    x = torch.randn(2, 3, 64, 80)
    with torch.no_grad():
        eager = clf(x)
        scripted = torch.jit.script(clf)(x)
        fused = fuse_norms(clf)(x)
    assert eager.shape == (2, 2)
    torch.testing.assert_close(scripted, eager)
    torch.testing.assert_close(fused, eager, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"network": "seg"}, TypeError, "network must be an nn.Module, got str"),
        ({"pooling": "avg"}, ValueError, "pooling='avg' is not valid"),
        ({"pooling": None}, ValueError, "pooling=None is not valid"),
        ({"top_k": 0}, ValueError, "top_k=0 is not valid"),
        ({"readout": "head"}, ValueError, "readout='head' is not valid"),
        ({"readout": "brain", "background_channel": "0"}, ValueError, "background_channel='0' is not valid"),
    ],
)
def test_invalid_arguments_name_the_argument(kwargs: dict, error: type, match: str) -> None:
    args = {"network": _Fixed(_logits())} | kwargs
    with pytest.raises(error, match=match):
        LesionMapClassifier(**args)


def test_single_channel_output_is_an_error() -> None:
    clf = LesionMapClassifier(_Fixed(torch.zeros(2, 1, 3, 3)))
    with pytest.raises(ValueError, match="returned 1 channel"):
        clf(torch.zeros(2, 1, 3, 3))


def test_brain_readout_pools_only_where_a_tissue_class_beats_the_background() -> None:
    # 4 classes: background, CSF, tissue, lesion; pixel (0, 0) is outside (background strongest after
    # the lesion) but has the highest lesion log-odds, pixel (1, 1) is inside with a lower one
    z = torch.zeros(1, 4, 2, 2)
    z[0, 0] = torch.tensor([[5.0, 5.0], [5.0, 0.0]])
    z[0, 1] = torch.tensor([[0.0, 0.0], [0.0, 2.0]])
    z[0, 3] = torch.tensor([[9.0, 1.0], [1.0, 4.0]])
    image = LesionMapClassifier(_Fixed(z), lesion_channel=-1, readout="image").eval()(torch.zeros(1, 1, 2, 2))
    brain = LesionMapClassifier(_Fixed(z), lesion_channel=-1, readout="brain").eval()
    expected_image = 9.0 - torch.logsumexp(torch.tensor([5.0, 0.0, 0.0]), 0)
    expected_brain = 4.0 - torch.logsumexp(torch.tensor([0.0, 2.0, 0.0]), 0)
    torch.testing.assert_close(image[0, 1], expected_image)
    torch.testing.assert_close(brain(torch.zeros(1, 1, 2, 2))[0, 1], expected_brain)
    lesion_map = brain.lesion_map(torch.zeros(1, 1, 2, 2))
    assert (lesion_map[0, 0, :] == -1.0e4).all() and lesion_map[0, 1, 0] == -1.0e4
    torch.testing.assert_close(torch.jit.script(brain)(torch.zeros(1, 1, 2, 2)), brain(torch.zeros(1, 1, 2, 2)))


def test_brain_readout_needs_background_tissue_and_lesion_channels() -> None:
    clf = LesionMapClassifier(_Fixed(torch.zeros(1, 2, 3, 3)), readout="brain")
    with pytest.raises(ValueError, match="needs background, tissue and lesion channels; the network returned 2"):
        clf(torch.zeros(1, 1, 3, 3))
    same = LesionMapClassifier(_Fixed(torch.zeros(1, 3, 3, 3)), lesion_channel=0, readout="brain")
    with pytest.raises(ValueError, match="name the same channel"):
        same(torch.zeros(1, 1, 3, 3))
