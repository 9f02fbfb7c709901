"""MRFFI: multi-receptive-field feature interaction, MobileMamba's token mixer."""

from __future__ import annotations

import math

import torch
from torch import nn

from .conv_bn import ConvBN
from .mk_deconv import MKDeConv
from .wte_mamba import WTEMamba

__all__ = ["MRFFI", "split_channels"]


def split_channels(channels: int, global_ratio: float, local_ratio: float) -> tuple[int, int, int]:
    """The ``[Cg | Cl | Ci]`` channel split of MRFFI.

    ``Cg`` is ``floor(global_ratio·C)`` rounded to the nearest multiple of 16 (ties up); ``Cl`` is
    ``floor(local_ratio·C)`` unless that overflows ``C``, then ``C − Cg``; ``Ci`` is the rest.

    Args:
        channels: block width ``C``.
        global_ratio: share of channels for the WTE-Mamba global branch.
        local_ratio: share of channels for the MK-DeConv local branch.

    Returns:
        ``(global_channels, local_channels, identity_channels)``.
    """
    cg = int(math.floor(math.floor(global_ratio * channels) / 16 + 0.5)) * 16
    cl = int(math.floor(local_ratio * channels))
    if cg + cl > channels:
        cl = channels - cg
    ci = channels - cg - cl
    if cg < 0 or cl < 0 or ci < 0:
        raise ValueError(
            f"global_ratio={global_ratio} and local_ratio={local_ratio} give an impossible channel split "
            f"({cg}, {cl}, {ci}) of {channels} channels; expected ratios in [0, 1] with a sum ≤ 1."
        )
    return cg, cl, ci


class MRFFI(nn.Module):
    """Multi-receptive-field feature interaction.

    Splits the channels into a global part (WTE-Mamba: long-range context plus wavelet-enhanced
    high frequencies), a local part (MK-DeConv, kernel ``k``) and an identity part left untouched
    ("eliminate redundant identity"), concatenates them, then ReLU and a zero-initialised
    ``conv-BN(C→C, 1)`` projection.

    Args:
        channels: block width ``C``.
        global_ratio: share of channels for the global branch.
        local_ratio: share of channels for the local branch.
        kernel_size: kernel ``k`` of MK-DeConv and of the WTE-Mamba sub-band convolution.
        ssm_ratio: SS2D expansion ratio.
        scan_backend: selective-scan backend.
    """

    def __init__(
        self,
        channels: int,
        global_ratio: float,
        local_ratio: float,
        kernel_size: int,
        ssm_ratio: float = 2.0,
        scan_backend: str = "auto",
    ) -> None:
        super().__init__()
        self.global_channels, self.local_channels, self.identity_channels = split_channels(
            channels, global_ratio, local_ratio
        )
        self.global_branch = (
            WTEMamba(self.global_channels, kernel_size, ssm_ratio=ssm_ratio, scan_backend=scan_backend)
            if self.global_channels > 0
            else nn.Identity()
        )
        self.local_branch = MKDeConv(self.local_channels, kernel_size) if self.local_channels > 0 else nn.Identity()
        self.act = nn.ReLU()
        self.proj = ConvBN(channels, channels, 1, bn_weight_init=0.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xg, xl, xi = torch.split(x, [self.global_channels, self.local_channels, self.identity_channels], dim=1)
        return self.proj(self.act(torch.cat([self.global_branch(xg), self.local_branch(xl), xi], dim=1)))
