"""Convolution + BatchNorm units, the BatchNorm-Linear classifier head and the residual wrapper.

These are the fusable units of MobileMamba: at inference every BatchNorm folds into its neighbouring
convolution or linear layer ("normalisation layer fusion" in the paper), see
:func:`medmamba.networks.fuse_norms`.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

from .depthwise_conv import DepthwiseConv2d

__all__ = ["ChannelAffine", "ConvBN", "BNLinear", "Residual", "drop_path_mask", "fuse_conv_bn", "fuse_bn_linear"]


def fuse_conv_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    """Fold an eval-mode BatchNorm2d into the convolution before it.

    ``w' = w·γ/√(σ²+ε)``, ``b' = β + (b − μ)·γ/√(σ²+ε)``.

    Args:
        conv: the convolution (with or without bias).
        bn: the BatchNorm2d that follows it, with running statistics.

    Returns:
        A new ``nn.Conv2d`` with bias that computes ``bn(conv(x))`` in eval mode.
    """
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    fused = nn.Conv2d(
        conv.in_channels,
        conv.out_channels,
        conv.kernel_size,
        stride=conv.stride,
        padding=conv.padding,
        dilation=conv.dilation,
        groups=conv.groups,
        bias=True,
        padding_mode=conv.padding_mode,
    ).to(device=conv.weight.device, dtype=conv.weight.dtype)
    bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
    with torch.no_grad():
        fused.weight.copy_(conv.weight * scale.reshape(-1, 1, 1, 1))
        fused.bias.copy_(bn.bias + (bias - bn.running_mean) * scale)
    return fused


def fuse_bn_linear(bn: nn.BatchNorm1d, linear: nn.Linear) -> nn.Linear:
    """Fold an eval-mode BatchNorm1d into the linear layer after it.

    ``W' = W·diag(γ/√(σ²+ε))``, ``b' = W·(β − μ·γ/√(σ²+ε)) + b``.

    Args:
        bn: the BatchNorm1d applied to the linear layer's input.
        linear: the linear layer.

    Returns:
        A new ``nn.Linear`` that computes ``linear(bn(x))`` in eval mode.
    """
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    shift = bn.bias - bn.running_mean * scale
    fused = nn.Linear(linear.in_features, linear.out_features, bias=True).to(
        device=linear.weight.device, dtype=linear.weight.dtype
    )
    with torch.no_grad():
        fused.weight.copy_(linear.weight * scale[None, :])
        bias = linear.bias if linear.bias is not None else torch.zeros(linear.out_features)
        fused.bias.copy_(linear.weight @ shift + bias)
    return fused


class ChannelAffine(nn.Module):
    """Per-channel ``x · w + b``: a 1×1 depthwise convolution with bias, computed elementwise.

    PyTorch's CPU convolution runs a 1×1 depthwise convolution (``groups == channels``) as one
    convolution per channel, thousands of times slower than this multiply-add.

    Args:
        weight: per-channel scale ``(C,)``.
        bias: per-channel shift ``(C,)``.
    """

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor) -> None:
        super().__init__()
        self.weight = nn.Parameter(weight.detach().reshape(1, -1, 1, 1).clone())
        self.bias = nn.Parameter(bias.detach().reshape(1, -1, 1, 1).clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.addcmul(self.bias, x, self.weight)


class ConvBN(nn.Sequential):
    """A bias-free convolution followed by BatchNorm2d (the paper's ``Conv2d_BN`` unit).

    Args:
        in_channels: input channels.
        out_channels: output channels.
        kernel_size: convolution kernel size.
        stride: convolution stride.
        padding: convolution padding; ``None`` gives ``kernel_size // 2``.
        groups: convolution groups (``groups == in_channels`` for depthwise).
        bn_weight_init: initial BatchNorm weight γ (0 makes a residual branch start as zero).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 1,
        stride: int = 1,
        padding: int | None = None,
        groups: int = 1,
        bn_weight_init: float = 1.0,
    ) -> None:
        padding = kernel_size // 2 if padding is None else padding
        depthwise = groups == in_channels == out_channels and stride == 1 and kernel_size % 2 == 1 and kernel_size > 1
        if depthwise and padding == kernel_size // 2:
            # same parameters as nn.Conv2d; a faster training pass on maps smaller than the kernel
            conv: nn.Conv2d = DepthwiseConv2d(in_channels, kernel_size, bias=False)
        else:
            conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, groups=groups, bias=False)
        super().__init__(OrderedDict(conv=conv, bn=nn.BatchNorm2d(out_channels)))
        nn.init.constant_(self.bn.weight, bn_weight_init)
        nn.init.constant_(self.bn.bias, 0.0)
        # a 1×1 depthwise convolution is a per-channel scale: computed elementwise (same numbers)
        self.channel_scale = kernel_size == 1 and stride == 1 and groups == in_channels == out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.channel_scale:
            return self.bn(x * self.conv.weight.reshape(1, -1, 1, 1))
        return self.bn(self.conv(x))

    @torch.no_grad()
    def fuse(self) -> nn.Module:
        """Return the equivalent single convolution with bias (eval mode only); a per-channel
        :class:`ChannelAffine` for a 1×1 depthwise unit."""
        fused = fuse_conv_bn(self.conv, self.bn)
        if self.channel_scale:
            return ChannelAffine(fused.weight.reshape(-1), fused.bias)
        return fused


class BNLinear(nn.Sequential):
    """BatchNorm1d followed by a linear layer: MobileMamba's classifier head.

    Args:
        in_features: feature width.
        out_features: number of classes.
        std: standard deviation of the truncated-normal weight initialisation.
    """

    def __init__(self, in_features: int, out_features: int, std: float = 0.02) -> None:
        super().__init__(OrderedDict(bn=nn.BatchNorm1d(in_features), linear=nn.Linear(in_features, out_features)))
        nn.init.trunc_normal_(self.linear.weight, std=std)
        nn.init.constant_(self.linear.bias, 0.0)

    @torch.no_grad()
    def fuse(self) -> nn.Linear:
        """Return the equivalent single linear layer (eval mode only)."""
        return fuse_bn_linear(self.bn, self.linear)


def drop_path_mask(x: torch.Tensor, rate: float) -> torch.Tensor:
    """Per-sample stochastic-depth factors ``(B, 1, 1, 1)``: 0 for a dropped sample, else ``1 / (1 - rate)``.

    The reference implementation's draw, ``torch.rand(B) >= rate``, kept instead of
    :class:`monai.networks.layers.DropPath`, whose ``bernoulli_`` draw drops other samples for the same seed.

    Args:
        x: the batch ``(B, ...)`` (its size and device are used).
        rate: probability of dropping a sample, in ``[0, 1)``.

    Returns:
        The float32 factors on ``x``'s device.
    """
    return torch.rand(x.size(0), 1, 1, 1, device=x.device).ge_(rate).div(1 - rate)


class Residual(nn.Module):
    """``x + branch(x)``, with per-sample stochastic depth of the branch in training.

    Args:
        branch: the residual branch.
        drop_rate: probability of dropping the branch for a sample during training.
    """

    def __init__(self, branch: nn.Module, drop_rate: float = 0.0) -> None:
        super().__init__()
        self.branch = branch
        self.drop_rate = float(drop_rate)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and self.drop_rate > 0:
            keep = drop_path_mask(x, self.drop_rate)
            return x + self.branch(x) * keep.detach()
        return x + self.branch(x)
