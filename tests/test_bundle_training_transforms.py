"""The bundles' random training transforms leave the cached volumes they start from untouched.

Both training data sets are ``CacheDataset`` s with ``copy_cache: false``: the cached (loaded,
oriented, cropped) volumes are handed to the random transforms without a deep copy, which is only
right while no random transform writes into its input.
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from monai.bundle import ConfigParser
from monai.data import MetaTensor
from monai.transforms import Compose
from monai.utils import set_determinism

ROOT = Path(__file__).resolve().parents[1]


def _volume() -> dict[str, MetaTensor]:
    """A 64 x 64 x 24 'head' of generation labels, its tissue labels, a lesion and a T1-like image."""
    idx = torch.stack(torch.meshgrid(torch.arange(64.0), torch.arange(64.0), torch.arange(24.0), indexing="ij"))
    r = (((idx - torch.tensor([31.5, 31.5, 11.5])[:, None, None, None]) * torch.tensor([1.0, 1.0, 2.5])[:, None, None, None]) ** 2).sum(0).sqrt()
    gen = torch.zeros(64, 64, 24, dtype=torch.long)
    for radius, label in ((30, 9), (27, 6), (25, 5), (22, 1), (19, 2), (15, 3)):
        gen[r <= radius] = label
    lesion = ((idx[0] - 31.5) ** 2 + (idx[1] - 36.5) ** 2 <= 9) & (idx[2] >= 10) & (idx[2] <= 13)
    gen[lesion] = 4
    tissue = torch.where((gen >= 1) & (gen <= 3), gen, torch.zeros_like(gen))
    tissue[lesion] = 3
    t1 = torch.tensor([0.0, 0.3, 0.65, 1.0, 0.5, 0.25, 0.05, 0.8, 0.5, 1.1, 0.2])[gen] * 1000.0
    affine = torch.diag(torch.tensor([2.0, 2.0, 2.0, 1.0]))
    return {
        "image": MetaTensor(t1[None].float(), affine=affine),
        "label": MetaTensor(tissue[None].float(), affine=affine),
        "lesion": MetaTensor(lesion[None].float(), affine=affine),
        "generation": MetaTensor(gen[None].float(), affine=affine),
        "id": "phantom",
    }


@pytest.mark.parametrize("bundle", ["classification", "segmentation"])
@pytest.mark.parametrize("config", [("train.json",), ("train.json", "train_teacher.json")], ids="+".join)
def test_random_training_transforms_do_not_write_into_the_cached_volume(bundle: str, config: tuple[str, ...]) -> None:
    root = ROOT / "bundles" / f"mobilemamba_{bundle}"
    parser = ConfigParser()
    parser.read_config([str(root / "configs" / c) for c in config])  # the teacher's: an overlay on train.json
    parser["bundle_root"] = str(root)
    assert parser["train#dataset#copy_cache"] is False
    transforms = Compose(parser.get_parsed_content("train#random_transforms"))
    cached = _volume()
    if bundle == "segmentation":
        cached = {k: v for k, v in cached.items() if k != "lesion"}
    before = copy.deepcopy(cached)
    set_determinism(seed=0)
    try:
        outputs = [transforms(cached) for _ in range(6)]  # synthesis, bias field, slice stacks, lesions, flips
    finally:
        set_determinism(seed=None)
    assert all(isinstance(o, list) and len(o) == parser.get_parsed_content("slices_per_volume") for o in outputs)
    assert set(cached) == set(before)
    for key, value in before.items():
        if isinstance(value, torch.Tensor):
            assert torch.equal(cached[key].as_tensor(), value.as_tensor()), key
            assert torch.equal(cached[key].affine, value.affine), key


@pytest.mark.parametrize("bundle", ["classification", "segmentation"])
def test_training_samples_are_those_of_monai_rand_flip(bundle: str) -> None:
    """The bundles flip slice stacks with :class:`medmamba.transforms.RandStackFlipd` (plain tensors, no
    meta-data path); with MONAI's ``RandFlipd`` in its place the same seed gives the same samples."""
    from monai.transforms import RandFlipd

    from medmamba.transforms import RandStackFlipd

    root = ROOT / "bundles" / f"mobilemamba_{bundle}"

    def random_transforms() -> list:
        parser = ConfigParser()
        parser.read_config(str(root / "configs" / "train.json"))
        parser["bundle_root"] = str(root)
        return parser.get_parsed_content("train#random_transforms")

    ours = random_transforms()
    flips = [t for t in ours if isinstance(t, RandStackFlipd)]
    assert len(flips) == (2 if bundle == "classification" else 1)
    assert not any(type(t) is RandFlipd for t in ours)
    theirs = [
        RandFlipd(t.keys, prob=t.prob, spatial_axis=t.flipper.spatial_axis) if isinstance(t, RandStackFlipd) else t
        for t in random_transforms()
    ]
    cached = _volume()
    if bundle == "segmentation":
        cached = {k: v for k, v in cached.items() if k != "lesion"}
    a, b = Compose(ours).set_random_state(seed=4), Compose(theirs).set_random_state(seed=4)
    compared = 0
    for _ in range(3):
        for x, y in zip(a(cached), b(cached), strict=True):
            assert type(x["image"]) is torch.Tensor  # plain from the flip on
            for key in ("image", "label"):
                assert torch.equal(x[key], torch.as_tensor(y[key])), key
            compared += 1
    assert compared == 3 * {"classification": 16, "segmentation": 8}[bundle]  # slices_per_volume of train.json
