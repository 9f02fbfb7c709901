"""WTE-Mamba: the wavelet-transform-enhanced Mamba global branch of MRFFI."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .depthwise_conv import DepthwiseConv2d
from .selective_scan_2d import SelectiveScan2D
from .wavelet import (
    haar_transform,
    inverse_haar_transform,
    inverse_wavelet_transform,
    is_haar,
    wavelet_filters,
    wavelet_transform,
)

__all__ = ["WTEMamba"]


class WTEMamba(nn.Module):
    """Wavelet-transform-enhanced Mamba (WTE-Mamba).

    ``out = s ⊙ SS2D(x) + IWT(t ⊙ DWConv_k(WT(x)))``: the selective scan captures global context, while
    a depthwise convolution on the Haar sub-bands at half resolution strengthens high-frequency
    (edge) detail. Odd ``H`` or ``W`` is zero-padded at the bottom/right before the transform and the
    reconstruction is cropped back.

    The analysis/synthesis filters ``wt_filter``/``iwt_filter`` are fixed (``requires_grad=False``)
    parameters, as in the reference implementation, so parameter counts and checkpoints match it. For
    the Haar wavelet on the CPU the transforms run as sums and differences (:func:`haar_transform`),
    the same sub-bands as the convolutions to float rounding and 2.3-4.3x cheaper on a stage's small
    maps (``benchmarks/bench_wavelet.py``), as long as the filters hold their built values (checked
    per call; changed filters take the convolutions); on other devices and while compiling
    (``torch.export``) the convolutions run.

    Args:
        channels: global channels ``Cg``.
        kernel_size: kernel of the depthwise convolution on the sub-bands.
        ssm_ratio: SS2D expansion ratio.
        wavelet: PyWavelets name of the wavelet (MobileMamba: ``"db1"``, Haar).
        scan_backend: selective-scan backend of the SS2D.
    """

    def __init__(
        self,
        channels: int,
        kernel_size: int,
        ssm_ratio: float = 2.0,
        wavelet: str = "db1",
        scan_backend: str = "auto",
    ) -> None:
        super().__init__()
        dec, rec = wavelet_filters(wavelet, channels)
        self.wt_filter = nn.Parameter(dec, requires_grad=False)
        self.iwt_filter = nn.Parameter(rec, requires_grad=False)
        self.haar = is_haar(wavelet)  # sums and differences instead of (transposed) convolutions
        # the filters as built (not saved in checkpoints): the arithmetic Haar runs only while the
        # parameters still hold them, so that changed filters are always applied as they are
        # (two 4D buffers: a network converted to channels-last converts every 4D tensor it holds)
        self.register_buffer("haar_wt_filter", dec.clone(), persistent=False)
        self.register_buffer("haar_iwt_filter", rec.clone(), persistent=False)
        self.ssm = SelectiveScan2D(channels, ssm_ratio=ssm_ratio, scan_backend=scan_backend)
        self.ssm_scale = nn.Parameter(torch.ones(1, channels, 1, 1))
        self.wavelet_conv = DepthwiseConv2d(4 * channels, kernel_size, bias=False)
        self.wavelet_scale = nn.Parameter(torch.full((1, 4 * channels, 1, 1), 0.1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[2], x.shape[3]
        xw = x
        if torch.compiler.is_compiling():
            # one graph for odd and even sizes (torch.export, torch.compile): pad to even plus two zero
            # rows/columns, which the wavelet and the depthwise conv see as their own zero padding (same
            # outputs); a pad that may be zero would specialise the graph on the parity of the map
            xw = F.pad(x, (0, 2 - w % 2, 0, 2 - h % 2))
        elif h % 2 == 1 or w % 2 == 1:
            xw = F.pad(x, (0, w % 2, 0, h % 2))
        # the arithmetic Haar on the CPU in eager mode and TorchScript (measured there); the convolutions
        # on other devices (cuDNN; the filter check would synchronise per call) and while compiling
        # (torch.export with symbolic sizes cannot reason about the strided halves)
        haar = (
            self.haar
            and x.device.type == "cpu"
            and not torch.compiler.is_compiling()
            and torch.equal(self.wt_filter, self.haar_wt_filter)
            and torch.equal(self.iwt_filter, self.haar_iwt_filter)
        )
        if haar:
            bands = haar_transform(xw, self.wt_filter)
        else:
            bands = wavelet_transform(xw, self.wt_filter)
        bands = self.wavelet_conv(bands) * self.wavelet_scale
        if haar:
            detail = inverse_haar_transform(bands, self.iwt_filter)[:, :, :h, :w]
        else:
            detail = inverse_wavelet_transform(bands, self.iwt_filter)[:, :, :h, :w]
        return self.ssm(x) * self.ssm_scale + detail
