"""Stochastic depth of MobileMamba blocks: the reference implementation's per-sample draw."""

from __future__ import annotations

import torch
from monai.networks.layers import DropPath

from medmamba.networks import MobileMamba, MobileMambaBlock
from medmamba.networks.blocks import Residual, drop_path_mask


def _reference_keep(x: torch.Tensor, rate: float) -> torch.Tensor:
    """The reference implementation's formula, written out."""
    return torch.rand(x.size(0), 1, 1, 1, device=x.device).ge_(rate).div(1 - rate)


def test_block_drops_whole_samples_with_the_reference_draw() -> None:
    torch.manual_seed(0)
    block = MobileMambaBlock(32, 0.8, 0.2, 7, drop_path=0.5).train()
    x = torch.randn(16, 32, 8, 8)
    torch.manual_seed(123)
    out = block(x)
    branch = block.ffn1(block.dw_conv1(block.mixer(block.ffn0(block.dw_conv0(x)))))  # the residual branch
    torch.manual_seed(123)
    keep = _reference_keep(x, 0.5)
    torch.testing.assert_close(out, x + branch * keep, rtol=0, atol=0)
    dropped = keep.flatten() == 0
    assert 0 < int(dropped.sum()) < 16  # per sample: some dropped, some kept (scaled by 1 / 0.5)
    assert torch.equal(out[dropped], x[dropped])
    assert set(keep.flatten().tolist()) == {0.0, 2.0}


def test_drop_path_mask_is_the_reference_formula_and_not_monais_draw() -> None:
    x = torch.zeros(64, 3, 2, 2)
    torch.manual_seed(7)
    ours = drop_path_mask(x, 0.3)
    torch.manual_seed(7)
    assert torch.equal(ours, _reference_keep(x, 0.3))
    torch.manual_seed(7)
    monai = DropPath(0.3).train()(torch.ones_like(x))[:, :1, :1, :1]
    assert not torch.equal(ours, monai)  # same seed, other samples dropped: why MONAI's is not used


def test_residual_drop_rate_uses_the_same_draw() -> None:
    branch = torch.nn.Conv2d(4, 4, 1)
    res = Residual(branch, drop_rate=0.25).train()
    x = torch.randn(32, 4, 3, 3)
    torch.manual_seed(5)
    out = res(x)
    torch.manual_seed(5)
    expected = x + branch(x) * _reference_keep(x, 0.25)
    torch.testing.assert_close(out, expected, rtol=0, atol=0)


def test_stochastic_depth_adds_no_state_dict_keys_and_is_off_in_eval() -> None:
    with_drop = MobileMamba("t2", num_classes=2, drop_path=0.2)
    without = MobileMamba("t2", num_classes=2, drop_path=0.0)
    assert list(with_drop.state_dict()) == list(without.state_dict())
    with_drop.load_state_dict(without.state_dict())
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(with_drop.eval()(x), without.eval()(x), rtol=0, atol=0)
