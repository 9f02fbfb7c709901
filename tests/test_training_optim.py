"""Parameter groups of the recipe's AdamW and the warm-up + cosine schedule."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from medmamba.training import WarmupCosineLR, create_optimizer, param_groups, scale_lr, warmup_cosine_factor


class _Scan(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.x_proj_weight = nn.Parameter(torch.zeros(2, 3, 4))
        self.dt_proj_weight = nn.Parameter(torch.zeros(2, 4, 1))
        self.dt_proj_bias = nn.Parameter(torch.zeros(2, 4))  # 2-D: exempt by name
        self.A_log = nn.Parameter(torch.zeros(8, 1))  # 2-D: exempt by name
        self.D = nn.Parameter(torch.ones(8))


class _Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.bn = nn.BatchNorm2d(4)
        self.pw = nn.Conv2d(4, 4, 1, bias=False)
        self.ln = nn.LayerNorm(4)
        self.scan = _Scan()
        self.scale = nn.Parameter(torch.ones(1, 4, 1, 1))  # 4-D per-channel scale: decayed
        self.head = nn.Linear(4, 2)
        self.frozen = nn.Parameter(torch.zeros(3, 3), requires_grad=False)


def test_param_groups_contain_exactly_what_they_should():
    model = _Tiny()
    decay, no_decay = param_groups(model, weight_decay=0.05)
    assert decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0.0
    assert set(decay["param_names"]) == {
        "conv.weight",
        "pw.weight",
        "scan.x_proj_weight",
        "scan.dt_proj_weight",
        "scale",
        "head.weight",
    }
    assert set(no_decay["param_names"]) == {
        "conv.bias",
        "bn.weight",
        "bn.bias",
        "ln.weight",
        "ln.bias",
        "scan.dt_proj_bias",
        "scan.A_log",
        "scan.D",
        "head.bias",
    }
    named = dict(model.named_parameters())
    assert all(p is named[n] for p, n in zip(decay["params"], decay["param_names"]))


def test_param_groups_respect_no_weight_decay_hook_and_create_optimizer():
    model = _Tiny()
    model.no_weight_decay = lambda: {"scale"}  # timm convention
    decay, no_decay = param_groups(model, 0.1)
    assert "scale" in no_decay["param_names"] and "scale" not in decay["param_names"]
    opt = create_optimizer(_Tiny(), lr=1e-3, weight_decay=0.05, betas=(0.9, 0.95))
    assert isinstance(opt, torch.optim.AdamW)
    assert [g["weight_decay"] for g in opt.param_groups] == [0.05, 0.0]
    assert opt.param_groups[0]["betas"] == (0.9, 0.95)
    assert sum(len(g["params"]) for g in opt.param_groups) == 15
    assert scale_lr(1.5e-3, 128) == pytest.approx(1.5e-3 / 8)
    with pytest.raises(ValueError, match="weight_decay"):
        param_groups(model, -1.0)


def _lrs(total: int, warmup: int, **kwargs) -> list[float]:
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = WarmupCosineLR(opt, warmup_steps=warmup, total_steps=total, **kwargs)
    out = []
    for _ in range(total + 2):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


def test_schedule_values_at_warmup_end_and_last_step():
    total, warmup = 50, 10
    lrs = _lrs(total, warmup, warmup_start_factor=1e-3, min_lr_ratio=0.01)
    assert lrs[0] == pytest.approx(1e-3)
    assert lrs[5] == pytest.approx(1e-3 + (1 - 1e-3) * 0.5)
    assert lrs[warmup] == pytest.approx(1.0)  # end of warm-up: the peak
    assert lrs[total - 1] == pytest.approx(0.01)  # last iteration: the floor
    assert lrs[total + 1] == pytest.approx(0.01)  # stays at the floor
    mid = warmup + (total - 1 - warmup) / 2
    assert warmup_cosine_factor(int(mid), warmup, total, 1e-3, 0.01) == pytest.approx(
        0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * int(mid - warmup) / (total - 1 - warmup)))
    )
    decreasing = lrs[warmup:total]
    assert all(a >= b for a, b in zip(decreasing, decreasing[1:]))
    increasing = lrs[: warmup + 1]
    assert all(a < b for a, b in zip(increasing, increasing[1:]))


def test_schedule_absolute_floor_and_argument_checks():
    opt = torch.optim.SGD([{"params": [nn.Parameter(torch.zeros(1))], "lr": 0.1}], lr=0.1)
    sched = WarmupCosineLR.from_epochs(opt, epochs=4, steps_per_epoch=5, warmup_epochs=1, min_lr=0.002)
    assert sched.warmup_steps == 5 and sched.total_steps == 20
    for _ in range(19):
        opt.step()
        sched.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(0.002)
    with pytest.raises(ValueError, match="warmup_steps"):
        WarmupCosineLR(opt, warmup_steps=20, total_steps=20)
    with pytest.raises(ValueError, match="total_steps"):
        WarmupCosineLR(opt, warmup_steps=0, total_steps=0)


def test_create_optimizer_fused_matches_the_loop_and_checks_its_argument():
    torch.manual_seed(0)
    a, b = _Tiny(), _Tiny()
    b.load_state_dict(a.state_dict())
    opt_fused = create_optimizer(a, lr=1e-2)
    opt_loop = create_optimizer(b, lr=1e-2, fused=False)
    assert opt_fused.defaults["fused"] is True and opt_loop.defaults["fused"] is False
    for model, opt in ((a, opt_fused), (b, opt_loop)):
        for step in range(3):
            opt.zero_grad()
            loss = sum((p - 0.1 * step).square().sum() for p in model.parameters() if p.requires_grad)
            loss.backward()
            opt.step()
    for (name, pa), pb in zip(a.named_parameters(), b.parameters()):
        assert torch.allclose(pa, pb, rtol=1e-5, atol=1e-6), name
    with pytest.raises(TypeError, match="fused"):
        create_optimizer(a, fused="yes")
