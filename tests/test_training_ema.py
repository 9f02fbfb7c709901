"""EMA of the weights: closed form, buffers, ignite attachment, checkpointing."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from medmamba.training import EMAHandler, ModelEMA, ema_decay, extract_state_dict


def _set(model: nn.Module, value: float) -> None:
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(value)


def test_ema_without_warmup_equals_closed_form():
    model = nn.Linear(3, 2)
    _set(model, 1.0)
    d = 0.9
    ema = ModelEMA(model, decay=d, warmup=False)
    values = [2.0, -1.0, 0.5, 4.0, 3.0]
    for v in values:
        _set(model, v)
        ema.update(model)
    n = len(values)
    # e_n = d^n e_0 + sum_k (1 - d) d^(n-k) p_k
    expected = d**n * 1.0 + sum((1 - d) * d ** (n - k) * v for k, v in enumerate(values, start=1))
    for p in ema.module.parameters():
        assert torch.allclose(p, torch.full_like(p, expected), atol=1e-6)
    assert int(ema.num_updates) == n


def test_ema_with_warmup_uses_increasing_decay():
    model = nn.Linear(2, 2)
    _set(model, 0.0)
    ema = ModelEMA(model, decay=0.9998, warmup=True)
    values = [1.0, 2.0, 3.0, 4.0]
    expected = 0.0
    for n, v in enumerate(values):
        d = min(0.9998, (1 + n) / (10 + n))
        assert ema.current_decay == pytest.approx(d)
        _set(model, v)
        ema.update(model)
        expected = d * expected + (1 - d) * v
    assert torch.allclose(ema.module.weight, torch.full((2, 2), expected), atol=1e-6)
    assert ema_decay(0.9998, 10**7) == 0.9998


def test_ema_buffers_copied_or_averaged():
    model = nn.BatchNorm1d(2)
    for mode, expected in (("copy", 5.0), ("ema", 0.5 * 0.0 + 0.5 * 5.0)):
        ema = ModelEMA(model, decay=0.5, warmup=False, buffers=mode)
        with torch.no_grad():
            model.running_mean.fill_(5.0)
            model.num_batches_tracked.fill_(7)
        ema.update(model)
        assert torch.allclose(ema.module.running_mean, torch.full((2,), expected))
        assert int(ema.module.num_batches_tracked) == 7
        with torch.no_grad():
            model.running_mean.zero_()
    with pytest.raises(ValueError, match="buffers"):
        ModelEMA(model, buffers="mean")


def test_ema_stays_eval_and_state_dict_loads_into_raw_model():
    model = nn.Sequential(nn.Linear(2, 2), nn.Dropout(0.5))
    ema = ModelEMA(model, decay=0.5)
    ema.train()
    assert not ema.module.training
    assert all(not p.requires_grad for p in ema.parameters())
    state = extract_state_dict({"model": model.state_dict(), "ema": ema.state_dict()}, key="ema")
    fresh = nn.Sequential(nn.Linear(2, 2), nn.Dropout(0.5))
    fresh.load_state_dict(state)
    x = torch.randn(3, 2)
    assert torch.allclose(fresh.eval()(x), ema(x))


def test_ema_handler_updates_once_per_iteration_on_an_ignite_engine():
    from ignite.engine import Engine

    model = nn.Linear(2, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)

    def step(engine, batch):
        opt.zero_grad()
        model(batch).sum().backward()
        opt.step()

    engine = Engine(step)
    handler = EMAHandler(model=model, decay=0.99, every_n_iters=2)
    handler.attach(engine)
    engine.run([torch.ones(1, 2)] * 6, max_epochs=1)
    assert isinstance(handler.ema, ModelEMA)
    assert int(handler.ema.num_updates) == 3
    assert not torch.allclose(handler.ema.module.weight, model.weight)
    with pytest.raises(ValueError, match="every_n_iters"):
        EMAHandler(every_n_iters=0)
