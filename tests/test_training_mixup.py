"""Mixup / CutMix label mass and segmentation CutMix consistency."""

from __future__ import annotations

import pytest
import torch

from medmamba.training import MixupCutmix, SegmentationCutMix, smooth_one_hot


def test_smooth_one_hot_values():
    y = smooth_one_hot(torch.tensor([2, 0]), num_classes=4, smoothing=0.1)
    assert torch.allclose(y[0], torch.tensor([0.025, 0.025, 0.925, 0.025]))
    assert torch.allclose(y.sum(1), torch.ones(2))


@pytest.mark.parametrize("mixup_alpha,cutmix_alpha", [(0.8, 0.0), (0.0, 1.0), (0.8, 1.0)])
def test_mixed_targets_sum_to_one_and_follow_lambda(mixup_alpha, cutmix_alpha):
    mixer = MixupCutmix(mixup_alpha, cutmix_alpha, prob=1.0, switch_prob=0.5, label_smoothing=0.1, num_classes=5, seed=3)
    images = torch.arange(6, dtype=torch.float32).view(6, 1, 1, 1).expand(6, 2, 8, 8).contiguous()
    labels = torch.tensor([0, 1, 2, 3, 4, 0])
    for _ in range(5):
        mixed, targets = mixer(images, labels)
        assert torch.allclose(targets.sum(1), torch.ones(6), atol=1e-6)
        lam = mixer.last_lam
        y = smooth_one_hot(labels, 5, 0.1)
        assert torch.allclose(targets, lam * y + (1 - lam) * y.flip(0), atol=1e-6)
        # the image fraction coming from the partner sample is 1 - lam (mixup: blend; cutmix: area)
        own = images[:, :1]
        partner = images.flip(0)[:, :1]
        frac_partner = ((mixed[:, :1] - own) / (partner - own)).mean(dim=(1, 2, 3))
        i = 0  # sample 0 and 5 differ, so the fraction is measurable
        assert frac_partner[i].item() == pytest.approx(1 - lam, abs=1e-5)
    assert torch.equal(images[0, 0], torch.zeros(8, 8))  # input untouched


def test_no_mixing_when_prob_zero_keeps_smoothing():
    mixer = MixupCutmix(prob=0.0, label_smoothing=0.2, num_classes=3, seed=0)
    x = torch.randn(4, 1, 4, 4)
    mixed, t = mixer(x, torch.tensor([[0], [1], [2], [1]]))
    assert mixed is x
    assert torch.allclose(t, smooth_one_hot(torch.tensor([0, 1, 2, 1]), 3, 0.2))


def test_mixup_is_reproducible_with_seed_and_validates_arguments():
    x, y = torch.randn(4, 1, 8, 8), torch.tensor([0, 1, 0, 1])
    a = MixupCutmix(num_classes=2, seed=11)(x, y)
    b = MixupCutmix(num_classes=2, seed=11)(x, y)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    with pytest.raises(ValueError, match="switch_prob"):
        MixupCutmix(switch_prob=2.0)
    with pytest.raises(ValueError, match="num_classes"):
        MixupCutmix(num_classes=1)


@pytest.mark.parametrize("spatial", [(16, 12), (6, 8, 10)])
def test_segmentation_cutmix_masks_follow_images(spatial):
    cutmix = SegmentationCutMix(alpha=1.0, prob=1.0, seed=1)
    b = 4
    ids = torch.arange(b, dtype=torch.float32).view(b, 1, *([1] * len(spatial)))
    images = (ids * 10).expand(b, 2, *spatial).contiguous()
    masks = ids.long().expand(b, 1, *spatial).contiguous()
    found_box = False
    for _ in range(5):
        mixed_images, mixed_masks = cutmix(images, masks)
        box = cutmix.last_box
        assert box is not None
        # every pixel's label is the label of the sample its image content came from
        assert torch.equal(mixed_images[:, :1] / 10, mixed_masks.float())
        assert torch.equal(mixed_images[:, 1:] / 10, mixed_masks.float())
        changed = mixed_masks != masks
        inside = torch.zeros_like(changed)
        inside[(slice(None), slice(None)) + box] = True
        assert not changed[~inside].any()
        found_box |= bool(changed.any())
    assert found_box
    with pytest.raises(ValueError, match="spatial"):
        cutmix(images, masks[..., :-1])
