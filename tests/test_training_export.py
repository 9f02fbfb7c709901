"""Fusion at export: TorchScript + ONNX written, reloaded and checked; broken exports fail."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from medmamba.training import (
    DYNAMIC_CHECK_BATCHES,
    ExportMismatchError,
    FusedExportHandler,
    ModelEMA,
    export_fused,
    verify_export,
)

pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")


def _net() -> nn.Module:
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(2, 4, 3, padding=1, bias=False),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4, 3),
    )
    with torch.no_grad():  # non-trivial BN statistics
        net[1].running_mean.uniform_(-1, 1)
        net[1].running_var.uniform_(0.5, 2)
        net[1].weight.uniform_(0.5, 1.5)
        net[1].bias.uniform_(-0.5, 0.5)
    return net.eval()


def _fold(model: nn.Module) -> nn.Module:
    """Local conv-BN folding for the test network (stands in for medmamba.networks.fuse_norms)."""
    conv, bn = model[0], model[1]
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    fused = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, padding=conv.padding, bias=True)
    with torch.no_grad():
        fused.weight.copy_(conv.weight * scale.view(-1, 1, 1, 1))
        fused.bias.copy_(bn.bias - bn.running_mean * scale)
    return nn.Sequential(fused, *list(model)[2:]).eval()


SAMPLE = torch.randn(2, 2, 8, 8, generator=torch.Generator().manual_seed(1))


def test_export_fused_writes_and_verifies_torchscript_and_onnx_with_the_legacy_exporter(tmp_path):
    model = _net()
    before = copy.deepcopy(model.state_dict())
    result = export_fused(model, out_dir=tmp_path, sample_input=SAMPLE, fuse=_fold, onnx_exporter="legacy")
    assert result.torchscript_method == "script"
    assert (tmp_path / "model_fused.ts").is_file() and (tmp_path / "model_fused.onnx").is_file()
    assert set(result.max_abs_error) >= {"fusion", "torchscript", "onnx", "onnx@batch=3", "torchscript@batch=3"}
    assert max(result.max_abs_error.values()) < 1e-4
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())  # input model untouched
    loaded = onnx.load(result.onnx_path)
    assert loaded.opset_import[0].version == 17
    assert not any(n.op_type == "BatchNormalization" for n in loaded.graph.node)


def test_export_check_fails_on_broken_onnx_and_torchscript(tmp_path):
    model = _net()
    result = export_fused(model, out_dir=tmp_path, sample_input=SAMPLE, fuse=_fold, onnx_exporter="legacy")
    fused = _fold(model)
    # perturb one ONNX initializer
    proto = onnx.load(result.onnx_path)
    init = proto.graph.initializer[0]
    arr = onnx.numpy_helper.to_array(init).copy() + 0.5
    init.CopyFrom(onnx.numpy_helper.from_array(arr, init.name))
    broken_onnx = tmp_path / "broken.onnx"
    onnx.save(proto, broken_onnx)
    with pytest.raises(ExportMismatchError, match="onnx"):
        verify_export(fused, SAMPLE, onnx_path=broken_onnx)
    # perturb the TorchScript weights
    scripted = torch.jit.load(result.torchscript_path)
    with torch.no_grad():
        next(iter(scripted.parameters())).add_(0.5)
    broken_ts = tmp_path / "broken.ts"
    scripted.save(str(broken_ts))
    with pytest.raises(ExportMismatchError, match="torchscript"):
        verify_export(fused, SAMPLE, torchscript_path=broken_ts)
    # a wrong fusion is caught before anything is exported
    def bad_fuse(m: nn.Module) -> nn.Module:
        f = _fold(m)
        with torch.no_grad():
            f[0].bias.add_(1.0)
        return f

    with pytest.raises(ExportMismatchError, match="fusion"):
        export_fused(model, out_dir=tmp_path / "bad", sample_input=SAMPLE, fuse=bad_fuse)


def test_export_from_ema_checkpoint_and_handler(tmp_path):
    model = _net()
    ema = ModelEMA(model, decay=0.5, warmup=False)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.3)
    ema.update(model)
    ckpt = tmp_path / "checkpoint_final.pt"
    torch.save({"model": model.state_dict(), "ema": ema.state_dict()}, ckpt)
    handler = FusedExportHandler(
        network=_net(), input_shape=(2, 2, 8, 8), checkpoint=ckpt, checkpoint_key="ema",
        export_kwargs={"fuse": _fold, "onnx_exporter": "legacy"},
    )
    result = handler()
    assert result.onnx_path == str(tmp_path / "checkpoint_final_fused.onnx")
    scripted = torch.jit.load(result.torchscript_path)
    with torch.no_grad():
        assert torch.allclose(scripted(SAMPLE), ema(SAMPLE), atol=1e-5)
        assert not torch.allclose(scripted(SAMPLE), model(SAMPLE), atol=1e-3)
    with pytest.raises(ValueError, match="network"):
        export_fused(str(ckpt), sample_input=SAMPLE)


def test_export_uses_medmamba_fuse_norms_by_default(tmp_path):
    blocks = pytest.importorskip("medmamba.networks.blocks")
    torch.manual_seed(0)
    net = nn.Sequential(blocks.ConvBN(2, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3)).eval()
    result = export_fused(net, out_dir=tmp_path, sample_input=SAMPLE, formats=("onnx",), onnx_exporter="legacy")
    proto = onnx.load(result.onnx_path)
    assert not any(n.op_type == "BatchNormalization" for n in proto.graph.node)
    assert result.torchscript_path is None


def test_export_fused_refuses_an_unknown_onnx_exporter(tmp_path):
    with pytest.raises(ValueError, match="onnx_exporter must be 'legacy' or 'dynamo', got 'fx'"):
        export_fused(nn.Conv2d(1, 1, 1), out_dir=tmp_path, sample_input=torch.randn(2, 1, 8, 8), onnx_exporter="fx")


@pytest.mark.slow
def test_export_fused_with_the_default_onnx_exporter_checks_batches_and_another_size(tmp_path):
    from medmamba.networks import MobileMamba

    net = MobileMamba("t2", in_channels=1, num_classes=3).eval()
    result = export_fused(net, out_dir=tmp_path, sample_input=torch.randn(2, 1, 128, 160), formats=("onnx",))
    keys = set(result.max_abs_error)
    checks = {f"onnx@batch={b},size={h}x160" for b in (1, 3, 8) for h in (128, 160)}
    assert {"fusion", "onnx", "onnx@batch=3"} | checks <= keys, keys
    assert max(result.max_abs_error.values()) < 1e-3


def test_export_fused_uses_the_default_onnx_exporter_with_dynamic_batch_and_size(tmp_path):
    blocks = pytest.importorskip("medmamba.networks.blocks")
    torch.manual_seed(0)
    net = nn.Sequential(blocks.ConvBN(2, 4, 3), nn.ReLU(), blocks.ConvBN(4, 3, 1)).eval()
    result = export_fused(net, out_dir=tmp_path, sample_input=torch.randn(2, 2, 128, 128), formats=("onnx",))
    proto = onnx.load(result.onnx_path)
    assert proto.opset_import[0].version >= 18
    assert not any(n.op_type == "BatchNormalization" for n in proto.graph.node)
    expected = {f"onnx@batch={b},size={h}x128" for b in DYNAMIC_CHECK_BATCHES for h in (128, 160)}
    assert expected <= set(result.max_abs_error), set(result.max_abs_error)
    assert max(result.max_abs_error.values()) < 1e-4
    with pytest.raises(ValueError, match="example height must be a multiple of 32 between 128"):
        export_fused(net, out_dir=tmp_path / "small", sample_input=torch.randn(2, 2, 8, 8), formats=("onnx",))
