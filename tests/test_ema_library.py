"""ModelEMA on torch's AveragedModel: the same averaged weights and checkpoint keys as the hand-written EMA."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel

from medmamba.training import ModelEMA, extract_state_dict


def _net() -> nn.Module:
    return nn.Sequential(nn.Conv2d(2, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 4 * 4, 3))


def _reference_ema(model: nn.Module, steps: list[nn.Module], decay: float, warmup: bool, buffers: str) -> nn.Module:
    """The previous hand-written update, kept as the reference: per-tensor lerp at d_n, then buffers."""
    ema = copy.deepcopy(model)
    with torch.no_grad():
        for n, raw in enumerate(steps):
            d = min(decay, (1.0 + n) / (10.0 + n)) if warmup else decay
            params = dict(raw.named_parameters())
            for name, e in ema.named_parameters():
                e.lerp_(params[name].detach().to(device=e.device, dtype=e.dtype), 1.0 - d)
            raw_buffers = dict(raw.named_buffers())
            for name, e in ema.named_buffers():
                b = raw_buffers[name].detach().to(e.device)
                if buffers == "ema" and e.is_floating_point():
                    e.lerp_(b.to(e.dtype), 1.0 - d)
                else:
                    e.copy_(b)
    return ema


def _train_snapshots(model: nn.Module, steps: int = 5) -> list[nn.Module]:
    """The raw model after each of ``steps`` AdamW steps (BN in train mode, so its buffers change)."""
    g = torch.Generator().manual_seed(0)
    opt = torch.optim.AdamW(model.parameters(), lr=0.05)
    snapshots = []
    model.train()
    for _ in range(steps):
        x = torch.randn(4, 2, 6, 6, generator=g)
        y = torch.randint(0, 3, (4,), generator=g)
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
        snapshots.append(copy.deepcopy(model))
    return snapshots


@pytest.mark.parametrize(("decay", "warmup", "buffers"), [(0.9998, True, "copy"), (0.9, False, "copy"), (0.99, True, "ema")])
def test_library_ema_equals_hand_written_update_bit_for_bit(decay, warmup, buffers):
    torch.manual_seed(0)
    model = _net()
    ema = ModelEMA(model, decay=decay, warmup=warmup, buffers=buffers)
    initial = copy.deepcopy(model)
    snapshots = _train_snapshots(model)
    for snap in snapshots:
        ema.update_parameters(snap)
    reference = _reference_ema(initial, snapshots, decay, warmup, buffers)
    ours, ref = ema.module.state_dict(), reference.state_dict()
    assert ours.keys() == ref.keys()
    for name in ref:
        assert torch.equal(ours[name], ref[name]), name
    assert not torch.equal(ours["0.weight"], initial.state_dict()["0.weight"])
    assert ema.num_updates == 5
    assert isinstance(ema, AveragedModel) and int(ema.n_averaged) == 6


def test_state_dict_keeps_module_prefix_and_num_updates_and_loads_old_format():
    torch.manual_seed(0)
    model = _net()
    ema = ModelEMA(model, decay=0.9)
    for snap in _train_snapshots(model, steps=3):
        ema.update(snap)
    state = ema.state_dict()
    assert "n_averaged" not in state and int(state["num_updates"]) == 3
    assert {k for k in state if k != "num_updates"} == {f"module.{k}" for k in model.state_dict()}
    # a state dict in the format the hand-written ModelEMA wrote (num_updates + module.*) loads back
    old_format = {"num_updates": torch.tensor(3), **{f"module.{k}": v for k, v in ema.module.state_dict().items()}}
    fresh = ModelEMA(_net(), decay=0.9)
    fresh.load_state_dict(old_format)
    assert fresh.num_updates == 3 and fresh.current_decay == pytest.approx(min(0.9, 4 / 13))
    assert all(torch.equal(v, ema.module.state_dict()[k]) for k, v in fresh.module.state_dict().items())
    # and the weights-only view of it is the raw network's state dict
    assert extract_state_dict({"ema": state}, key="ema").keys() == model.state_dict().keys()


def test_update_rejects_a_different_model():
    ema = ModelEMA(nn.Linear(2, 2))
    with pytest.raises(ValueError, match="parameters do not match"):
        ema.update(nn.Linear(2, 3, bias=False))
    with pytest.raises(ValueError, match="buffer '0.running_mean'"):
        ModelEMA(nn.Sequential(nn.Identity())).update(nn.Sequential(nn.BatchNorm1d(2, affine=False)))
