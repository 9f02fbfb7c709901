"""The frozen teacher and the teacher-logit cache."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from medmamba.training import Teacher, TeacherLogitCache


def _net(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3))


def test_teacher_is_frozen_in_eval_mode_and_gets_no_gradient():
    teacher = Teacher(_net(0))
    student = _net(1)
    teacher.train()  # e.g. a trainer calling .train() on everything
    assert not teacher.training and not any(m.training for m in teacher.modules())
    assert all(not p.requires_grad for p in teacher.parameters())
    bn = teacher.network[1]
    stats = bn.running_mean.clone()
    x = torch.randn(4, 1, 8, 8) * 3 + 1
    t = teacher(x)
    s = student(x)
    assert not t.requires_grad
    loss = torch.nn.functional.kl_div(s.log_softmax(1), t.log_softmax(1), log_target=True, reduction="batchmean")
    loss.backward()
    assert all(p.grad is None for p in teacher.parameters())
    assert all(p.grad is not None for p in student.parameters())
    assert torch.equal(bn.running_mean, stats)  # eval mode: BN statistics untouched


def test_teacher_loads_checkpoint_with_weights_only(tmp_path):
    trained = _net(5)
    path = tmp_path / "teacher.pt"
    torch.save({"model": trained.state_dict(), "epoch": torch.tensor(3)}, path)
    teacher = Teacher(_net(0), checkpoint=str(path), checkpoint_key="model")
    x = torch.randn(2, 1, 8, 8)
    assert torch.allclose(teacher(x), trained.eval()(x))
    flat = tmp_path / "flat.pt"
    torch.save(trained.state_dict(), flat)
    assert torch.allclose(Teacher(_net(1), checkpoint=flat)(x), trained(x))
    with pytest.raises(ValueError, match="key"):
        Teacher(_net(0), checkpoint=str(path), checkpoint_key="ema")


class _Record(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.dummy = nn.Parameter(torch.zeros(1))
        self.seen: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen = x
        return x.flatten(1)


def test_teacher_own_input_size_and_normalisation():
    net = _Record()
    teacher = Teacher(net, input_size=4, mean=[0.5, 0.0], std=[0.25, 2.0], student_mean=[1.0, 1.0], student_std=[2.0, 2.0])
    x = torch.randn(3, 2, 8, 8)
    teacher(x)
    assert net.seen.shape == (3, 2, 4, 4)
    raw = x * 2.0 + 1.0
    expected = torch.stack([(raw[:, 0] - 0.5) / 0.25, raw[:, 1] / 2.0], dim=1)
    expected = torch.nn.functional.interpolate(expected, size=(4, 4), mode="bilinear", align_corners=False)
    assert torch.allclose(net.seen, expected, atol=1e-5)
    with pytest.raises(TypeError):
        Teacher("not a module")  # type: ignore[arg-type]


def test_teacher_logit_cache_roundtrip(tmp_path):
    teacher = Teacher(_net(2))
    g = torch.Generator().manual_seed(0)
    batches = [
        {"image": torch.randn(2, 1, 8, 8, generator=g), "id": ["a", "b"]},
        {"image": torch.randn(2, 1, 8, 8, generator=g), "id": torch.tensor([7, 8])},
    ]
    cache = TeacherLogitCache.build(teacher, batches)
    assert len(cache) == 4 and "a" in cache and 7 in cache
    path = tmp_path / "logits.pt"
    cache.save(path)
    loaded = TeacherLogitCache.load(path)
    assert loaded.ids == ["a", "b", "7", "8"]
    assert torch.allclose(loaded.get(["b", "a"]), teacher(batches[0]["image"]).flip(0))
    assert torch.allclose(loaded.get([8]), teacher(batches[1]["image"])[1:])
    with pytest.raises(KeyError, match="zz"):
        loaded.get(["zz"])
    again = TeacherLogitCache.load_or_build(path, teacher=None, data=[])  # type: ignore[arg-type]
    assert len(again) == 4
