"""Tests of the 2.5D slice stacks: SliceStackd and SliceStackInferer."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from monai.inferers import SliceInferer
from monai.transforms import Compose
from torch import nn

from medmamba.inferers import SliceStackInferer, expected_in_channels
from medmamba.transforms import SliceStackd, stack_slices


def _index_volume(channels: int = 2, shape: tuple[int, int, int] = (4, 5, 6), axis: int = 2) -> torch.Tensor:
    """Volume whose voxel value is 100 * modality + slice index along ``axis``."""
    idx = torch.arange(shape[axis], dtype=torch.float32)
    view = [1, 1, 1]
    view[axis] = -1
    vol = idx.reshape(view).expand(*shape)
    return torch.stack([vol + 100 * c for c in range(channels)])


def _reference_stack(vol: np.ndarray, s: int, axis: int, k: int) -> np.ndarray:
    """Hand-written stack of one slice: modality-major, edges replicated."""
    n = vol.shape[1 + axis]
    chans = []
    for c in range(vol.shape[0]):
        for o in range(-k, k + 1):
            chans.append(np.take(vol[c], min(max(s + o, 0), n - 1), axis=axis))
    return np.stack(chans)


class _SmallNet(nn.Module):
    def __init__(self, in_channels: int, out_channels: int = 3) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, out_channels, 3, padding=1)
        )
        self.batch_sizes: list[int] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.batch_sizes.append(x.shape[0])
        return self.body(x)


# ---------------------------------------------------------------- SliceStackd


def test_stack_at_volume_edges_replicates_and_is_modality_major() -> None:
    vol = _index_volume(channels=2, shape=(3, 4, 6), axis=2)
    out = SliceStackd("image", spatial_axis=2, context=2, slices=[0, 1, 5])({"image": vol})
    assert [o["slice_index"] for o in out] == [0, 1, 5]
    centre_values = [o["image"][:, 0, 0].tolist() for o in out]
    assert centre_values[0] == [0, 0, 0, 1, 2, 100, 100, 100, 101, 102]
    assert centre_values[1] == [0, 0, 1, 2, 3, 100, 100, 101, 102, 103]
    assert centre_values[2] == [3, 4, 5, 5, 5, 103, 104, 105, 105, 105]
    assert out[0]["image"].shape == (10, 3, 4)


@pytest.mark.parametrize("axis", [0, 1, 2, -1])
@pytest.mark.parametrize("context", [0, 1, 2])
def test_stack_matches_hand_written_reference_on_every_axis(axis: int, context: int) -> None:
    rng = np.random.default_rng(0)
    vol = rng.normal(size=(2, 5, 6, 7)).astype(np.float32)
    label = (rng.random(size=(1, 5, 6, 7)) > 0.5).astype(np.uint8)
    samples = SliceStackd("img", "seg", spatial_axis=axis, context=context, num_samples=None)(
        {"img": vol, "seg": label}
    )
    n = vol.shape[1 + axis % 3]
    assert len(samples) == n
    for s, sample in enumerate(samples):
        assert isinstance(sample["img"], np.ndarray)
        np.testing.assert_array_equal(sample["img"], _reference_stack(vol, s, axis % 3, context))
        np.testing.assert_array_equal(sample["seg"], np.take(label, s, axis=1 + axis % 3))
        assert sample["seg"].dtype == np.uint8


def test_label_gets_centre_slice_only_and_other_keys_are_copied() -> None:
    vol = _index_volume(channels=1)
    label = torch.stack([_index_volume(1)[0], -_index_volume(1)[0]])  # 2 label channels
    out = SliceStackd("image", "label", context=1, slices=[2])({"image": vol, "label": label, "id": "case7"})[0]
    assert out["image"].shape == (3, 4, 5)
    assert out["label"].shape == (2, 4, 5)
    assert torch.all(out["label"][0] == 2) and torch.all(out["label"][1] == -2)
    assert out["id"] == "case7"


def _fg_case(num_slices: int = 20, fg: tuple[int, ...] = (3, 4, 5)) -> dict:
    label = torch.zeros(1, 4, 4, num_slices)
    for s in fg:
        label[0, 1, 2, s] = 1
    return {"image": torch.randn(1, 4, 4, num_slices), "label": label}


@pytest.mark.parametrize(("pos", "neg", "expect_fg"), [(1, 0, True), (0, 1, False)])
def test_sampler_pure_foreground_or_background(pos: float, neg: float, expect_fg: bool) -> None:
    t = SliceStackd("image", "label", context=1, num_samples=30, pos=pos, neg=neg)
    t.set_random_state(seed=1)
    chosen = [o["slice_index"] for o in t(_fg_case())]
    assert len(chosen) == 30
    assert all((s in (3, 4, 5)) == expect_fg for s in chosen)
    if not expect_fg:
        assert len(set(chosen)) > 5  # drawn from the 17 background slices, not stuck on one


def test_sampler_ratio_and_seed_determinism() -> None:
    t = SliceStackd("image", "label", context=0, num_samples=400, pos=3, neg=1)
    t.set_random_state(seed=123)
    first = [o["slice_index"] for o in t(_fg_case())]
    fg_fraction = np.mean([s in (3, 4, 5) for s in first])
    assert 0.68 < fg_fraction < 0.82  # 0.75 expected; binomial sd is 0.022
    t.set_random_state(seed=123)
    assert [o["slice_index"] for o in t(_fg_case())] == first


def test_sampler_without_foreground_falls_back_to_any_slice() -> None:
    t = SliceStackd("image", "label", context=0, num_samples=50, pos=1, neg=0)
    t.set_random_state(seed=0)
    chosen = [o["slice_index"] for o in t(_fg_case(fg=()))]
    assert len(chosen) == 50 and len(set(chosen)) > 5


def test_min_foreground_and_threshold_define_foreground_slices() -> None:
    case = _fg_case(fg=(3,))
    case["label"][0, :, :, 7] = 0.4  # 16 voxels, but below the threshold
    case["label"][0, :2, :, 9] = 1  # 8 voxels above it
    t = SliceStackd("image", "label", context=0, num_samples=40, pos=1, neg=0, fg_threshold=0.5, min_foreground=4)
    t.set_random_state(seed=0)
    assert {o["slice_index"] for o in t(case)} == {9}


def test_meta_tensor_keeps_slice_meta_and_2d_affine() -> None:
    affine = torch.tensor([[2.0, 0, 0, 10], [0, 3.0, 0, 20], [0, 0, 4.0, 30], [0, 0, 0, 1]])
    img = MetaTensor(_index_volume(1), affine=affine, meta={"filename_or_obj": "ct.nii.gz"})
    out = SliceStackd("image", spatial_axis=0, context=1, slices=[2])({"image": img})[0]["image"]
    assert isinstance(out, MetaTensor)
    assert out.meta["slice_index"] == 2 and out.meta["slice_axis"] == 0 and out.meta["slice_context"] == 1
    assert out.meta["filename_or_obj"] == "ct.nii.gz"
    torch.testing.assert_close(out.meta["volume_affine"].double(), affine.double())
    expected = torch.tensor([[3.0, 0, 20], [0, 4.0, 30], [0, 0, 1]], dtype=torch.float64)
    torch.testing.assert_close(out.affine.double(), expected)
    assert img.shape == (1, 4, 5, 6)  # input untouched


def test_compose_flattens_samples() -> None:
    t = Compose([SliceStackd("image", "label", context=1, num_samples=4)])
    t.set_random_state(seed=0)
    out = t(_fg_case())
    assert isinstance(out, list) and len(out) == 4
    assert all(o["image"].shape == (3, 4, 4) for o in out)


def test_slicestackd_errors() -> None:
    with pytest.raises(ValueError, match="context=3 needs a stack of 7 slices"):
        SliceStackd("image", context=3, num_samples=None)({"image": torch.zeros(1, 4, 4, 6)})
    with pytest.raises(ValueError, match=r"\(C, H, W, D\)"):
        SliceStackd("image", context=0)({"image": torch.zeros(4, 4, 6)})
    with pytest.raises(ValueError, match="spatial_axis"):
        SliceStackd("image", spatial_axis=3)
    with pytest.raises(TypeError, match="context"):
        SliceStackd("image", context=1.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="disjoint"):
        SliceStackd("image", label_keys="image")
    with pytest.raises(ValueError, match="pos and neg"):
        SliceStackd("image", pos=0, neg=0)
    with pytest.raises(ValueError, match="disagree"):
        SliceStackd("image", "label", context=0)({"image": torch.zeros(1, 4, 4, 6), "label": torch.zeros(1, 4, 4, 5)})


# ---------------------------------------------------------------- SliceStackInferer


@pytest.mark.parametrize("spatial_dim", [0, 1, 2])
def test_context0_equals_monai_slice_inferer(spatial_dim: int) -> None:
    torch.manual_seed(0)
    x = torch.randn(2, 2, 9, 10, 7)
    net = _SmallNet(2).eval()
    roi = [s for i, s in enumerate(x.shape[2:]) if i != spatial_dim]
    with torch.no_grad():
        ours = SliceStackInferer(spatial_dim, context=0, sw_batch_size=4)(x, net)
        theirs = SliceInferer(spatial_dim=spatial_dim, roi_size=roi, sw_batch_size=4)(x, net)
    assert ours.shape == theirs.shape == (2, 3, 9, 10, 7)
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("spatial_dim", [0, 2])
def test_context1_equals_hand_written_loop(spatial_dim: int) -> None:
    torch.manual_seed(0)
    x = torch.randn(2, 2, 8, 9, 5)
    net = _SmallNet(6).eval()
    with torch.no_grad():
        ours = SliceStackInferer(spatial_dim, context=1, sw_batch_size=3)(x, net)
        n = x.shape[2 + spatial_dim]
        expected = []
        for s in range(n):
            chans = []
            for c in range(x.shape[1]):
                for o in (-1, 0, 1):
                    chans.append(x[:, c].select(1 + spatial_dim, min(max(s + o, 0), n - 1)))
            expected.append(net(torch.stack(chans, dim=1)))
        expected_vol = torch.stack(expected, dim=2 + spatial_dim)
    torch.testing.assert_close(ours, expected_vol, atol=1e-5, rtol=1e-5)


def test_inferer_sees_the_same_stacks_as_slicestackd() -> None:
    vol = torch.randn(2, 6, 5, 7)
    samples = SliceStackd("image", context=2, spatial_axis=1, num_samples=None)({"image": vol})
    seen: list[torch.Tensor] = []

    def net(x: torch.Tensor) -> torch.Tensor:
        seen.append(x)
        return x[:, :1]

    SliceStackInferer(1, context=2, sw_batch_size=2)(vol[None], net)
    torch.testing.assert_close(torch.cat(seen), torch.stack([s["image"] for s in samples]))


def test_batches_are_bounded_by_sw_batch_size() -> None:
    net = _SmallNet(3)
    SliceStackInferer(2, context=1, sw_batch_size=4)(torch.randn(2, 1, 6, 6, 10), net)
    assert net.batch_sizes == [4, 4, 2, 4, 4, 2]
    assert max(net.batch_sizes) <= 4 and sum(net.batch_sizes) == 20


def test_stack_slices_builds_only_requested_slices() -> None:
    vol = _index_volume(channels=1, shape=(3, 4, 50))[None]
    out = stack_slices(vol, torch.tensor([0, 49]), spatial_axis=2, context=1)
    assert out.shape == (1, 2, 3, 3, 4)
    assert out[0, :, :, 0, 0].tolist() == [[0, 0, 1], [48, 49, 49]]


def test_sequence_dict_and_classification_outputs() -> None:
    x = torch.randn(1, 1, 6, 5, 4)
    seq = SliceStackInferer(0, context=0, sw_batch_size=4)(x, lambda t: [t * 2, t[:, :, ::2]])
    assert isinstance(seq, tuple) and seq[0].shape == (1, 1, 6, 5, 4) and seq[1].shape == (1, 1, 6, 3, 4)
    torch.testing.assert_close(seq[0], 2 * x)
    dct = SliceStackInferer(2, context=0)(x, lambda t: {"seg": t + 1})
    torch.testing.assert_close(dct["seg"], x + 1)
    cls = SliceStackInferer(2, context=0)(x, lambda t: t.mean(dim=(2, 3)))
    assert cls.shape == (1, 1, 4)
    torch.testing.assert_close(cls, x.mean(dim=(2, 3)))


def test_meta_tensor_input_keeps_meta_and_gradients_flow() -> None:
    net = _SmallNet(3)
    x = MetaTensor(torch.randn(1, 1, 6, 6, 5), affine=torch.diag(torch.tensor([2.0, 2.0, 5.0, 1.0])))
    out = SliceStackInferer(2, context=1, sw_batch_size=2, progress=True)(x, net)
    assert isinstance(out, MetaTensor)
    torch.testing.assert_close(out.affine, x.affine)
    out.sum().backward()
    assert net.body[0].weight.grad is not None and net.body[0].weight.grad.abs().sum() > 0


def test_usable_in_supervised_evaluator() -> None:
    from monai.engines import SupervisedEvaluator

    data = [{"image": torch.randn(1, 1, 8, 8, 5), "label": torch.zeros(1, 1, 8, 8, 5)}]
    net = _SmallNet(3, out_channels=2)
    evaluator = SupervisedEvaluator(
        device=torch.device("cpu"),
        val_data_loader=data,
        network=net,
        inferer=SliceStackInferer(2, context=1, sw_batch_size=8),
    )
    evaluator.run()
    assert evaluator.state.output[0]["pred"].shape == (2, 8, 8, 5)


def test_inferer_errors() -> None:
    net = _SmallNet(3)
    inferer = SliceStackInferer(2, context=1)
    with pytest.raises(ValueError, match="5D"):
        inferer(torch.randn(8, 8), net)
    with pytest.raises(ValueError, match="4D tensor"):
        inferer(torch.randn(1, 8, 8, 5), net)
    with pytest.raises(TypeError, match="torch.Tensor"):
        inferer(np.zeros((1, 1, 8, 8, 5)), net)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="context=3 needs a stack of 7 slices, larger than the volume"):
        SliceStackInferer(2, context=3)(torch.randn(1, 1, 8, 8, 5), _SmallNet(7))
    with pytest.raises(ValueError, match=r"takes 3 input channels.*3 slices x 2 modalities = 6"):
        inferer(torch.randn(1, 2, 8, 8, 5), net)

    class WithAttribute(nn.Module):
        in_channels = 5

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x

    with pytest.raises(ValueError, match="takes 5 input channels"):
        inferer(torch.randn(1, 1, 8, 8, 5), WithAttribute())
    assert expected_in_channels(nn.DataParallel(_SmallNet(9))) == 9
    assert expected_in_channels(lambda t: t) is None
    # unchecked when asked not to
    out = SliceStackInferer(2, context=1, check_channels=False)(torch.randn(1, 1, 8, 8, 5), WithAttribute())
    assert out.shape == (1, 3, 8, 8, 5)
    with pytest.raises(ValueError, match="spatial_dim"):
        SliceStackInferer(spatial_dim=3)
    with pytest.raises(ValueError, match="sw_batch_size"):
        SliceStackInferer(sw_batch_size=0)
    with pytest.raises(ValueError, match="context"):
        SliceStackInferer(context=-1)
