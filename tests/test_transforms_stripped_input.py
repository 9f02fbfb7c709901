"""StrippedInputBrain: a skull-stripped input's non-zero voxels are its brain; other inputs are left alone."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.data import MetaTensor

from medmamba.transforms import StrippedInputBrain, StrippedInputBraind, skull_stripped_support
from medmamba.transforms.label_map import channel_argmax


def _brain(shape=(40, 44, 36)) -> np.ndarray:
    idx = np.indices(shape, dtype=np.float32)
    c = (np.asarray(shape, np.float32) - 1) / 2
    r = np.sqrt(sum(((idx[d] - c[d]) / (0.35 * shape[d])) ** 2 for d in range(3)))
    return r < 1.0


def _network_probabilities(brain: np.ndarray, missed: np.ndarray) -> torch.Tensor:
    """A network that calls ``brain`` tissue (grey matter, white matter in its core) except ``missed``."""
    prob = np.full((4, *brain.shape), 0.02, np.float32)
    called = brain & ~missed
    prob[0][~called] = 0.94
    core = called & _brain_core(brain)
    prob[3][core] = 0.94
    prob[2][called & ~core] = 0.94
    return torch.from_numpy(prob / prob.sum(0, keepdims=True))


def _brain_core(brain: np.ndarray) -> np.ndarray:
    from scipy import ndimage

    return ndimage.binary_erosion(brain, iterations=4)


def _stripped_scan(brain: np.ndarray, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    image = np.where(_brain_core(brain), 1.0, 0.6) + 0.05 * rng.standard_normal(brain.shape)
    return np.where(brain, image.clip(0.05, None), 0.0).astype(np.float32)


def test_a_stripped_input_keeps_its_whole_brain() -> None:
    brain = _brain()
    missed = brain & (np.indices(brain.shape)[2] < 12)  # the network leaves the lower part out
    prob = _network_probabilities(brain, missed)
    image = torch.from_numpy(_stripped_scan(brain))[None]
    assert 0.15 < missed.sum() / brain.sum() < 0.25
    out = StrippedInputBrain()(MetaTensor(prob, affine=torch.eye(4)), image)
    labels = channel_argmax(out)[0].numpy()
    np.testing.assert_array_equal(labels > 0, brain)  # the input's brain, exactly
    assert out.meta["brain_source"] == "skull-stripped input"
    torch.testing.assert_close(out.sum(0), torch.ones(brain.shape))
    # where the network found tissue it keeps its tissue decision
    called = torch.from_numpy(brain & ~missed)
    assert torch.equal(channel_argmax(out)[0][called], channel_argmax(prob)[0][called])


def test_whole_heads_noisy_backgrounds_and_loose_masks_are_left_to_the_network() -> None:
    brain = _brain()
    prob = _network_probabilities(brain, np.zeros_like(brain))
    rng = np.random.default_rng(1)
    stripped = _stripped_scan(brain)
    head = _brain((60, 64, 56))  # a zero background around a head several times the brain
    head_scan = np.zeros(head.shape, np.float32)
    head_scan[head] = 0.8
    head_prob = torch.zeros(4, *head.shape)
    head_prob[0] = 1.0
    head_prob[:, 10:50, 10:54, 10:46] = prob
    noisy = stripped + np.abs(0.02 * rng.standard_normal(brain.shape)).astype(np.float32)  # noise after stripping
    from scipy import ndimage

    loose = np.where(ndimage.binary_dilation(brain, iterations=3), np.maximum(stripped, 0.3), 0.0)  # skull left on
    for p, scan in ((head_prob, head_scan), (prob, noisy), (prob, loose)):
        out = StrippedInputBrain()(p, torch.from_numpy(scan)[None])
        assert out is p
    assert skull_stripped_support(loose, channel_argmax(prob)[0] > 0) is None
    assert skull_stripped_support(loose, channel_argmax(prob)[0] > 0, max_support_ratio=2.0) is not None


def test_dictionary_version_and_errors() -> None:
    brain = _brain()
    prob = _network_probabilities(brain, brain & (np.indices(brain.shape)[0] < 10))
    image = torch.from_numpy(_stripped_scan(brain))[None]
    out = StrippedInputBraind(keys="pred", image_key="source_image")({"pred": prob, "source_image": image})
    np.testing.assert_array_equal(channel_argmax(out["pred"])[0].numpy() > 0, brain)
    with pytest.raises(KeyError, match="image_key='source_image'"):
        StrippedInputBraind(keys="pred", image_key="source_image")({"pred": prob})
    with pytest.raises(ValueError, match="expected max_support_ratio >= 1.*got 0.5"):
        StrippedInputBrain(max_support_ratio=0.5)
    with pytest.raises(ValueError, match="tissue_channels \\(1, 2, 3, 4\\) must be some, not all"):
        StrippedInputBrain(tissue_channels=(1, 2, 3, 4))(prob, image)
    with pytest.raises(ValueError, match="image spatial shape"):
        skull_stripped_support(image[0, :-1], brain)


def test_the_scan_copy_is_kept_while_either_feature_needs_it() -> None:
    """The preprocessing copies the loaded scan (``source_image``) unless both the refinement and the
    stripped-input brain are off (``medmamba.bundle.all_off``)."""
    from medmamba.bundle import all_off

    assert all_off(refine_tissue="false", stripped_input_brain=False) is True
    assert all_off(refine_tissue="false", stripped_input_brain="true") is False
    assert all_off(refine_tissue=True, stripped_input_brain=False) is False
    with pytest.raises(ValueError, match="stripped_input_brain must be true or false, got 'maybe'"):
        all_off(refine_tissue=False, stripped_input_brain="maybe")
    with pytest.raises(ValueError, match="all_off needs at least one switch"):
        all_off()


def test_a_halo_of_interpolation_leftovers_is_background() -> None:
    """A stripped template resampled by a float interpolation keeps values like 1e-30 around the brain
    (nilearn's 2 mm MNI152 template); they count as background, exact zeros or not."""
    brain = _brain()
    missed = brain & (np.indices(brain.shape)[2] < 12)
    prob = _network_probabilities(brain, missed)
    from scipy import ndimage

    halo = ndimage.binary_dilation(brain, iterations=6) & ~brain
    scan = _stripped_scan(brain)
    scan[halo] = 1e-30
    out = StrippedInputBrain()(prob, torch.from_numpy(scan)[None])
    np.testing.assert_array_equal(channel_argmax(out)[0].numpy() > 0, brain)
    assert skull_stripped_support(scan, channel_argmax(prob)[0] > 0, background_tolerance=0.0) is None
    with pytest.raises(ValueError, match="background_tolerance must be in \\[0, 1\\), got 1.5"):
        skull_stripped_support(scan, brain, background_tolerance=1.5)
