"""The Haar wavelet of WTE-Mamba: sums and differences equal the (transposed) depthwise convolutions."""

from __future__ import annotations

import pytest
import torch

from medmamba.networks.blocks.wavelet import (
    haar_transform,
    inverse_haar_transform,
    inverse_wavelet_transform,
    is_haar,
    wavelet_filters,
    wavelet_transform,
)
from medmamba.networks.blocks.wte_mamba import WTEMamba


@pytest.mark.parametrize("shape", [(2, 3, 8, 6), (1, 5, 2, 2), (3, 4, 12, 10)])
def test_haar_equals_the_convolutions(shape: tuple[int, ...]) -> None:
    g = torch.Generator().manual_seed(sum(shape))
    dec, rec = (f.double() for f in wavelet_filters("db1", shape[1]))
    x = torch.randn(*shape, generator=g, dtype=torch.float64)
    bands = haar_transform(x, dec)
    assert bands.shape == (shape[0], 4 * shape[1], shape[2] // 2, shape[3] // 2)
    assert torch.allclose(bands, wavelet_transform(x, dec), rtol=0, atol=1e-14)
    y = torch.randn(bands.shape, generator=g, dtype=torch.float64)
    assert torch.allclose(inverse_haar_transform(y, rec), inverse_wavelet_transform(y, rec), rtol=0, atol=1e-14)
    # perfect reconstruction, to the float32 taps' rounding (0.70710677 squared is 0.49999997)
    assert torch.allclose(inverse_haar_transform(bands, rec), x, rtol=0, atol=1e-6)
    cl = x.float().contiguous(memory_format=torch.channels_last)
    assert torch.allclose(haar_transform(cl, dec.float()), wavelet_transform(cl, dec.float()), rtol=0, atol=1e-6)


def test_haar_names() -> None:
    assert is_haar("db1") and is_haar("haar") and not is_haar("db2")


def _block() -> WTEMamba:
    torch.manual_seed(0)
    block = WTEMamba(8, kernel_size=3, scan_backend="parallel").eval()
    with torch.no_grad():
        block.wavelet_scale.fill_(0.7)
        block.wavelet_conv.weight.normal_()
    return block


def _forward(block: WTEMamba, x: torch.Tensor, haar: bool) -> torch.Tensor:
    block.haar = haar
    try:
        with torch.no_grad():
            return block(x)
    finally:
        block.haar = True


@pytest.mark.parametrize("size", [(6, 8), (7, 5)])
def test_block_output_is_the_same_with_either_path(size: tuple[int, int]) -> None:
    block, x = _block(), torch.randn(2, 8, *size, generator=torch.Generator().manual_seed(1))
    fast, conv = _forward(block, x, True), _forward(block, x, False)
    assert fast.shape == conv.shape == x.shape
    assert torch.allclose(fast, conv, rtol=0, atol=1e-5)
    assert not any(k.startswith("haar_") for k in block.state_dict())  # checkpoints as the reference writes them
    cl = block.to(memory_format=torch.channels_last)  # as the bundles run it: every 4D tensor converted
    assert torch.allclose(_forward(cl, x, True), conv, rtol=0, atol=1e-5)


def test_changed_filters_are_applied_as_they_are() -> None:
    block, x = _block(), torch.randn(2, 8, 6, 6, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        block.wt_filter.mul_(1.5)  # no longer Haar: the convolutions must see it
    conv = _forward(block, x, False)
    assert torch.equal(_forward(block, x, True), conv)
    with torch.no_grad():
        block.wt_filter.div_(1.5)
    assert not torch.allclose(_forward(block, x, True), conv, atol=1e-3)
