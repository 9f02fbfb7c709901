"""The pointwise feed-forward network (FFN) of MobileMamba blocks."""

from __future__ import annotations

import torch
from torch import nn

from .conv_bn import ConvBN

__all__ = ["FeedForward"]


class FeedForward(nn.Module):
    """Pointwise FFN: ``conv-BN(e→h, 1)``, ReLU, ``conv-BN(h→e, 1)`` (the second BN starts at 0).

    Args:
        channels: input and output width ``e``.
        hidden_channels: hidden width ``h`` (MobileMamba uses ``2e``).
    """

    def __init__(self, channels: int, hidden_channels: int) -> None:
        super().__init__()
        self.fc1 = ConvBN(channels, hidden_channels)
        self.act = nn.ReLU()
        self.fc2 = ConvBN(hidden_channels, channels, bn_weight_init=0.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))
