"""One-level 2D discrete wavelet transform and its inverse as (transposed) depthwise convolutions.

For the Haar wavelet (``db1``, MobileMamba's) :func:`haar_transform` and :func:`inverse_haar_transform`
compute the same sub-bands by sums and differences of the four polyphase components: on the small
maps of a MobileMamba stage a stride-2 depthwise convolution and its transpose cost several times
more than that arithmetic (``benchmarks/bench_wavelet.py``).
"""

from __future__ import annotations

import pywt
import torch
import torch.nn.functional as F

__all__ = ["haar_transform", "inverse_haar_transform", "inverse_wavelet_transform", "is_haar", "wavelet_filters",
           "wavelet_transform"]


def wavelet_filters(wavelet: str, channels: int, dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """Build the per-channel analysis and synthesis filters of a separable 2D wavelet.

    Filter ``k`` is ``F_k[r, c] = p_k[c]·q_k[r]`` with ``(p, q)`` = (lo, lo), (lo, hi), (hi, lo), (hi, hi)
    for k = 0..3 (k = 0 is the low-pass band). Analysis filters are PyWavelets' ``dec_lo``/``dec_hi``
    reversed (so that a convolution computes the correlation), synthesis filters ``rec_lo``/``rec_hi``.

    Args:
        wavelet: a PyWavelets name, e.g. ``"db1"`` (Haar).
        channels: number of image channels; the filters are repeated for a depthwise convolution.
        dtype: filter dtype.

    Returns:
        ``(analysis, synthesis)``, each of shape ``(4·channels, 1, k, k)``.
    """
    w = pywt.Wavelet(wavelet)

    def bank(lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
        f = torch.stack(
            [
                lo.unsqueeze(0) * lo.unsqueeze(1),
                lo.unsqueeze(0) * hi.unsqueeze(1),
                hi.unsqueeze(0) * lo.unsqueeze(1),
                hi.unsqueeze(0) * hi.unsqueeze(1),
            ],
            dim=0,
        )
        return f[:, None].repeat(channels, 1, 1, 1)

    dec = bank(torch.tensor(w.dec_lo[::-1], dtype=dtype), torch.tensor(w.dec_hi[::-1], dtype=dtype))
    rec = bank(torch.tensor(w.rec_lo, dtype=dtype), torch.tensor(w.rec_hi, dtype=dtype))
    return dec, rec


def wavelet_transform(x: torch.Tensor, filters: torch.Tensor) -> torch.Tensor:
    """One level of the 2D DWT, per channel: ``(B, C, H, W)`` → ``(B, 4C, H/2, W/2)``, channel ``4c + k``.

    Args:
        x: input with even ``H`` and ``W``.
        filters: analysis filters from :func:`wavelet_filters`.

    Returns:
        The four sub-bands of every channel, channel-major.
    """
    pad = (filters.shape[2] // 2 - 1, filters.shape[3] // 2 - 1)
    return F.conv2d(x, filters.to(x.dtype), stride=2, groups=x.shape[1], padding=pad)


def inverse_wavelet_transform(x: torch.Tensor, filters: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`wavelet_transform`: ``(B, 4C, h, w)`` → ``(B, C, 2h, 2w)``.

    Args:
        x: sub-bands, channel ``4c + k``.
        filters: synthesis filters from :func:`wavelet_filters`.

    Returns:
        The reconstructed image.
    """
    pad = (filters.shape[2] // 2 - 1, filters.shape[3] // 2 - 1)
    return F.conv_transpose2d(x, filters.to(x.dtype), stride=2, groups=x.shape[1] // 4, padding=pad)


def is_haar(wavelet: str) -> bool:
    """Whether ``wavelet`` names the Haar wavelet (PyWavelets ``"db1"`` or ``"haar"``)."""
    return wavelet in ("db1", "haar")


def haar_transform(x: torch.Tensor, filters: torch.Tensor) -> torch.Tensor:
    """:func:`wavelet_transform` with the Haar filters, by sums and differences.

    With ``x_rc = x[..., 2i + r, 2j + c]`` and ``h`` the filters' magnitude (``1/2``: the product of
    two ``1/sqrt(2)`` taps, read from ``filters`` so that the result is the convolution's to rounding):
    band 0 = ``h·(x00 + x01 + x10 + x11)``, band 1 = ``h·((x00 + x01) - (x10 + x11))``, band 2 =
    ``h·((x00 - x01) + (x10 - x11))``, band 3 = ``h·((x00 - x01) - (x10 - x11))``, i.e. PyWavelets'
    reversed ``dec_lo``/``dec_hi`` taps in the order of :func:`wavelet_filters`.

    Args:
        x: ``(B, C, H, W)`` with even ``H`` and ``W`` (any memory format).
        filters: the Haar analysis filters of :func:`wavelet_filters` (``(4C, 1, 2, 2)``).

    Returns:
        ``(B, 4C, H/2, W/2)``, channel ``4c + k``.
    """
    b, c, height, width = x.shape
    scale = filters[0, 0, 0, 0].to(x.dtype)
    row0 = x[:, :, 0::2]
    row1 = x[:, :, 1::2]
    s0 = row0[..., 0::2] + row0[..., 1::2]
    d0 = row0[..., 0::2] - row0[..., 1::2]
    s1 = row1[..., 0::2] + row1[..., 1::2]
    d1 = row1[..., 0::2] - row1[..., 1::2]
    bands = torch.stack([s0 + s1, s0 - s1, d0 + d1, d0 - d1], dim=2) * scale
    return bands.reshape(b, 4 * c, height // 2, width // 2)


def inverse_haar_transform(x: torch.Tensor, filters: torch.Tensor) -> torch.Tensor:
    """:func:`inverse_wavelet_transform` with the Haar filters, by sums and differences.

    With ``h`` the synthesis filters' magnitude: ``x00 = h·((b0 + b1) + (b2 + b3))``, ``x01 =
    h·((b0 + b1) - (b2 + b3))``, ``x10 = h·((b0 - b1) + (b2 - b3))``, ``x11 = h·((b0 - b1) - (b2 - b3))``
    at ``[2i + r, 2j + c]``.

    Args:
        x: sub-bands ``(B, 4C, h, w)``, channel ``4c + k``.
        filters: the Haar synthesis filters of :func:`wavelet_filters`.

    Returns:
        The reconstructed ``(B, C, 2h, 2w)``.
    """
    b, c4, height, width = x.shape
    bands = x.reshape(b, c4 // 4, 4, height, width)
    scale = filters[0, 0, 0, 0].to(x.dtype)
    u = bands[:, :, 0] + bands[:, :, 1]
    v = bands[:, :, 0] - bands[:, :, 1]
    w = bands[:, :, 2] + bands[:, :, 3]
    z = bands[:, :, 2] - bands[:, :, 3]
    rows = torch.stack([torch.stack([u + w, u - w], dim=-1), torch.stack([v + z, v - z], dim=-1)], dim=3)
    return (rows * scale).reshape(b, c4 // 4, 2 * height, 2 * width)
