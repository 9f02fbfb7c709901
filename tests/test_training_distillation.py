"""Knowledge-distillation losses against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch

from medmamba.training import (
    DistillationLoss,
    SegmentationDistillationLoss,
    SoftTargetCrossEntropy,
    hard_distillation,
    pixelwise_distillation,
    soft_distillation,
    split_student_output,
)


def _softmax(z: list[float], tau: float = 1.0) -> list[float]:
    e = [math.exp(v / tau) for v in z]
    s = sum(e)
    return [v / s for v in e]


def _kl(p: list[float], q: list[float]) -> float:
    return sum(pi * math.log(pi / qi) for pi, qi in zip(p, q))


STUDENT = [[1.0, 2.0, 0.0], [0.5, -1.0, 2.0]]
TEACHER = [[0.0, 1.0, 3.0], [2.0, 0.0, -1.0]]


def test_soft_kd_with_temperature_matches_hand_computation():
    tau = 2.0
    expected = sum(_kl(_softmax(t, tau), _softmax(s, tau)) for s, t in zip(STUDENT, TEACHER)) / 2 * tau**2
    got = soft_distillation(torch.tensor(STUDENT), torch.tensor(TEACHER), tau=tau)
    assert got.item() == pytest.approx(expected, rel=1e-6)
    # DeiT's normalisation divides by B*C instead of B
    got_numel = soft_distillation(torch.tensor(STUDENT), torch.tensor(TEACHER), tau=tau, reduction="numel")
    assert got_numel.item() == pytest.approx(expected / 3, rel=1e-6)


def test_soft_kd_is_zero_for_identical_logits_and_teacher_gets_no_gradient():
    s = torch.tensor(STUDENT, requires_grad=True)
    t = torch.tensor(STUDENT, requires_grad=True)
    loss = soft_distillation(s, t, tau=3.0)
    assert loss.item() == pytest.approx(0.0, abs=1e-7)
    soft_distillation(s, torch.tensor(TEACHER).requires_grad_(), tau=3.0).backward()
    assert s.grad is not None and t.grad is None


def test_hard_kd_is_cross_entropy_on_teacher_argmax():
    expected = 0.0
    for s, t in zip(STUDENT, TEACHER):
        cls = max(range(3), key=lambda i: t[i])
        expected += -math.log(_softmax(s)[cls])
    expected /= 2
    got = hard_distillation(torch.tensor(STUDENT), torch.tensor(TEACHER))
    assert got.item() == pytest.approx(expected, rel=1e-6)


def test_distillation_loss_two_heads_soft_paper_defaults():
    cls_logits = torch.tensor([[2.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
    dist_logits = torch.tensor(STUDENT)
    labels = torch.tensor([0, 2])
    loss_fn = DistillationLoss()  # soft, tau=1, weight=5
    ce = -(math.log(_softmax([2.0, 0.0, 1.0])[0]) + math.log(_softmax([0.0, 1.0, 0.0])[2])) / 2
    kd = sum(_kl(_softmax(t), _softmax(s)) for s, t in zip(STUDENT, TEACHER)) / 2
    terms = loss_fn.compute((cls_logits, dist_logits), labels, torch.tensor(TEACHER))
    assert terms["loss_base"].item() == pytest.approx(ce, rel=1e-6)
    assert terms["loss_kd"].item() == pytest.approx(kd, rel=1e-6)
    assert terms["loss"].item() == pytest.approx(ce + 5 * kd, rel=1e-6)
    assert loss_fn((cls_logits, dist_logits), labels, torch.tensor(TEACHER)).item() == pytest.approx(ce + 5 * kd)


def test_distillation_loss_single_head_distils_through_it_and_hard_kind():
    logits = torch.tensor(STUDENT)
    labels = torch.tensor([1, 2])
    loss_fn = DistillationLoss(kind="hard", weight=2.0)
    ce = -(math.log(_softmax(STUDENT[0])[1]) + math.log(_softmax(STUDENT[1])[2])) / 2
    hard = -(math.log(_softmax(STUDENT[0])[2]) + math.log(_softmax(STUDENT[1])[0])) / 2
    assert loss_fn(logits, labels, torch.tensor(TEACHER)).item() == pytest.approx(ce + 2 * hard, rel=1e-6)
    # without teacher logits: only the base loss
    assert loss_fn(logits, labels, None).item() == pytest.approx(ce, rel=1e-6)


def test_soft_target_cross_entropy_accepts_mixup_targets_and_label_shapes():
    logits = torch.tensor(STUDENT)
    soft = torch.tensor([[0.7, 0.2, 0.1], [0.0, 0.5, 0.5]])
    expected = -sum(
        sum(y * math.log(q) for y, q in zip(ys, _softmax(zs))) for ys, zs in zip(soft.tolist(), STUDENT)
    ) / 2
    ce = SoftTargetCrossEntropy()
    assert ce(logits, soft).item() == pytest.approx(expected, rel=1e-6)
    idx = torch.tensor([[1.0], [2.0]])  # MONAI-style (B, 1) float labels
    assert ce(logits, idx).item() == pytest.approx(ce(logits, torch.tensor([1, 2])).item())
    with pytest.raises(ValueError, match="target"):
        ce(logits, torch.zeros(2, 2, 2))


def test_split_student_output_and_bad_arguments():
    a, b = torch.zeros(1, 2), torch.ones(1, 2)
    assert split_student_output((a, b))[1] is b
    assert split_student_output(a)[1] is a
    with pytest.raises(TypeError):
        split_student_output("x")
    with pytest.raises(ValueError, match="kind"):
        DistillationLoss(kind="medium")
    with pytest.raises(ValueError, match="tau"):
        DistillationLoss(tau=0)


def _pixel_kl(s: list[float], t: list[float], tau: float) -> float:
    return _kl(_softmax(t, tau), _softmax(s, tau)) * tau**2


def test_pixelwise_kd_with_and_without_region():
    tau = 2.0
    # (B=1, C=2, H=1, W=3)
    s = torch.tensor([[[[0.0, 1.0, 2.0]], [[1.0, 0.0, -1.0]]]])
    t = torch.tensor([[[[2.0, 0.0, 0.0]], [[0.0, 0.0, 1.0]]]])
    per_pixel = [_pixel_kl([s[0, 0, 0, w].item(), s[0, 1, 0, w].item()], [t[0, 0, 0, w].item(), t[0, 1, 0, w].item()], tau) for w in range(3)]
    assert pixelwise_distillation(s, t, tau).item() == pytest.approx(sum(per_pixel) / 3, rel=1e-6)
    mask = torch.tensor([[[[0, 1, 1]]]], dtype=torch.bool)
    got = pixelwise_distillation(s, t, tau, mask=mask)
    assert got.item() == pytest.approx((per_pixel[1] + per_pixel[2]) / 2, rel=1e-6)
    empty = pixelwise_distillation(s, t, tau, mask=torch.zeros(1, 1, 3, dtype=torch.bool))
    assert empty.item() == 0.0


def test_pixelwise_kd_resizes_teacher_logits():
    s = torch.randn(2, 3, 8, 8)
    t = torch.randn(2, 3, 4, 4)
    got = pixelwise_distillation(s, t, 1.0)
    up = torch.nn.functional.interpolate(t, size=(8, 8), mode="bilinear", align_corners=False)
    assert got.item() == pytest.approx(pixelwise_distillation(s, up, 1.0).item(), rel=1e-6)


def test_segmentation_distillation_loss_adds_weighted_kd_to_dice_ce():
    from monai.losses import DiceCELoss

    g = torch.Generator().manual_seed(0)
    s = torch.randn(2, 3, 6, 6, generator=g)
    t = torch.randn(2, 3, 6, 6, generator=g)
    y = torch.randint(0, 3, (2, 1, 6, 6), generator=g)
    base = DiceCELoss(to_onehot_y=True, softmax=True)(s, y)
    loss_fn = SegmentationDistillationLoss(tau=2.0, weight=0.5)
    assert loss_fn(s, y, t).item() == pytest.approx(base.item() + 0.5 * pixelwise_distillation(s, t, 2.0).item(), rel=1e-5)
    fg = SegmentationDistillationLoss(tau=2.0, weight=0.5, region="foreground")
    kd_fg = pixelwise_distillation(s, t, 2.0, mask=y != 0)
    assert fg.compute(s, y, t)["loss_kd"].item() == pytest.approx(kd_fg.item(), rel=1e-6)


def test_segmentation_distillation_with_deep_supervision_list():
    from monai.losses import DeepSupervisionLoss, DiceCELoss

    g = torch.Generator().manual_seed(1)
    full, aux = torch.randn(2, 3, 8, 8, generator=g), torch.randn(2, 3, 8, 8, generator=g)
    t = torch.randn(2, 3, 8, 8, generator=g)
    y = torch.randint(0, 3, (2, 1, 8, 8), generator=g)
    ds = DeepSupervisionLoss(DiceCELoss(to_onehot_y=True, softmax=True))
    loss_fn = SegmentationDistillationLoss(base_loss=ds, tau=1.0, weight=2.0)
    assert loss_fn.base_takes_list
    terms = loss_fn.compute([full, aux], y, t)
    assert terms["loss_base"].item() == pytest.approx(ds([full, aux], y).item(), rel=1e-6)
    assert terms["loss_kd"].item() == pytest.approx(pixelwise_distillation(full, t, 1.0).item(), rel=1e-6)
    plain = SegmentationDistillationLoss(weight=2.0)  # DiceCE: only the full-resolution output
    base = DiceCELoss(to_onehot_y=True, softmax=True)(full, y)
    assert plain.compute([full, aux], y, t)["loss_base"].item() == pytest.approx(base.item(), rel=1e-6)


def test_segmentation_kd_skips_ignored_classes():
    from medmamba.training import SegmentationDistillationLoss
    from medmamba.training.distillation import pixelwise_distillation

    g = torch.Generator().manual_seed(0)
    student = torch.randn(2, 5, 4, 4, generator=g)
    teacher = torch.randn(2, 5, 4, 4, generator=g)
    target = torch.randint(0, 4, (2, 1, 4, 4), generator=g)
    target[0, 0, :2, :2] = 4  # lesion pixels: learnt from the labels only
    loss = SegmentationDistillationLoss(weight=1.0, ignore_classes=[4])
    kd = loss.compute(student, target, teacher)["loss_kd"]
    # the lesion pixels are not distilled, and the lesion channel is left out of the KL
    expected = pixelwise_distillation(student[:, :4], teacher[:, :4], 1.0, target[:, 0] != 4)
    assert torch.allclose(kd, expected)
    everywhere = SegmentationDistillationLoss(weight=1.0).compute(student, target, teacher)["loss_kd"]
    assert not torch.allclose(kd, everywhere)
    # a teacher that differs from the student only in the ignored channel distils nothing
    same = student.clone()
    same[:, 4] = teacher[:, 4]
    assert float(loss.compute(student, target, same)["loss_kd"]) == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(ValueError, match="ignore_classes must be a sequence of non-negative class indices"):
        SegmentationDistillationLoss(ignore_classes=[-1])
