"""int8 post-training quantisation (ONNX Runtime, QDQ) and the ONNX Runtime network wrapper.

A tiny MobileMamba classifier (BatchNorm scales perturbed so that every branch reaches the output)
is fused and exported to ONNX at 128 x 128 (dynamic batch), then quantised on random calibration
batches.
"""

from __future__ import annotations

import copy
import json
import pickle
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from medmamba.networks import MobileMamba, OnnxRuntimeNetwork, fuse_norms, quantize_onnx_int8

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

SIZE = 128
#: loose bounds of the int8 graph against the float32 one on random inputs (both in ONNX Runtime):
#: the norm of the difference over the norm of the output, and the share of equal predicted classes
pytestmark = pytest.mark.usefixtures("one_torch_thread")

INT8_RMS_RELATIVE_ERROR = 0.1
INT8_ARGMAX_AGREEMENT = 0.75


def _batch(n: int, seed: int) -> torch.Tensor:
    return torch.randn(n, 1, SIZE, SIZE, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def unfused() -> torch.nn.Module:
    torch.manual_seed(0)
    model = MobileMamba("t2", in_channels=1, num_classes=3, embed_dim=(32, 48, 64), depth=(1, 1, 1)).eval()
    with torch.no_grad():  # BatchNorm scales off their initial values (some start at 0) so every branch counts
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.normal_(1.0, 0.2)
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
    return model


@pytest.fixture(scope="module")
def fused(unfused: torch.nn.Module) -> torch.nn.Module:
    return fuse_norms(copy.deepcopy(unfused))


@pytest.fixture(scope="module")
def fp32_onnx(fused: torch.nn.Module, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("onnx") / "fp32.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            fused, (_batch(2, 0),), str(path), opset_version=17, dynamo=False, input_names=["x"],
            output_names=["y"], dynamic_axes={"x": {0: "batch"}, "y": {0: "batch"}},
        )
    return path


@pytest.fixture(scope="module")
def int8_onnx(fp32_onnx: Path) -> Path:
    calibration = [_batch(4, seed) for seed in range(1, 5)]
    out = quantize_onnx_int8(fp32_onnx, fp32_onnx.parent / "sub" / "int8.onnx", calibration)
    return Path(out)


def test_int8_graph_has_qdq_nodes_and_per_channel_int8_weights(fp32_onnx: Path, int8_onnx: Path) -> None:
    model = onnx.load(str(int8_onnx))
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("QuantizeLinear") > 0 and ops.count("DequantizeLinear") > 0
    inits = {t.name: t for t in model.graph.initializer}
    float_convs = sum(n.op_type == "Conv" for n in onnx.load(str(fp32_onnx)).graph.node)
    producers = {o: n for n in model.graph.node for o in n.output}
    weight_types, per_channel, activation_zero_points = [], 0, set()
    for node in model.graph.node:
        if node.op_type == "Conv":
            dq = producers[node.input[1]]  # the weight comes out of a DequantizeLinear of an int8 initialiser
            assert dq.op_type == "DequantizeLinear"
            weight_types.append(inits[dq.input[0]].data_type)
            per_channel += int(np.prod(inits[dq.input[1]].dims)) > 1  # one scale per output channel
        if node.op_type == "QuantizeLinear":
            activation_zero_points.add(inits[node.input[2]].data_type)
    assert len(weight_types) == float_convs  # every convolution is quantised
    assert set(weight_types) == {onnx.TensorProto.INT8}
    assert per_channel == float_convs
    assert activation_zero_points == {onnx.TensorProto.UINT8}  # uint8 activations (x86's fast format)


@pytest.mark.parametrize("batch", [1, 3])
def test_int8_outputs_agree_with_float32_at_any_batch(fp32_onnx: Path, int8_onnx: Path, batch: int) -> None:
    x = _batch(batch, 10 + batch)
    ref, got = OnnxRuntimeNetwork(fp32_onnx)(x), OnnxRuntimeNetwork(int8_onnx)(x)
    assert got.shape == ref.shape == (batch, 3)
    assert float((got - ref).norm() / ref.norm()) < INT8_RMS_RELATIVE_ERROR


def test_int8_keeps_most_predicted_classes(fp32_onnx: Path, int8_onnx: Path) -> None:
    x = _batch(32, 99)
    ref, got = OnnxRuntimeNetwork(fp32_onnx)(x), OnnxRuntimeNetwork(int8_onnx)(x)
    assert float((got.argmax(1) == ref.argmax(1)).float().mean()) >= INT8_ARGMAX_AGREEMENT
    assert not torch.equal(got, ref)  # really quantised


def test_onnx_runtime_network_equals_the_fused_torch_network(fused: torch.nn.Module, fp32_onnx: Path) -> None:
    net = OnnxRuntimeNetwork(fp32_onnx, num_threads=1)
    assert net.in_channels == 1 and net.num_threads == 1 and list(net.parameters()) == []
    for batch in (1, 3):
        x = _batch(batch, 20 + batch)
        with torch.no_grad():
            ref = fused(x)
        for given in (x, x.to(memory_format=torch.channels_last)):
            got = net(given)
            assert got.shape == ref.shape and got.dtype == torch.float32
            assert float((got - ref).abs().max()) <= 1e-4 * float(ref.abs().max())
    assert net(_batch(1, 0)[:0]).shape == (0, 3)  # an empty batch
    clone = copy.deepcopy(net)  # the session is opened again, not copied
    x = _batch(2, 5)
    assert torch.equal(clone(x), net(x)) and torch.equal(pickle.loads(pickle.dumps(net))(x), net(x))


def test_onnx_runtime_network_argument_errors(fp32_onnx: Path, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="missing.onnx"):
        OnnxRuntimeNetwork(tmp_path / "missing.onnx")
    with pytest.raises(ValueError, match="num_threads must be an int >= 1 or None.*got 0"):
        OnnxRuntimeNetwork(fp32_onnx, num_threads=0)
    with pytest.raises(TypeError, match="num_threads.*str '2'"):
        OnnxRuntimeNetwork(fp32_onnx, num_threads="2")
    with pytest.raises(ValueError, match="optimization_level must be one of.*'fast'"):
        OnnxRuntimeNetwork(fp32_onnx, optimization_level="fast")
    net = OnnxRuntimeNetwork(fp32_onnx)
    with pytest.raises(ValueError, match=r"x must have 4 dimensions.*\(1, 128, 128\)"):
        net(torch.zeros(1, SIZE, SIZE))
    with pytest.raises(TypeError, match="x must be a torch.Tensor, got ndarray"):
        net(np.zeros((1, 1, SIZE, SIZE), np.float32))


def test_quantize_argument_errors(fp32_onnx: Path, tmp_path: Path) -> None:
    out = tmp_path / "int8.onnx"
    good = [_batch(2, 1)]
    with pytest.raises(FileNotFoundError, match="onnx_path=.*missing.onnx"):
        quantize_onnx_int8(tmp_path / "missing.onnx", out, good)
    with pytest.raises(ValueError, match="calibrate_method must be one of .*'kl'"):
        quantize_onnx_int8(fp32_onnx, out, good, calibrate_method="kl")
    with pytest.raises(TypeError, match="op_types must be a sequence of strings.*'Conv'"):
        quantize_onnx_int8(fp32_onnx, out, good, op_types="Conv")
    with pytest.raises(ValueError, match="op_types must name at least one"):
        quantize_onnx_int8(fp32_onnx, out, good, op_types=())
    with pytest.raises(TypeError, match="calibration must be an iterable of batches.*single Tensor"):
        quantize_onnx_int8(fp32_onnx, out, _batch(2, 1))
    with pytest.raises(ValueError, match="calibration must yield at least one batch"):
        quantize_onnx_int8(fp32_onnx, out, [], preprocess=False)
    wrong = r"calibration\[1\] has shape \(2, 1, 64, 64\); the graph takes \(\*, 1, 128, 128\)"
    with pytest.raises(ValueError, match=wrong):
        quantize_onnx_int8(fp32_onnx, out, [_batch(2, 1), torch.zeros(2, 1, 64, 64)], preprocess=False)
    with pytest.raises(TypeError, match=r"calibration\[0\] must be a numpy array or a torch tensor, got str"):
        quantize_onnx_int8(fp32_onnx, out, ["slice.png"], preprocess=False)


def _tiny_datalist(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    items = []
    for i, shape in enumerate([(20, 24, 10), (20, 24, 14)]):
        path = tmp_path / f"image{i}.npy"
        np.save(path, rng.normal(size=shape).astype(np.float32))
        items.append({"image": path.name})
    datalist = tmp_path / "datalist.json"
    datalist.write_text(json.dumps({"training": items, "validation": []}))
    return datalist


def _load(item: dict) -> dict:
    """A stand-in for a bundle's preprocessing: the volume with a channel axis (as a MONAI MetaTensor)."""
    from monai.data import MetaTensor

    return {"image": MetaTensor(torch.from_numpy(np.load(item["image"]))[None])}


def test_calibration_slices_stack_training_slices_at_the_graph_size(tmp_path: Path) -> None:
    from medmamba.apps.deploy import CalibrationSlices

    datalist = _tiny_datalist(tmp_path)
    calls = []

    def load(item: dict) -> dict:
        calls.append(item)
        return _load(item)

    slices = CalibrationSlices(datalist, load, context=1, spatial_size=(16, 32), num_volumes=2, slices_per_volume=5,
                               batch_size=4)
    assert calls == []  # nothing read before the first iteration
    batches = list(slices)
    assert [tuple(b.shape) for b in batches] == [(4, 3, 16, 32), (4, 3, 16, 32), (2, 3, 16, 32)]
    assert all(type(b) is torch.Tensor and b.dtype == torch.float32 for b in batches)  # no MONAI meta data
    assert len(calls) == 2 and all(torch.equal(a, b) for a, b in zip(slices, batches))  # read once, kept
    own = list(CalibrationSlices(datalist, _load, context=1, spatial_size=None, num_volumes=2, slices_per_volume=5,
                                 batch_size=4))
    assert [tuple(b.shape) for b in own] == [(4, 3, 20, 24), (1, 3, 20, 24)] * 2  # per volume, its own size
    with pytest.raises(ValueError, match="'validation' split of datalist=.* is empty"):
        list(CalibrationSlices(datalist, _load, context=1, spatial_size=None, split="validation"))
    with pytest.raises(ValueError, match="spatial_size must be None or two positive sizes.*\\[16\\]"):
        CalibrationSlices(datalist, _load, context=1, spatial_size=[16])
    with pytest.raises(ValueError, match="slices_per_volume must be a positive int, got 0"):
        CalibrationSlices(datalist, _load, context=1, spatial_size=None, slices_per_volume=0)


def test_export_onnx_writes_an_int8_graph_on_request(unfused: torch.nn.Module, tmp_path: Path) -> None:
    from medmamba.apps.deploy import export_onnx

    checkpoint = tmp_path / "model.pt"
    torch.save(unfused.state_dict(), checkpoint)
    shape = (2, 1, SIZE, SIZE)
    with pytest.raises(ValueError, match="int8=True needs calibration.*got NoneType"):
        export_onnx(unfused, checkpoint, tmp_path, input_shape=shape, int8=True)
    with pytest.raises(ValueError, match="at least two batches.*got 1"):
        export_onnx(unfused, checkpoint, tmp_path, input_shape=shape, int8=True, calibration=[_batch(2, 1)])
    calibration = [_batch(4, seed) for seed in range(1, 4)]
    report = export_onnx(unfused, checkpoint, tmp_path, input_shape=shape, int8=True, calibration=calibration)
    int8 = report["int8"]
    assert Path(int8["onnx"]) == tmp_path / "model_int8.onnx" and (tmp_path / "model_int8.onnx").is_file()
    assert int8["calibration_slices"] == 8 and int8["check_slices"] == 4  # the last batch is held out
    assert 0.0 < int8["rms_relative_error"] < INT8_RMS_RELATIVE_ERROR
    assert json.loads((tmp_path / "model_export.json").read_text())["int8"] == int8
