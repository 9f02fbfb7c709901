"""Depthwise convolution that stays fast when the feature map is smaller than the kernel.

MobileMamba's late stages run depthwise convolutions with kernels of 3 to 7 on maps of 1×1 to 4×4
pixels (a 128×128 slice reaches 2×2 at stride 64, and the wavelet branch halves that again). There,
the zero padding is larger than the map, and the CPU backward pass of PyTorch's oneDNN depthwise
convolution falls onto a slow path: a ``32×768×2×2`` map with a 5×5 kernel takes 13–20 ms for its
forward and backward pass with AVX2 kernels (5–6 ms with AVX-512) where the same arithmetic laid out
as below takes 1–1.5 ms (``benchmarks/bench_cpu_traps.py``, ``docs/benchmarks.md``).

:class:`DepthwiseConv2d` computes exactly the same numbers in training by (1) cropping the kernel
to the taps that can reach a pixel of the map (a tap further than ``size - 1`` from the centre only
ever multiplies padding zeros) and (2) padding explicitly, so the convolution itself runs without
padding. Inference, TorchScript, tracing and export use the ordinary convolution unchanged.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["DepthwiseConv2d", "small_map_depthwise_conv2d"]


def small_map_depthwise_conv2d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """Stride-1 depthwise convolution with "same" zero padding, by kernel cropping and explicit padding.

    Equal to ``F.conv2d(x, weight, bias, padding=k // 2, groups=C)`` for an odd square or rectangular
    kernel: the taps cropped away multiply only padding zeros.

    Args:
        x: Input ``(N, C, H, W)``.
        weight: Depthwise kernel ``(C, 1, kH, kW)`` with odd ``kH`` and ``kW``.
        bias: Per-channel bias ``(C,)`` or ``None``.

    Returns:
        The convolution's output, ``(N, C, H, W)``.
    """
    h, w = int(x.shape[2]), int(x.shape[3])
    kh, kw = int(weight.shape[2]), int(weight.shape[3])
    eh, ew = min(kh, 2 * h - 1), min(kw, 2 * w - 1)
    if eh < kh or ew < kw:
        oh, ow = (kh - eh) // 2, (kw - ew) // 2
        weight = weight[:, :, oh : oh + eh, ow : ow + ew]
    ph, pw = eh // 2, ew // 2
    return F.conv2d(F.pad(x, (pw, pw, ph, ph)), weight, bias, groups=int(x.shape[1]))


class DepthwiseConv2d(nn.Conv2d):
    """A stride-1 depthwise ``nn.Conv2d`` with "same" padding whose training pass is fast on small maps.

    Same parameters and state-dict keys as ``nn.Conv2d(channels, channels, kernel_size,
    padding=kernel_size // 2, groups=channels, bias=bias)``. When gradients are computed and the map
    is at most ``small_map`` pixels on a side, or smaller than the kernel, the forward pass uses
    :func:`small_map_depthwise_conv2d` (the same numbers; a backward pass several times faster on the
    CPU); otherwise, and always under TorchScript, tracing or ``torch.compile``/``torch.export``, the
    ordinary convolution.

    Args:
        channels: Input and output channels (one filter per channel).
        kernel_size: Odd kernel size.
        bias: Whether the convolution has a bias.
        small_map: Side length up to which the cropped/padded form is used in training.

    Raises:
        ValueError: If ``kernel_size`` is not a positive odd integer or ``channels`` < 1.
    """

    def __init__(self, channels: int, kernel_size: int, bias: bool = True, small_map: int = 2) -> None:
        if int(channels) < 1:
            raise ValueError(f"channels must be >= 1, got {channels!r}.")
        if int(kernel_size) < 1 or int(kernel_size) % 2 == 0:
            raise ValueError(f"kernel_size must be a positive odd integer, got {kernel_size!r}.")
        super().__init__(channels, channels, kernel_size, padding=kernel_size // 2, groups=channels, bias=bias)
        self.small_map = int(small_map)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.jit.is_scripting() or torch.jit.is_tracing():
            return self._conv_forward(x, self.weight, self.bias)
        if torch.compiler.is_compiling() or not torch.is_grad_enabled():
            return self._conv_forward(x, self.weight, self.bias)
        h, w = x.shape[2], x.shape[3]
        k = self.kernel_size[0]
        if min(h, w) <= self.small_map or 2 * min(h, w) - 1 < k:
            return small_map_depthwise_conv2d(x, self.weight, self.bias)
        return self._conv_forward(x, self.weight, self.bias)
