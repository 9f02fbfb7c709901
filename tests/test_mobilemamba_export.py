"""TorchScript and ONNX export of the fused MobileMamba-T2."""

from __future__ import annotations

import pytest
import torch

from medmamba.networks import MobileMamba, fuse_norms


@pytest.fixture(scope="module")
def fused_t2() -> torch.nn.Module:
    torch.manual_seed(0)
    model = MobileMamba("t2", num_classes=10).eval()
    # non-trivial BatchNorm statistics, so that fusion is really exercised
    for m in model.modules():
        if isinstance(m, (torch.nn.BatchNorm2d, torch.nn.BatchNorm1d)):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 1.5)
            m.weight.data.uniform_(0.5, 1.5)
    return fuse_norms(model)


def _relerr(a, b) -> float:
    a, b = torch.as_tensor(a), torch.as_tensor(b)
    return ((a - b).abs().max() / b.abs().max()).item()


def test_torchscript_matches_eager(fused_t2, tmp_path) -> None:
    scripted = torch.jit.script(fused_t2)
    path = tmp_path / "t2.ts"
    scripted.save(str(path))
    loaded = torch.jit.load(str(path))
    for batch in (1, 3):
        x = torch.randn(batch, 3, 192, 192)
        with torch.no_grad():
            assert _relerr(loaded(x), fused_t2(x)) <= 1e-4


def test_onnx_matches_eager_with_dynamic_batch(fused_t2, tmp_path) -> None:
    ort = pytest.importorskip("onnxruntime")
    path = tmp_path / "t2.onnx"
    x = torch.randn(1, 3, 192, 192)
    torch.onnx.export(
        fused_t2,
        (x,),
        str(path),
        opset_version=17,
        dynamo=False,
        input_names=["image"],
        output_names=["logits"],
        dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}},
    )
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for batch in (1, 3):
        x = torch.randn(batch, 3, 192, 192)
        with torch.no_grad():
            ref = fused_t2(x)
        out = session.run(None, {"image": x.numpy()})[0]
        assert out.shape == (batch, 10)
        assert _relerr(out, ref) <= 1e-4
