"""DepthwiseConv2d: the cropped/padded training form equals nn.Conv2d, values and gradients."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from medmamba.networks.blocks import ConvBN, DepthwiseConv2d, small_map_depthwise_conv2d


@pytest.mark.parametrize(
    ("size", "kernel"), [((1, 1), 3), ((2, 2), 5), ((2, 2), 3), ((2, 3), 7), ((3, 3), 7), ((4, 4), 7), ((6, 5), 3)]
)
@pytest.mark.parametrize("bias", [True, False])
def test_small_map_form_equals_convolution(size: tuple[int, int], kernel: int, bias: bool) -> None:
    torch.manual_seed(0)
    x = torch.randn(3, 8, *size)
    w = torch.randn(8, 1, kernel, kernel)
    b = torch.randn(8) if bias else None
    expected = F.conv2d(x, w, b, padding=kernel // 2, groups=8)
    got = small_map_depthwise_conv2d(x, w, b)
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize(("size", "kernel"), [((2, 2), 5), ((1, 1), 3), ((4, 4), 3), ((3, 2), 7)])
def test_training_pass_matches_conv2d_values_and_gradients(size: tuple[int, int], kernel: int) -> None:
    torch.manual_seed(1)
    ours = DepthwiseConv2d(6, kernel, bias=True)
    plain = nn.Conv2d(6, 6, kernel, padding=kernel // 2, groups=6, bias=True)
    plain.load_state_dict(ours.state_dict())
    x1 = torch.randn(2, 6, *size, requires_grad=True)
    x2 = x1.detach().clone().requires_grad_(True)
    g = torch.randn(2, 6, *size)
    y1, y2 = ours(x1), plain(x2)
    (y1 * g).sum().backward()
    (y2 * g).sum().backward()
    torch.testing.assert_close(y1, y2, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(x1.grad, x2.grad, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(ours.weight.grad, plain.weight.grad, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ours.bias.grad, plain.bias.grad, rtol=1e-5, atol=1e-5)


def test_same_state_dict_keys_as_conv2d_and_scriptable() -> None:
    ours = DepthwiseConv2d(4, 3, bias=False)
    assert list(ours.state_dict()) == ["weight"]
    assert tuple(ours.weight.shape) == (4, 1, 3, 3)
    scripted = torch.jit.script(ours.eval())
    x = torch.randn(1, 4, 2, 2)
    torch.testing.assert_close(scripted(x), F.conv2d(x, ours.weight, padding=1, groups=4))


def test_conv_bn_uses_it_only_for_stride_one_depthwise() -> None:
    assert isinstance(ConvBN(8, 8, 3, groups=8).conv, DepthwiseConv2d)
    assert not isinstance(ConvBN(8, 8, 3, stride=2, groups=8).conv, DepthwiseConv2d)
    assert not isinstance(ConvBN(8, 16, 3).conv, DepthwiseConv2d)


@pytest.mark.parametrize(("channels", "kernel", "match"), [(4, 4, "kernel_size"), (0, 3, "channels")])
def test_bad_arguments_are_named(channels: int, kernel: int, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        DepthwiseConv2d(channels, kernel)
