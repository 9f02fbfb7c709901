"""LabelMap(d): the same label map as MONAI's AsDiscrete(argmax=True), meta data kept."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from monai.transforms import AsDiscrete

from medmamba.transforms import LabelMap, LabelMapd, MRNormalize, argmax_in, channel_argmax


def test_label_map_equals_monai_as_discrete_argmax() -> None:
    g = torch.Generator().manual_seed(0)
    scores = MetaTensor(torch.rand(4, 9, 7, 5, generator=g), affine=torch.diag(torch.tensor([2.0, 2.0, 3.0, 1.0])))
    scores[:, 0, 0, 0] = 0.5  # a four-way tie: the first channel wins in both
    expected = AsDiscrete(argmax=True)(scores)
    got = LabelMap()(scores)
    assert got.dtype == expected.dtype == torch.float32
    assert tuple(got.shape) == (1, 9, 7, 5)
    assert torch.equal(got.as_tensor(), expected.as_tensor())
    assert float(got[0, 0, 0, 0]) == 0.0
    assert torch.equal(got.affine, scores.affine)


def test_label_map_dict_and_plain_tensor() -> None:
    scores = torch.zeros(3, 2, 2)
    scores[2, 1, 1] = 1.0
    scores[1, 0, 1] = 1.0
    out = LabelMapd("pred")({"pred": scores, "other": 1})
    assert out["other"] == 1
    assert out["pred"].tolist() == [[[0.0, 1.0], [0.0, 2.0]]]


def test_channel_argmax_rejects_a_tensor_without_channels() -> None:
    with pytest.raises(ValueError, match="channel-first"):
        channel_argmax(torch.zeros(5))


def test_mr_normalize_statistics_over_clipped_foreground() -> None:
    g = torch.Generator().manual_seed(3)
    img = torch.rand(1, 20, 20, 10, generator=g) * 100
    img[:, :5] = 0
    out = MRNormalize(lower=1, upper=99)(img)[0]
    x = img[0]
    fg = x > float(np.percentile(x.numpy(), 99)) * 0.1
    lo, hi = np.percentile(x[fg].numpy(), [1, 99])
    y = x.clamp(float(lo), float(hi))
    expected = (y - y[fg].mean()) / y[fg].std()
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    assert abs(float(out[fg].mean())) < 1e-5 and abs(float(out[fg].std()) - 1.0) < 1e-5


def test_argmax_in_says_whether_the_winning_channel_is_one_of_the_given() -> None:
    scores = torch.tensor([[0.6, 0.1, 0.2], [0.3, 0.7, 0.2], [0.1, 0.2, 0.6]])[:, :, None]  # (3 channels, 3, 1)
    assert argmax_in(scores, [1, 2])[:, 0].tolist() == [False, True, True]
    assert argmax_in(scores, [0])[:, 0].tolist() == [True, False, False]
    assert torch.equal(argmax_in(scores, [1, 2]), channel_argmax(scores)[0] > 0)
