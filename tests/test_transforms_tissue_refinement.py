"""TissueIntensityRefine: a Gaussian mixture with the network's probabilities as prior, on the input grid."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from monai.data import MetaTensor

from medmamba.metrics import dice_per_class
from medmamba.transforms import TissueIntensityRefine, TissueIntensityRefined, refine_tissue_probabilities
from medmamba.transforms.label_map import channel_argmax


def _phantom(shape=(48, 48, 40), seed=0):
    """A 1 mm 'brain': white-matter core, grey ribbon with sulcal CSF clefts, CSF rim; background outside."""
    rng = np.random.default_rng(seed)
    idx = np.indices(shape, dtype=np.float32)
    c = (np.asarray(shape, np.float32) - 1) / 2
    r = np.sqrt(sum(((idx[d] - c[d]) / (c[d] - 2)) ** 2 for d in range(3)))
    labels = np.zeros(shape, np.int64)
    labels[r < 1.0] = 1
    labels[r < 0.9] = 2
    labels[r < 0.6] = 3
    # thin CSF clefts through the grey ribbon: 1-voxel detail a 2 mm prediction cannot carry
    angle = np.arctan2(idx[1] - c[1], idx[0] - c[0])
    cleft = (np.abs(np.sin(6 * angle)) < 0.12) & (labels == 2)
    labels[cleft] = 1
    means = np.array([0.0, 0.25, 0.55, 0.85], np.float32)
    image = means[labels] + 0.03 * rng.standard_normal(shape).astype(np.float32)
    return labels, image


def _coarse_prior(labels: np.ndarray, n_classes: int = 4) -> torch.Tensor:
    """What a 2 mm network gives at 1 mm: one-hot labels average-pooled by 2 and upsampled linearly."""
    onehot = F.one_hot(torch.from_numpy(labels), n_classes).permute(3, 0, 1, 2).float()
    coarse = F.avg_pool3d(onehot[None], 2)
    # soften like a network's probabilities
    coarse = 0.9 * coarse + 0.1 / n_classes
    up = F.interpolate(coarse, size=labels.shape, mode="trilinear", align_corners=False)[0]
    return up / up.sum(0, keepdim=True)


def _dice(prob: torch.Tensor, labels: np.ndarray) -> dict[int, float]:
    return dice_per_class(channel_argmax(prob)[0].numpy(), labels, [1, 2, 3])


def _mean_dice(prob: torch.Tensor, labels: np.ndarray) -> float:
    return float(np.mean(list(_dice(prob, labels).values())))


def test_refinement_recovers_detail_finer_than_the_prior():
    labels, image = _phantom()
    prior = _coarse_prior(labels)
    before = _dice(prior, labels)
    after = _dice(refine_tissue_probabilities(prior, torch.from_numpy(image), (1.0, 1.0, 1.0)), labels)
    # the CSF clefts are the detail a 2 mm prior blurs away (the brain's outer border stays the
    # prior's: keep_brain_decision)
    assert before[1] < 0.9
    assert after[1] > 0.96
    assert min(after.values()) > 0.96
    assert np.mean(list(after.values())) - np.mean(list(before.values())) > 0.03


def test_background_and_brain_probability_unchanged_without_the_decision_rule():
    labels, image = _phantom()
    prior = _coarse_prior(labels)
    out = refine_tissue_probabilities(prior, torch.from_numpy(image)[None], (1.0, 1.0, 1.0), keep_brain_decision=False)
    assert out.shape == prior.shape and out.dtype == torch.float32
    assert torch.equal(out[0], prior[0])
    torch.testing.assert_close(out.sum(0), torch.ones(labels.shape), atol=1e-5, rtol=0)
    outside = prior[1:].sum(0) < 0.5
    assert torch.equal(out[:, outside], prior[:, outside])


def test_bias_field_is_absorbed_by_the_smooth_means():
    labels, image = _phantom()
    x = np.linspace(-1, 1, labels.shape[0], dtype=np.float32)[:, None, None]
    biased = image * (1.0 + 0.3 * x)  # 0.7 to 1.3 across the field of view
    prior = _coarse_prior(labels)
    flat_means = _mean_dice(refine_tissue_probabilities(prior, torch.from_numpy(biased), (1.0,) * 3,
                                                        bias_fwhm_mm=1e4), labels)
    smooth_means = _mean_dice(refine_tissue_probabilities(prior, torch.from_numpy(biased), (1.0,) * 3), labels)
    assert smooth_means > 0.95
    assert smooth_means > flat_means


def test_featureless_image_leaves_the_prior():
    labels, _ = _phantom()
    prior = _coarse_prior(labels)
    out = refine_tissue_probabilities(prior, torch.full(labels.shape, 5.0), (1.0, 1.0, 1.0))
    torch.testing.assert_close(out, prior, atol=2e-4, rtol=0)


def test_contrast_inverted_scan_is_refined_as_well():
    labels, image = _phantom()
    prior = _coarse_prior(labels)
    inverted = np.where(labels > 0, 1.0 - image, 0.0).astype(np.float32)
    after = _mean_dice(refine_tissue_probabilities(prior, torch.from_numpy(inverted), (1.0,) * 3), labels)
    assert after > 0.97


def test_two_dimensional_input():
    labels, image = _phantom()
    z = labels.shape[2] // 2
    prior = _coarse_prior(labels)[..., z]
    out = refine_tissue_probabilities(prior, torch.from_numpy(image[..., z]), (1.0, 1.0))
    assert out.shape == prior.shape
    assert _mean_dice(out, labels[..., z]) > _mean_dice(prior, labels[..., z])


def test_metatensor_spacing_and_dictionary_version():
    labels, image = _phantom()
    affine = torch.diag(torch.tensor([1.0, 1.0, 1.0, 1.0]))
    prior = MetaTensor(_coarse_prior(labels), affine=affine)
    out = TissueIntensityRefined(keys="prob", image_key="scan")({"prob": prior, "scan": torch.from_numpy(image)[None]})
    assert isinstance(out["prob"], MetaTensor)
    torch.testing.assert_close(out["prob"].affine, affine.double() if out["prob"].affine.dtype == torch.float64 else affine)
    direct = refine_tissue_probabilities(prior.as_tensor(), torch.from_numpy(image), (1.0, 1.0, 1.0))
    torch.testing.assert_close(out["prob"].as_tensor(), direct)


def test_errors_name_the_argument():
    labels, image = _phantom()
    prior = _coarse_prior(labels)
    img = torch.from_numpy(image)
    with pytest.raises(ValueError, match="image spatial shape"):
        refine_tissue_probabilities(prior, img[:-1], (1.0,) * 3)
    with pytest.raises(ValueError, match="tissue_channels"):
        refine_tissue_probabilities(prior, img, (1.0,) * 3, tissue_channels=(1, 4))
    with pytest.raises(ValueError, match="spacing"):
        refine_tissue_probabilities(prior, img, (1.0, 1.0))
    with pytest.raises(ValueError, match="prior_weight"):
        refine_tissue_probabilities(prior, img, (1.0,) * 3, prior_weight=-1)
    with pytest.raises(ValueError, match="pass spacing"):
        TissueIntensityRefine()(prior, img[None])
    with pytest.raises(KeyError, match="image_key"):
        TissueIntensityRefined(keys="prob")({"prob": prior})


def test_the_brain_background_decision_stays_the_networks():
    """Voxels the network gives to the background stay background and its brain stays brain: the
    refinement only re-divides the tissue classes (a real head had neck voxels turned into tissue)."""
    labels, image = _phantom()
    prior = _coarse_prior(labels)
    # an uncertain rim: the network's most probable class is background (0.4), but the tissues
    # together hold 0.6 and the rim's intensity is clearly CSF
    rim = torch.from_numpy((labels == 1) & (np.roll(labels, 3, axis=0) == 0))
    assert int(rim.sum()) > 50
    prior[:, rim] = torch.tensor([0.4, 0.3, 0.3, 0.0])[:, None]
    image_t = torch.from_numpy(image)
    network_brain = channel_argmax(prior)[0] > 0
    kept = refine_tissue_probabilities(prior, image_t, (1.0, 1.0, 1.0))
    free = refine_tissue_probabilities(prior, image_t, (1.0, 1.0, 1.0), keep_brain_decision=False)
    assert torch.equal(channel_argmax(kept)[0] > 0, network_brain)
    assert torch.allclose(kept.sum(0), torch.ones(labels.shape), atol=1e-5)
    assert torch.equal(kept[:, rim], prior[:, rim])  # the network's background: not changed
    # without the rule the refined CSF (about 0.6) beats the background (0.4) on the rim
    grown = (channel_argmax(free)[0] > 0) & ~network_brain
    assert int(grown.sum()) >= int(rim.sum()) // 2
    # the tissue detail is still recovered inside the network's brain
    assert _dice(kept, labels)[1] > _dice(prior, labels)[1] + 0.05


def _sulcal_phantom(seed: int = 0, blur: float = 0.7) -> tuple[np.ndarray, np.ndarray, torch.Tensor]:
    """A 1 mm cortex slab over white matter with one-voxel sulci every 6 mm, blurred by a point-spread
    function (every sulcal voxel is partial volume), and the prior of a 2 mm network (block means of
    2 voxels, linearly back to 1 mm)."""
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    shape = (48, 48, 48)
    labels = np.full(shape, 3, np.int64)
    labels[:, :, :20] = 2
    labels[:, ::6, 2:18] = 1
    means = np.array([0.0, 0.3, 0.7, 1.0], np.float32)
    image = ndimage.gaussian_filter(means[labels], blur) + 0.03 * rng.standard_normal(shape)
    onehot = np.stack([(labels == k).astype(np.float32) for k in range(4)])
    coarse = np.stack([ndimage.zoom(ndimage.uniform_filter(o, 2)[::2, ::2, ::2], 2, order=1) for o in onehot])
    coarse = np.clip(coarse, 1e-3, None)
    prior = torch.from_numpy((coarse / coarse.sum(0, keepdims=True)).astype(np.float32))
    return labels, image.astype(np.float32), prior


@pytest.mark.parametrize("seed, blur", [(0, 0.7), (1, 0.7), (0, 1.0)])
def test_confident_voxels_set_the_tissue_means(seed: int, blur: float) -> None:
    """0.6.12: with the posterior to the 4th power weighting the tissue means, the blurred sulci's
    partial-volume voxels pull the CSF mean towards grey matter less, so fewer cortex voxels become
    CSF (the CSF inflation measured on real 1 mm scans)."""
    labels, image, prior = _sulcal_phantom(seed, blur)
    img = torch.from_numpy(image)
    plain = refine_tissue_probabilities(prior, img, (1.0,) * 3, iterations=4)
    sharp = refine_tissue_probabilities(prior, img, (1.0,) * 3, iterations=4, mean_weight_power=4.0)
    true_csf = int((labels == 1).sum())
    ratio = {name: int((channel_argmax(p)[0] == 1).sum()) / true_csf for name, p in (("plain", plain), ("sharp", sharp))}
    assert ratio["plain"] > 1.2  # the inflation
    assert abs(ratio["sharp"] - 1.0) < abs(ratio["plain"] - 1.0) - 0.05
    assert _dice(sharp, labels)[1] > _dice(plain, labels)[1] + 0.015
    # power 1 is the plain update, bit for bit
    assert torch.equal(refine_tissue_probabilities(prior, img, (1.0,) * 3, iterations=4, mean_weight_power=1.0), plain)


def test_mean_weight_power_below_one_is_refused() -> None:
    labels, image = _phantom()
    prior = _coarse_prior(labels)
    with pytest.raises(ValueError, match="mean_weight_power must be a number >= 1, got 0.5"):
        refine_tissue_probabilities(prior, torch.from_numpy(image), (1.0,) * 3, mean_weight_power=0.5)
    with pytest.raises(ValueError, match="mean_weight_power must be a number >= 1, got 0"):
        TissueIntensityRefine(mean_weight_power=0)
