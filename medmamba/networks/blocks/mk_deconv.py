"""MK-DeConv: the multi-kernel depthwise convolution of MRFFI's local branch."""

from __future__ import annotations

import torch
from torch import nn

from .conv_bn import ConvBN

__all__ = ["MKDeConv"]


class MKDeConv(nn.Module):
    """Multi-kernel depthwise ("de"-composed) convolution for local features.

    ``depthwise conv k×k`` + BN, ReLU, ``depthwise conv 1×1`` + BN. The kernel size differs per stage
    (7, 5, 3 in MobileMamba), which gives the network its multiple receptive fields.

    Args:
        channels: number of local channels ``Cl``.
        kernel_size: depthwise kernel size ``k``.
    """

    def __init__(self, channels: int, kernel_size: int) -> None:
        super().__init__()
        self.spatial = ConvBN(channels, channels, kernel_size, groups=channels)
        self.act = nn.ReLU()
        self.pointwise = ConvBN(channels, channels, 1, groups=channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pointwise(self.act(self.spatial(x)))
