"""MobileMamba network: reference fixtures, variants, input handling, fusion, checkpoints, export."""

from __future__ import annotations

import json
import logging
import math
import pickle

import pytest
import torch
from torch import nn

from medmamba.networks import (
    MOBILEMAMBA_VARIANTS,
    MobileMamba,
    convert_official_state_dict,
    emulate_reference_cpu_merge,
    fuse_norms,
)
from medmamba.networks.blocks import split_channels

from reference_fixtures import REFERENCE_DIR, load_reference, model_from_fixture


def _relerr(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max()).item()


@pytest.mark.parametrize("name", ["mobilemamba_tiny", "mobilemamba_tiny_dist"])
def test_reference_fixture_outputs(name: str) -> None:
    """Number for number against the reference (whose CPU merge couples the images of a batch)."""
    fx = load_reference(name)
    model = emulate_reference_cpu_merge(model_from_fixture(fx))
    wte = model.stages[0].blocks[0].mixer.branch.global_branch
    probes = fx["probes"]
    with torch.no_grad():
        assert _relerr(model(fx["input"]), fx["output"]) <= 1e-4
        stem = model.stem(fx["input"])
        assert _relerr(stem, fx["features"][0]) <= 1e-4
        for ours, ref in zip(model.forward_features(fx["input"]), fx["features"][1:]):
            assert ours.shape == ref.shape
            assert _relerr(ours, ref) <= 1e-4
        assert _relerr(wte(probes["wte_mamba_in"]), probes["wte_mamba_out"]) <= 1e-4
        assert _relerr(wte.ssm(probes["ss2d_in"]), probes["ss2d_out"]) <= 1e-4
        fused = fuse_norms(model)
        assert _relerr(fused(fx["input"]), fx["output_fused"]) <= 1e-4


@pytest.mark.parametrize("name", ["mobilemamba_tiny", "mobilemamba_tiny_dist"])
def test_per_image_merge_equals_reference_for_single_images(name: str) -> None:
    """Our default merge is the reference's computation for every batch of one image ..."""
    fx = load_reference(name)
    ours = model_from_fixture(fx)
    coupled = emulate_reference_cpu_merge(model_from_fixture(fx))
    x = fx["input"]
    with torch.no_grad():
        for i in range(x.shape[0]):
            assert _relerr(ours(x[i : i + 1]), coupled(x[i : i + 1])) <= 1e-5
        # ... and, unlike the reference's CPU path, an image's output does not depend on its batch
        batch = ours(x)
        alone = torch.cat([ours(x[i : i + 1]) for i in range(x.shape[0])])
        assert _relerr(batch, alone) <= 1e-5
        assert _relerr(coupled(x), torch.cat([coupled(x[i : i + 1]) for i in range(x.shape[0])])) > 1e-3


def test_emulation_switch_needs_selective_scan_modules() -> None:
    with pytest.raises(ValueError, match="holds no SelectiveScan2D"):
        emulate_reference_cpu_merge(nn.Linear(2, 2))


def test_fusion_removes_every_batchnorm_and_keeps_outputs() -> None:
    fx = load_reference("mobilemamba_tiny_dist")
    model = model_from_fixture(fx)
    fused = fuse_norms(model)
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in fused.modules())
    # the input model is left as it was (fuse_norms copies by default)
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    x = torch.randn(2, 3, 75, 61)
    with torch.no_grad():
        assert _relerr(fused(x), model(x)) <= 1e-5
    assert sum(1 for _ in fused.modules()) < sum(1 for _ in model.modules())


def _official_variants() -> dict:
    path = REFERENCE_DIR / "official_variants.json"
    if not path.exists():
        pytest.skip(f"{path} not found")
    return json.loads(path.read_text())


@pytest.mark.parametrize("variant", ["T2", "T4", "S6", "B1", "B2", "B4"])
def test_variant_parameter_count_and_official_keys(variant: str) -> None:
    official = _official_variants()[variant]
    model = MobileMamba(variant)
    assert sum(p.numel() for p in model.parameters()) == official["params"]
    official_sd = {k: torch.zeros(shape) for k, shape in official["state_dict"].items()}
    converted = convert_official_state_dict(official_sd)
    ours = model.state_dict()
    assert set(converted) == set(ours)
    assert all(tuple(converted[k].shape) == tuple(ours[k].shape) for k in ours)
    assert model.config["embed_dim"] == tuple(official["config"]["embed_dim"])


def test_variant_name_is_case_insensitive_and_overridable() -> None:
    a = MobileMamba("T2", num_classes=4)
    b = MobileMamba("t2", num_classes=4, depth=(1, 1, 1))
    assert a.config["depth"] == (1, 2, 2)
    assert b.config["depth"] == (1, 1, 1)
    assert len(b.stages[1].blocks) == 1


def test_channel_split_matches_the_paper_rule() -> None:
    # T2 stage 1: floor(0.8·144)=115 → 112 (nearest multiple of 16); floor(0.2·144)=28; 4 identity
    assert split_channels(144, 0.8, 0.2) == (112, 28, 4)
    # tiny stage 1: 25 → 32 global; 6 local would overflow → 0 local
    assert split_channels(32, 0.8, 0.2) == (32, 0, 0)
    assert split_channels(64, 0.6, 0.3) == (32, 19, 13)


@pytest.mark.parametrize(
    "shape, in_channels",
    [((1, 1, 97, 131), 1), ((2, 3, 33, 47), 3), ((1, 5, 64, 64), 5), ((2, 1, 17, 200), 1)],
)
def test_any_input_size_and_channel_count(shape: tuple[int, ...], in_channels: int) -> None:
    model = MobileMamba(
        None,
        in_channels=in_channels,
        num_classes=3,
        embed_dim=(32, 48, 64),
        depth=(1, 1, 1),
        global_ratio=(0.8, 0.7, 0.6),
        local_ratio=(0.2, 0.2, 0.3),
        kernels=(7, 5, 3),
        ssm_ratio=2,
        drop_path=0.0,
    ).eval()
    x = torch.randn(shape)
    with torch.no_grad():
        out = model(x)
        feats = model.forward_features(x)
    assert out.shape == (shape[0], 3)
    assert torch.isfinite(out).all()
    h, w = shape[2], shape[3]
    for feat, stride, width in zip(feats, (16, 32, 64), (32, 48, 64)):
        assert feat.shape == (shape[0], width, math.ceil(h / stride), math.ceil(w / stride))


def test_feature_extractor_and_distillation_heads() -> None:
    x = torch.randn(2, 3, 64, 64)
    extractor = MobileMamba("t2", num_classes=0).eval()
    with torch.no_grad():
        assert extractor(x).shape == (2, 368)
    student = MobileMamba("t2", num_classes=5, distillation=True)
    student.train()
    cls, dist = student(x)
    assert cls.shape == dist.shape == (2, 5)
    (cls.sum() + dist.sum()).backward()
    scan_grads = [p.grad for n, p in student.named_parameters() if n.endswith("A_log")]
    assert scan_grads and all(g is not None and torch.isfinite(g).all() for g in scan_grads)
    student.eval()
    with torch.no_grad():
        mean = student(x)
    assert mean.shape == (2, 5)


def test_bad_arguments_and_inputs_raise_clear_errors() -> None:
    with pytest.raises(ValueError, match="spatial_dims=3"):
        MobileMamba("t2", spatial_dims=3)
    with pytest.raises(ValueError, match="variant='x9'"):
        MobileMamba("x9")
    with pytest.raises(ValueError, match="missing: .*embed_dim"):
        MobileMamba(None, depth=(1, 1, 1))
    with pytest.raises(ValueError, match="in_channels=0"):
        MobileMamba("t2", in_channels=0)
    model = MobileMamba("t2", in_channels=1, num_classes=2).eval()
    with pytest.raises(ValueError, match="3 channels but the network was built with in_channels=1"):
        model(torch.randn(1, 3, 64, 64))
    with pytest.raises(ValueError, match="expects a 4D input .* 5D tensor"):
        model(torch.randn(1, 1, 8, 64, 64))


def _write_checkpoint(tmp_path, fx: dict, wrap: str | None = "net"):
    path = tmp_path / "ckpt.pth"
    sd = fx["state_dict"]
    torch.save({wrap: sd} if wrap else sd, path)
    return path


def _tiny_kwargs(fx: dict) -> dict:
    cfg = dict(fx["config"])
    cfg.pop("img_size")
    return cfg


def test_from_official_checkpoint_adapts_stem_and_head(tmp_path, caplog) -> None:
    fx = load_reference("mobilemamba_tiny")
    reference = model_from_fixture(fx)
    path = _write_checkpoint(tmp_path, fx, "net_E")
    import medmamba.networks.nets.mobilemamba as mm

    mm.MOBILEMAMBA_VARIANTS["tiny-test"] = {**_tiny_kwargs(fx), "img_size": 96}
    try:
        with caplog.at_level(logging.INFO, logger="medmamba.networks.convert"):
            model = MobileMamba.from_official_checkpoint(path, "tiny-test", in_channels=1, num_classes=3)
    finally:
        mm.MOBILEMAMBA_VARIANTS.pop("tiny-test")
    assert "adapting the stem from 3 to 1 input channels" in caplog.text
    assert "re-creating head for 3 classes (checkpoint has 5)" in caplog.text
    gray = torch.randn(2, 1, 96, 96)
    with torch.no_grad():
        # summed RGB filters: a grey image gives what the RGB network gives for three equal channels
        ours = model.forward_features(gray)[-1]
        ref = reference.forward_features(gray.repeat(1, 3, 1, 1))[-1]
        assert _relerr(ours, ref) <= 1e-5
        assert model(gray).shape == (2, 3)


def test_from_official_checkpoint_reports_wrong_keys_and_shapes(tmp_path) -> None:
    fx = load_reference("mobilemamba_tiny")
    sd = dict(fx["state_dict"])
    sd.pop("patch_embed.0.bn.weight")
    sd["blocks1.0.extra.weight"] = torch.zeros(3)
    sd["head.l.bias"] = torch.zeros(5)
    sd["blocks1.0.dw0.m.c.weight"] = torch.zeros(32, 1, 5, 5)
    path = tmp_path / "bad.pth"
    torch.save(sd, path)
    import medmamba.networks.nets.mobilemamba as mm

    mm.MOBILEMAMBA_VARIANTS["tiny-test"] = {**_tiny_kwargs(fx), "img_size": 96}
    try:
        with pytest.raises(ValueError) as err:
            MobileMamba.from_official_checkpoint(path, "tiny-test", num_classes=5)
    finally:
        mm.MOBILEMAMBA_VARIANTS.pop("tiny-test")
    msg = str(err.value)
    assert "stem.0.bn.weight" in msg  # missing
    assert "stages.0.blocks.0.extra.weight" in msg  # unexpected
    assert "stages.0.blocks.0.dw_conv0.branch.conv.weight: checkpoint (32, 1, 5, 5) vs network (32, 1, 3, 3)" in msg


class _Payload:
    def __reduce__(self):
        return (print, ("this should never run",))


def test_checkpoint_loading_refuses_arbitrary_objects(tmp_path) -> None:
    path = tmp_path / "evil.pth"
    with open(path, "wb") as f:
        pickle.dump({"net": _Payload()}, f)
    with pytest.raises(ValueError, match=r"evil\.pth' was refused"):
        MobileMamba.from_official_checkpoint(path, "t2")


def test_checkpoint_without_a_state_dict_is_rejected(tmp_path) -> None:
    path = tmp_path / "empty.pth"
    torch.save({"epoch": 3}, path)
    with pytest.raises(ValueError, match="holds no state dict"):
        MobileMamba.from_official_checkpoint(path, "t2")


def test_variants_table_matches_the_paper() -> None:
    assert set(MOBILEMAMBA_VARIANTS) == {"t2", "t4", "s6", "b1", "b2", "b4"}
    assert MOBILEMAMBA_VARIANTS["b4"]["img_size"] == 512
    assert MOBILEMAMBA_VARIANTS["b1"]["drop_path"] == 0.03


def _tiny_mobilemamba(in_channels: int, channels_last_stem: bool = True) -> MobileMamba:
    torch.manual_seed(0)
    return MobileMamba(
        None, in_channels=in_channels, num_classes=3, embed_dim=(32, 48, 64), depth=(1, 1, 1),
        global_ratio=(0.8, 0.7, 0.6), local_ratio=(0.2, 0.2, 0.3), kernels=(7, 5, 3), ssm_ratio=2.0,
        drop_path=0.0, channels_last_stem=channels_last_stem,
    )


@pytest.mark.parametrize("in_channels", [1, 3])
def test_channels_last_stem_keeps_outputs_and_the_input_layout(in_channels: int) -> None:
    model = fuse_norms(_tiny_mobilemamba(in_channels))
    x = torch.randn(2, in_channels, 64, 80)
    with torch.no_grad():
        model.channels_last_stem = False
        plain_stem, plain = model.forward_stem(x), model(x)
        model.channels_last_stem = True
        stem, out = model.forward_stem(x), model(x)
    assert stem.shape == (2, 32, 4, 5)
    assert stem.is_contiguous()  # the stages get an NCHW map again
    assert _relerr(stem, plain_stem) < 1e-5
    assert _relerr(out, plain) < 1e-5
    if in_channels > 1:  # a channels-last input keeps its layout (nothing converted back)
        xc = x.contiguous(memory_format=torch.channels_last)
        with torch.no_grad():
            stem_cl = model.forward_stem(xc)
        assert stem_cl.is_contiguous(memory_format=torch.channels_last) and not stem_cl.is_contiguous()
        assert _relerr(stem_cl, plain_stem) < 1e-5


def test_channels_last_stem_leaves_training_untouched() -> None:
    model = _tiny_mobilemamba(3).train()
    x = torch.randn(2, 3, 64, 64)
    stem = model.forward_stem(x)
    assert stem.is_contiguous()
    assert torch.equal(stem, model.stem(x))  # the same kernels: bit for bit


def test_channels_last_stem_must_be_a_bool() -> None:
    with pytest.raises(TypeError, match="channels_last_stem must be a bool, got 'yes'"):
        MobileMamba("t2", channels_last_stem="yes")
