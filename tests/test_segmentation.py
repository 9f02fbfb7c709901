"""Tests of MobileMambaSeg: shapes, deep supervision, reference weights, fusion and export."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from medmamba.networks import (
    MobileMamba,
    MobileMambaSeg,
    convert_official_state_dict,
    emulate_reference_cpu_merge,
    fuse_norms,
)

FIXTURE = Path(__file__).resolve().parents[1].parent / "shared" / "reference" / "mobilemamba_tiny.pt"
TINY = {"embed_dim": (32, 48, 64), "depth": (1, 1, 1)}

pytestmark = pytest.mark.filterwarnings(
    "ignore::DeprecationWarning", "ignore::torch.jit.TracerWarning", "ignore::UserWarning"
)


def _fixture() -> dict:
    if not FIXTURE.exists():
        pytest.skip(f"reference fixture {FIXTURE} not available")
    return torch.load(FIXTURE, weights_only=False)


def _randomise_batchnorm(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial BatchNorm statistics and affine parameters, so that fusion is really tested."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
            with torch.no_grad():
                m.weight.copy_(torch.rand(n, generator=g) + 0.5)
                m.bias.copy_(torch.randn(n, generator=g) * 0.1)
    return model


def _tiny_model(**kwargs: object) -> MobileMambaSeg:
    """The T2 configuration with the fixture's small widths and depths, BatchNorms randomised."""
    torch.manual_seed(0)
    return _randomise_batchnorm(MobileMambaSeg("t2", **TINY, **kwargs))  # type: ignore[arg-type]


def _assert_close_rel(actual: torch.Tensor, expected: torch.Tensor, rel: float, what: str) -> None:
    scale = expected.abs().max().item()
    err = (actual - expected).abs().max().item()
    assert err <= rel * scale, f"{what}: max error {err:.3g} > {rel:g} * max|ref| ({scale:.3g})"


@pytest.mark.parametrize(("shape", "out_channels"), [((1, 1, 97, 131), 2), ((2, 3, 256, 256), 4)])
def test_output_shape_any_input_size(shape: tuple[int, ...], out_channels: int) -> None:
    model = MobileMambaSeg("t2", in_channels=shape[1], out_channels=out_channels).eval()
    with torch.no_grad():
        out = model(torch.randn(*shape))
    assert out.shape == (shape[0], out_channels, *shape[2:])
    assert torch.isfinite(out).all()


def test_crop_keeps_image_content_aligned() -> None:
    """A padded-and-cropped input gives the same logits where the image is the same as a bigger one."""
    model = _tiny_model(in_channels=1, out_channels=2, pad_mode="constant").eval()
    big = torch.randn(1, 1, 128, 128)
    big[:, :, 100:, :] = 0
    big[:, :, :, 70:] = 0
    with torch.no_grad():
        out_small = model(big[:, :, :100, :70])  # zero-padded inside back to 128x128
        out_big = model(big)
    assert out_small.shape == (1, 2, 100, 70)
    # the same padded input inside, so the cropped logits are exactly the big image's top-left corner
    torch.testing.assert_close(out_small, out_big[:, :, :100, :70], atol=1e-5, rtol=1e-5)


def test_deep_supervision_outputs_and_monai_loss() -> None:
    from monai.losses import DeepSupervisionLoss, DiceCELoss

    model = _tiny_model(in_channels=1, out_channels=3, deep_supervision=True).train()
    x = torch.randn(2, 1, 70, 90)
    outs = model(x)
    assert isinstance(outs, list) and len(outs) == 4
    assert all(o.shape == (2, 3, 70, 90) for o in outs)
    target = torch.randint(0, 3, (2, 1, 70, 90))
    loss = DeepSupervisionLoss(DiceCELoss(to_onehot_y=True, softmax=True))(outs, target)
    loss.backward()
    assert model.encoder.stem[0].conv.weight.grad.abs().sum() > 0
    assert all(h.weight.grad.abs().sum() > 0 for h in model.aux_heads)
    model.eval()
    with torch.no_grad():
        out = model(x)
    assert isinstance(out, torch.Tensor) and out.shape == (2, 3, 70, 90)


def test_reference_weights_give_reference_stage_outputs() -> None:
    fx = _fixture()
    cfg = fx["config"]
    model = MobileMambaSeg(
        None,
        in_channels=fx["input"].shape[1],
        out_channels=2,
        embed_dim=tuple(cfg["embed_dim"]),
        depth=tuple(cfg["depth"]),
        global_ratio=tuple(cfg["global_ratio"]),
        local_ratio=tuple(cfg["local_ratio"]),
        kernels=tuple(cfg["kernels"]),
        ssm_ratio=float(cfg["ssm_ratio"]),
        drop_path=float(cfg["drop_path"]),
    ).eval()
    dropped = model.load_encoder_state_dict(convert_official_state_dict(fx["state_dict"]))
    assert dropped and all(k.startswith("head.") for k in dropped)
    # the fixture (batch 2) was written with the reference's batch-coupled CPU merge of the two scans
    emulate_reference_cpu_merge(model.encoder)
    with torch.no_grad():
        levels = model.encode(fx["input"])  # the very path the decoder reads
    assert [lv.shape[-1] for lv in levels] == [48, 24, 12, 6, 3, 2]
    for ours, ref, name in zip(levels[3:], fx["features"][1:], ("stage 1", "stage 2", "stage 3")):
        assert ours.shape == ref.shape
        _assert_close_rel(ours, ref, 1e-4, name)
    # the stride-16 stem output feeds stage 1: the fixture's stem features equal stem(x) too
    with torch.no_grad():
        _assert_close_rel(model.encoder.stem(fx["input"]), fx["features"][0], 1e-4, "stem")


def test_reference_weights_load_into_grey_and_2p5d_stems() -> None:
    """RGB weights adapted to 1 channel: a grey image gives what the RGB encoder gives for (g, g, g)."""
    fx = _fixture()
    sd = fx["state_dict"]  # reference names: converted inside
    cfg = {k: fx["config"][k] for k in ("embed_dim", "depth", "global_ratio", "local_ratio", "kernels")}
    rgb = MobileMambaSeg(None, in_channels=3, ssm_ratio=2.0, drop_path=0.0, **cfg).eval()
    grey = MobileMambaSeg(None, in_channels=1, ssm_ratio=2.0, drop_path=0.0, **cfg).eval()
    rgb.load_encoder_state_dict(sd)
    grey.load_encoder_state_dict(sd)
    g = fx["input"][:, :1]
    with torch.no_grad():
        for a, b in zip(grey.encode(g), rgb.encode(g.repeat(1, 3, 1, 1))):
            _assert_close_rel(a, b, 1e-5, "grey vs RGB")
    with pytest.raises(ValueError, match="missing keys"):
        grey.load_encoder_state_dict({k: v for k, v in convert_official_state_dict(sd).items() if "stages.2" not in k})


def test_from_official_checkpoint(tmp_path: Path) -> None:
    fx = _fixture()
    cfg = {k: tuple(fx["config"][k]) for k in ("embed_dim", "depth", "global_ratio", "local_ratio", "kernels")}
    path = tmp_path / "mobilemamba.pth"
    torch.save({"net": fx["state_dict"], "epoch": 3}, path)  # the released checkpoints' layout
    model = MobileMambaSeg.from_official_checkpoint(str(path), "t2", in_channels=1, out_channels=4, **cfg)
    stem = convert_official_state_dict(fx["state_dict"])["stem.0.conv.weight"]
    torch.testing.assert_close(model.encoder.stem[0].conv.weight, stem.sum(dim=1, keepdim=True))
    assert model.head.out_channels == 4
    torch.save({"epoch": 3}, tmp_path / "empty.pth")
    with pytest.raises(ValueError, match="holds no state dict"):
        MobileMambaSeg.from_official_checkpoint(str(tmp_path / "empty.pth"), "t2", **cfg)


def test_fused_equals_eager_and_has_no_batchnorm() -> None:
    model = _tiny_model(in_channels=2, out_channels=3).eval()
    fused = fuse_norms(model)
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in fused.modules())
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.decoder.modules())  # the original is untouched
    x = torch.randn(2, 2, 75, 64)
    with torch.no_grad():
        _assert_close_rel(fused(x), model(x), 1e-5, "fused")


def test_torchscript_matches_eager() -> None:
    model = fuse_norms(_tiny_model(in_channels=1, out_channels=2, deep_supervision=True))
    scripted = torch.jit.script(model)
    with torch.no_grad():
        for shape in ((1, 1, 64, 64), (2, 1, 97, 131)):  # one script, any size
            x = torch.randn(*shape)
            _assert_close_rel(scripted(x), model(x), 1e-5, f"TorchScript {shape}")


def test_onnx_export_matches_eager_at_any_size(tmp_path: Path) -> None:
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    model = fuse_norms(_tiny_model(in_channels=1, out_channels=2))
    path = tmp_path / "seg.onnx"
    dynamic = {0: "batch", 2: "height", 3: "width"}
    torch.onnx.export(
        model, (torch.randn(1, 1, 97, 131),), str(path), opset_version=17, dynamo=False,
        input_names=["image"], output_names=["logits"], dynamic_axes={"image": dynamic, "logits": dynamic},
    )
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for shape in ((1, 1, 97, 131), (2, 1, 64, 200)):  # the padding is computed from the input shape
        x = torch.randn(*shape)
        (out,) = session.run(None, {"image": x.numpy()})
        with torch.no_grad():
            _assert_close_rel(torch.from_numpy(out), model(x), 1e-4, f"onnxruntime {shape}")


def test_runs_as_2p5d_network_in_slice_stack_inferer() -> None:
    from medmamba.inferers import SliceStackInferer

    model = _tiny_model(in_channels=3, out_channels=2).eval()
    volume = torch.randn(1, 1, 40, 36, 5)
    with torch.no_grad():
        out = SliceStackInferer(spatial_dim=2, context=1, sw_batch_size=4)(volume, model)
    assert out.shape == (1, 2, 40, 36, 5)
    with pytest.raises(ValueError, match="takes 3 input channels"):
        SliceStackInferer(spatial_dim=2, context=2)(volume, model)


def test_invalid_arguments() -> None:
    with pytest.raises(ValueError, match="spatial_dims=3"):
        MobileMambaSeg("t2", spatial_dims=3)
    with pytest.raises(ValueError, match="out_channels"):
        MobileMambaSeg("t2", out_channels=0)
    with pytest.raises(ValueError, match="decoder_channels"):
        MobileMambaSeg("t2", decoder_channels=(32, 64))
    with pytest.raises(ValueError, match="pad_mode"):
        MobileMambaSeg("t2", pad_mode="wrap")
    with pytest.raises(ValueError, match="num_classes"):
        MobileMambaSeg("t2", num_classes=3)
    model = _tiny_model(in_channels=1)
    with pytest.raises(ValueError, match="4D input"):
        model(torch.randn(1, 1, 32, 32, 4))
    with pytest.raises(ValueError, match="in_channels=1"):
        model(torch.randn(1, 3, 32, 32))


def test_encoder_is_a_mobilemamba_with_the_same_names() -> None:
    model = MobileMambaSeg("t2", in_channels=3)
    classifier = MobileMamba("t2", in_channels=3, num_classes=1000)
    heads = {k for k in classifier.state_dict() if k.startswith("head")}
    assert set(model.encoder.state_dict()) == set(classifier.state_dict()) - heads


def test_output_stride_one_predicts_at_full_resolution() -> None:
    """Default: a seventh decoder level on the image itself, logits computed at the input's size (no
    upsampling); ``output_stride=2`` is the six-level decoder with logits upsampled from stride 2."""
    seen: dict[int, tuple[int, ...]] = {}
    for stride in (1, 2):
        model = _tiny_model(in_channels=3, out_channels=4, output_stride=stride).eval()
        model.head.register_forward_hook(lambda m, i, o, s=stride: seen.__setitem__(s, tuple(o.shape)))
        with torch.no_grad():
            out = model(torch.randn(2, 3, 64, 128))
        assert out.shape == (2, 4, 64, 128)
        assert len(model.decoder.levels) == {1: 7, 2: 6}[stride]
    assert seen == {1: (2, 4, 64, 128), 2: (2, 4, 32, 64)}
    full = _tiny_model(in_channels=3, out_channels=4)
    assert full.output_stride == 1 and full.decoder_channels == (16, 16, 32, 64, 96, 128, 128)
    assert full.decoder.levels[-1].lateral.conv.kernel_size == (3, 3)  # the raw image, a 3x3 lateral
    assert full.decoder.levels[-1].lateral.conv.in_channels == 3
    assert _tiny_model(output_stride=2).decoder_channels == (16, 32, 64, 96, 128, 128)


def test_output_stride_invalid() -> None:
    with pytest.raises(ValueError, match="output_stride=4"):
        MobileMambaSeg("t2", output_stride=4)
    with pytest.raises(ValueError, match=r"decoder_channels=\(16, 32, 64, 96, 128, 128\).*7 positive ints"):
        MobileMambaSeg("t2", decoder_channels=(16, 32, 64, 96, 128, 128))
