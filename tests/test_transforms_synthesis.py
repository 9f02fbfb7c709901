"""Domain-randomised image synthesis from generation label maps (RandDomainSynthesisd)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.data import MetaTensor

from medmamba.transforms import RandDomainSynthesisd


def _phantom() -> tuple[MetaTensor, torch.Tensor]:
    """A 'head': air, WM core, GM shell, CSF shell, fat and bone shells, on a 32^3 grid."""
    idx = torch.stack(torch.meshgrid(*(torch.arange(32.0),) * 3, indexing="ij"))
    r = ((idx - 15.5) ** 2).sum(0).sqrt()
    gen = torch.zeros(32, 32, 32, dtype=torch.long)
    for radius, label in ((15, 9), (13, 6), (11, 5), (9, 1), (7, 2), (5, 3)):
        gen[r <= radius] = label
    gen[(r <= 2)] = 4  # a lesion in the white matter
    t1 = torch.tensor([0.0, 0.3, 0.65, 1.0, 0.5, 0.25, 0.05, 0.8, 0.5, 1.1, 0.2])[gen]
    return MetaTensor(t1[None], affine=torch.diag(torch.tensor([2.0, 2.0, 2.0, 1.0]))), gen[None]


def _class_means(img: torch.Tensor, gen: torch.Tensor) -> dict[int, float]:
    return {int(k): float(img[gen == k].mean()) for k in torch.unique(gen)}


def test_random_contrasts_vary_and_keep_labels_separable() -> None:
    image, gen = _phantom()
    t = RandDomainSynthesisd("image", prob=1.0, random_contrast_prob=1.0, strip_prob=0.0, lowres_prob=0.0, max_blur=0.0,
                             max_noise=0.0, bias_std=(0, 0))
    t.set_random_state(0)
    orders = set()
    for _ in range(12):
        out = t({"image": image, "generation": gen})["image"]
        assert isinstance(out, MetaTensor) and tuple(out.shape) == (1, 32, 32, 32)
        assert torch.equal(out.affine, image.affine)
        assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0 + 1e-6
        means = _class_means(out[0], gen[0])
        assert abs(means[2] - means[3]) >= 0.02  # GM/WM contrast kept (min_contrast 0.08 before gamma)
        orders.add(means[2] > means[3])
    assert orders == {True, False}  # both T1-like (WM brighter) and inverted (GM brighter) contrasts occur


def test_reference_contrast_keeps_the_t1_order_within_its_jitter() -> None:
    image, gen = _phantom()
    t = RandDomainSynthesisd("image", prob=1.0, random_contrast_prob=0.0, contrast_jitter=0.05, strip_prob=0.0,
                             lowres_prob=0.0, max_blur=0.0, max_noise=0.0, max_std=0.0, bias_std=(0, 0), gamma_std=0.0)
    t.set_random_state(4)
    for _ in range(5):
        m = _class_means(t({"image": image, "generation": gen})["image"][0], gen[0])
        assert m[9] > m[3] > m[2] > m[1] > m[6]  # T1: fat > WM > GM > CSF > bone


def test_lesion_differs_from_white_matter() -> None:
    image, gen = _phantom()
    t = RandDomainSynthesisd("image", prob=1.0, strip_prob=0.0, lowres_prob=0.0, max_blur=0.0, max_noise=0.0,
                             max_std=0.0, bias_std=(0, 0), gamma_std=0.0)
    t.set_random_state(1)
    for _ in range(10):
        means = _class_means(t({"image": image, "generation": gen})["image"][0], gen[0])
        assert abs(means[4] - means[3]) > 0.1 * max(means.values())


def test_skull_stripping_sets_every_non_brain_label_to_the_air_value() -> None:
    image, gen = _phantom()
    t = RandDomainSynthesisd("image", prob=1.0, strip_prob=1.0, dark_air_prob=1.0, lowres_prob=0.0, max_blur=0.0,
                             max_noise=0.0, max_std=0.0, bias_std=(0, 0), gamma_std=0.0)
    t.set_random_state(2)
    out = t({"image": image, "generation": gen})["image"][0]
    non_brain = (gen[0] == 0) | (gen[0] >= 5)
    assert float(out[non_brain].std()) < 1e-6  # one value: air


def test_same_seed_same_image_and_thick_slices_blur_along_one_axis() -> None:
    image, gen = _phantom()
    a = RandDomainSynthesisd("image", lowres_prob=1.0, thickness=(3.0, 3.0)).set_random_state(7)
    b = RandDomainSynthesisd("image", lowres_prob=1.0, thickness=(3.0, 3.0)).set_random_state(7)
    out_a = a({"image": image, "generation": gen})["image"]
    out_b = b({"image": image, "generation": gen})["image"]
    assert torch.equal(out_a, out_b)


def test_without_labels_only_corrupts_the_stored_image() -> None:
    image, _ = _phantom()
    t = RandDomainSynthesisd("image", max_blur=0.0, lowres_prob=0.0, bias_std=(0, 0), gamma_std=0.0, max_noise=0.0)
    out = t({"image": image})["image"]
    # normalised by its 99.9th percentile only: the stored contrast is kept
    np.testing.assert_allclose(out.numpy(), np.clip(image.numpy() / np.quantile(image.numpy(), 0.999, method="lower"), 0, 1), atol=1e-5)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"prob": 1.5}, "prob must be a probability"),
        ({"thickness": (0.5, 2.0)}, "thickness must be a"),
        ({"max_noise": -0.1}, "max_noise must be >= 0"),
        ({"contrast_jitter": 1.0}, "contrast_jitter must be in"),
        ({"keys": ["a", "b"]}, "keys must name one image"),
    ],
)
def test_invalid_arguments_are_named(kwargs: dict, match: str) -> None:
    kwargs = {"keys": "image", **kwargs}
    with pytest.raises(ValueError, match=match):
        RandDomainSynthesisd(**kwargs)


def test_shape_mismatch_is_reported() -> None:
    image, gen = _phantom()
    with pytest.raises(ValueError, match="must have the image's shape"):
        RandDomainSynthesisd("image")({"image": image, "generation": gen[..., :16]})
