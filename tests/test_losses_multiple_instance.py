from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from monai.losses import DiceCELoss

from medmamba.losses import LesionMILLoss
from medmamba.networks.nets.lesion_map import lesion_log_odds_map, pool_lesion_map


def _batch() -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    logits = torch.randn(3, 5, 8, 8)
    target = torch.zeros(3, 1, 8, 8)
    target[0, 0, :3, :3] = 4  # 9 lesion pixels: positive slice
    target[1, 0, 0, :2] = 4  # 2 lesion pixels: ambiguous with min_voxels=5
    target[2, 0, 4:, 4:] = 3  # no lesion: negative slice
    return logits, target


def test_mil_term_is_bce_of_the_max_pooled_log_odds_over_unambiguous_slices() -> None:
    logits, target = _batch()
    dense = DiceCELoss(to_onehot_y=True, softmax=True)
    loss = LesionMILLoss(dense, lesion_class=4, weight=0.5, pooling="max", min_voxels=5)
    terms = loss.compute(logits, target)
    z = logits[:, 4] - torch.logsumexp(logits[:, :4], dim=1)
    scores = z.flatten(1).max(dim=1).values
    expected_mil = F.binary_cross_entropy_with_logits(scores[[0, 2]], torch.tensor([1.0, 0.0]))
    assert float(terms["loss_mil"]) == pytest.approx(float(expected_mil), rel=1e-6)
    assert float(terms["loss_dense"]) == pytest.approx(float(dense(logits, target)), rel=1e-6)
    assert float(terms["loss"]) == pytest.approx(float(terms["loss_dense"] + 0.5 * expected_mil), rel=1e-6)
    labels, keep = loss.slice_labels(target, 5)
    assert labels.tolist() == [1.0, 0.0, 0.0] and keep.tolist() == [True, False, True]


def test_gradient_of_a_negative_slice_falls_on_its_highest_pixel() -> None:
    logits, target = _batch()
    logits = logits[2:].clone().requires_grad_(True)
    loss = LesionMILLoss(DiceCELoss(to_onehot_y=True, softmax=True), lesion_class=4, weight=1.0)
    loss.compute(logits, target[2:])["loss_mil"].backward()
    grad = logits.grad[0, 4].abs().flatten()
    z = lesion_log_odds_map(logits.detach(), 4).flatten()
    assert int(grad.argmax()) == int(z.argmax())
    assert int((grad > 0).sum()) == 1
    assert float(logits.grad[0, 4].flatten()[z.argmax()]) > 0  # pushes the lesion logit of that pixel down


def test_weight_zero_is_the_base_loss_and_deep_supervision_list_uses_first_output() -> None:
    logits, target = _batch()
    dense = DiceCELoss(to_onehot_y=True, softmax=True)
    assert float(LesionMILLoss(dense, lesion_class=4, weight=0.0)(logits, target)) == pytest.approx(float(dense(logits, target)))
    loss = LesionMILLoss(nn_first(dense), lesion_class=4, weight=1.0, pooling="topk", top_k=4)
    terms = loss.compute([logits, torch.zeros(3, 5, 4, 4)], target)
    scores = pool_lesion_map(lesion_log_odds_map(logits, 4), "topk", 4)
    expected = F.binary_cross_entropy_with_logits(scores, torch.tensor([1.0, 1.0, 0.0]))
    assert float(terms["loss_mil"]) == pytest.approx(float(expected), rel=1e-6)


class nn_first(torch.nn.Module):  # noqa: N801 - a base loss that takes the first of a deep-supervision list
    def __init__(self, loss: torch.nn.Module) -> None:
        super().__init__()
        self.loss = loss

    def forward(self, output, target):
        return self.loss(output[0] if isinstance(output, list) else output, target)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"weight": -1.0}, "weight must be >= 0"),
        ({"pooling": "median"}, "pooling='median' is not valid"),
        ({"top_k": 0}, "top_k=0 is not valid"),
        ({"min_voxels": 0}, "min_voxels=0 is not valid"),
    ],
)
def test_invalid_arguments_name_the_argument(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        LesionMILLoss(**kwargs)


def test_one_hot_target_is_rejected_with_its_shape() -> None:
    logits, _ = _batch()
    with pytest.raises(ValueError, match=r"class indices of shape \(B, 1, \.\.\.\), got \(3, 5, 8, 8\)"):
        LesionMILLoss(lesion_class=4)(logits, torch.zeros(3, 5, 8, 8))
