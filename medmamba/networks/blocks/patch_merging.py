"""PatchMerging: MobileMamba's stride-2 downsampling between stages, with squeeze-and-excitation."""

from __future__ import annotations

import torch
from torch import nn

from .conv_bn import ConvBN

__all__ = ["PatchMerging", "SqueezeExcite", "make_divisible"]


def make_divisible(value: float, divisor: int = 8, min_value: int | None = None) -> int:
    """Round ``value`` to the nearest multiple of ``divisor`` (halves up), at least ``min_value``."""
    min_value = divisor if min_value is None else min_value
    return max(min_value, int(value + divisor / 2) // divisor * divisor)


class SqueezeExcite(nn.Module):
    """Squeeze-and-excitation channel gate: mean over H, W → 1×1 conv → ReLU → 1×1 conv → sigmoid.

    Args:
        channels: gated width.
        reduction_ratio: bottleneck width as a fraction of ``channels`` (rounded to a multiple of 8).
    """

    def __init__(self, channels: int, reduction_ratio: float = 0.25) -> None:
        super().__init__()
        reduced = make_divisible(channels * reduction_ratio, 8)
        self.fc1 = nn.Conv2d(channels, reduced, 1, bias=True)
        self.act = nn.ReLU()
        self.fc2 = nn.Conv2d(reduced, channels, 1, bias=True)
        self.gate = nn.Sigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = x.mean((2, 3), keepdim=True)
        return x * self.gate(self.fc2(self.act(self.fc1(scale))))


class PatchMerging(nn.Module):
    """Inverted-bottleneck downsampling (stride 2) from one stage's width to the next.

    ``conv-BN(a→4a, 1)``, ReLU, depthwise ``conv-BN(3×3, stride 2)``, ReLU, squeeze-excite,
    ``conv-BN(4a→b, 1)``.

    Args:
        in_channels: width ``a`` of the previous stage.
        out_channels: width ``b`` of the next stage.
    """

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        hidden = 4 * in_channels
        self.expand = ConvBN(in_channels, hidden, 1)
        self.act1 = nn.ReLU()
        self.dw_conv = ConvBN(hidden, hidden, 3, stride=2, groups=hidden)
        self.act2 = nn.ReLU()
        self.se = SqueezeExcite(hidden, 0.25)
        self.project = ConvBN(hidden, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act2(self.dw_conv(self.act1(self.expand(x))))
        return self.project(self.se(x))
