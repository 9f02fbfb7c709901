"""One-level 2D discrete wavelet transform and its inverse as (transposed) depthwise convolutions."""

from __future__ import annotations

import pywt
import torch
import torch.nn.functional as F

__all__ = ["wavelet_filters", "wavelet_transform", "inverse_wavelet_transform"]


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
