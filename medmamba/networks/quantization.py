"""int8 post-training quantisation of an exported (fused) network for the CPU, with ONNX Runtime.

:func:`quantize_onnx_int8` turns a float32 ONNX graph (``medmamba.training.export_fused`` or
:func:`medmamba.networks.export_onnx_dynamic`) into a static int8 graph in ONNX Runtime's QDQ form:
``QuantizeLinear`` / ``DequantizeLinear`` pairs around the quantised operators, activation ranges
calibrated on real inputs. ONNX Runtime's CPU execution provider fuses each
``DequantizeLinear -> Conv -> QuantizeLinear`` into an integer convolution when the session opens
(:class:`medmamba.networks.OnnxRuntimeNetwork` runs the file).

What is quantised, and why:

- **operators**: ``Conv`` and ``Gemm`` (the 1x1, depthwise and patch-merging convolutions and the
  linear heads: every weight of a fused MobileMamba). The selective scan stays float32: its
  exponentials, cumulative sums, masks and gating products take no weights, and 8 bits on a
  recurrence's decay would compound along the sequence. ``MatMul`` is not quantised by default:
  the only ``MatMul`` nodes with a constant operand in the exported networks are the chunked
  scan's (its constant segment matrices, not weights), and quantised they ran slower
  (``QLinearMatMul`` 23.6 ms against 16.3 ms in float32 for a batch of 8 slices of the
  segmentation network, 2 threads, AVX-512 VNNI) as well as less exactly;
- **weights**: int8, symmetric, one scale per output channel (``per_channel=True``; the fused
  convolutions' per-channel ranges differ widely once the BatchNorm scales are folded in, and one
  scale per tensor would round the small channels' weights to a few levels);
- **activations**: uint8, asymmetric, one scale per tensor. This is the format ONNX Runtime's x86
  kernels run fastest (its integer GEMM and convolution kernels take uint8 activations and int8
  weights: ``vpdpbusd`` on CPUs with AVX-512 VNNI or AVX-VNNI, ``vpmaddubsw`` on AVX2) and the
  format ONNX Runtime's ``quantize_static`` recommends for x86 CPUs with and without VNNI; on x86
  its session even rewrites int8 activation pairs to uint8 before fusing them (its QDQ fusions
  allow int8 activations on ARM only). On an x86 CPU without VNNI, ``vpmaddubsw`` can saturate its
  16-bit sums: pass ``reduce_range=True`` (7-bit weights) if the int8 graph's accuracy is poor there.

The quantised graph is checked against nothing here: measure it on the data (e.g.
``benchmarks/bench_int8.py``, or the error report of :func:`medmamba.apps.deploy.export_onnx`).
On the bundles' networks it is not reliably faster than the float32 graph in ONNX Runtime
(0.85x to 1.24x at batch 1 and 8 over two runs, 2-core AMD EPYC with AVX-512 VNNI): the
convolutions are about a fifth of the float32 graph's time (the chunked selective scan's
``Where``, ``MatMul``, ``Sub``, ``Einsum`` and friends take most of it), and the integer
convolutions' gain (about 20 ms -> 17 ms for 8 slices of the segmentation network) is spent again
on their ``QuantizeLinear`` / ``DequantizeLinear`` steps.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = ["CALIBRATION_METHODS", "QUANTIZED_OP_TYPES", "quantize_onnx_int8"]

#: the operators quantised by default (see the module docstring; ``MatMul`` may be added, then only
#: where its second input is a constant)
QUANTIZED_OP_TYPES = ("Conv", "Gemm")

#: calibration methods: the names accepted by :func:`quantize_onnx_int8` and ONNX Runtime's
#: ``CalibrationMethod`` member of each
CALIBRATION_METHODS = {"minmax": "MinMax", "percentile": "Percentile", "entropy": "Entropy"}

#: ``quantize_static``'s options set here: symmetric int8 weights (the x86 kernels' zero weight
#: offset), asymmetric uint8 activations, a ``MatMul`` only with a constant weight
_EXTRA_OPTIONS = {"MatMulConstBOnly": True, "WeightSymmetric": True, "ActivationSymmetric": False}


def _graph_input(path: str) -> tuple[str, list[int | None]]:
    """Name and shape (``None`` for a dynamic dimension) of the graph's one non-initialiser input."""
    import onnx

    model = onnx.load(path, load_external_data=False)
    initialisers = {t.name for t in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in initialisers]
    if len(inputs) != 1:
        raise ValueError(f"onnx_path={path!r} must have exactly one input, got {[i.name for i in inputs]}.")
    dims = [d.dim_value if d.HasField("dim_value") else None for d in inputs[0].type.tensor_type.shape.dim]
    return inputs[0].name, dims


def _as_batch(value: Any, index: int, shape: Sequence[int | None]) -> np.ndarray:
    """One calibration batch as a C-contiguous float32 array, checked against the graph's input."""
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().numpy()
    if not isinstance(value, np.ndarray):
        raise TypeError(f"calibration[{index}] must be a numpy array or a torch tensor, got {type(value).__name__}.")
    if value.ndim != len(shape):
        raise ValueError(f"calibration[{index}] must be a batch (B, C, H, W) of {len(shape)} dimensions, got shape "
                         f"{value.shape}.")
    fixed = [(axis, size) for axis, size in enumerate(shape) if size is not None and size > 0]
    if any(value.shape[axis] != size for axis, size in fixed):
        wanted = ", ".join("*" if s is None or s <= 0 else str(s) for s in shape)
        raise ValueError(f"calibration[{index}] has shape {value.shape}; the graph takes ({wanted}) (* dynamic).")
    return np.ascontiguousarray(value, dtype=np.float32)


def _calibration_reader(batches: Iterable[Any], input_name: str, shape: Sequence[int | None]) -> Any:
    """ONNX Runtime's ``CalibrationDataReader`` over an iterable of batches; ``.count`` batches read."""
    from onnxruntime.quantization import CalibrationDataReader

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._iter: Iterator[Any] = iter(batches)
            self.count = 0

        def get_next(self) -> dict[str, np.ndarray] | None:
            value = next(self._iter, None)
            if value is None:
                return None
            batch = _as_batch(value, self.count, shape)
            self.count += 1
            return {input_name: batch}

    return Reader()


def quantize_onnx_int8(
    onnx_path: str | os.PathLike[str],
    out_path: str | os.PathLike[str],
    calibration: Iterable[np.ndarray | torch.Tensor],
    per_channel: bool = True,
    reduce_range: bool = False,
    op_types: Sequence[str] = QUANTIZED_OP_TYPES,
    calibrate_method: str = "minmax",
    nodes_to_exclude: Sequence[str] = (),
    preprocess: bool = True,
    extra_options: Mapping[str, Any] | None = None,
) -> str:
    """Static int8 post-training quantisation (QDQ) of an ONNX graph, calibrated on real inputs.

    ONNX Runtime's ``quantize_static``: the graph is first prepared with ``quant_pre_process``
    (ONNX shape inference and ONNX Runtime's basic graph optimisations: the quantiser needs to
    know every tensor's type; graphs under 2 GB, weights inlined), then run on the
    ``calibration`` batches to record each quantised tensor's range, then written with int8
    weights and uint8 activations (see the module docstring for the choice of formats).

    Args:
        onnx_path: the float32 graph (one input ``(B, C, H, W)``).
        out_path: the int8 ``.onnx`` file to write (its folder is created).
        calibration: the calibration inputs, an iterable of float32 batches ``(B, C, H, W)``
            (numpy arrays or CPU tensors) of sizes the graph accepts, preprocessed exactly as the
            network's inputs are in deployment. Use training data, never the data the quantised
            graph is evaluated on. A few dozen real slices are enough for min/max ranges.
        per_channel: one weight scale per output channel (``True``) or per tensor.
        reduce_range: 7-bit weights (for x86 CPUs without VNNI whose ``vpmaddubsw`` may saturate).
        op_types: the operator types to quantise (any of ONNX Runtime's QDQ operators; a ``MatMul``
            only where its second input is a constant).
        calibrate_method: ``"minmax"`` (each tensor's range over all batches; cheap: only the
            ranges are kept), ``"percentile"`` or ``"entropy"`` (histograms of every tensor: much
            more memory and time).
        nodes_to_exclude: names of nodes of the (pre-processed) graph to keep in float32.
        preprocess: run ``quant_pre_process`` first (recommended; ``False`` for a graph that
            already went through it).
        extra_options: more of ``quantize_static``'s ``extra_options`` (they override the defaults
            ``{"MatMulConstBOnly": True, "WeightSymmetric": True, "ActivationSymmetric": False}``).

    Returns:
        ``out_path`` as a string.

    Raises:
        FileNotFoundError: ``onnx_path`` is not a file.
        TypeError: a calibration batch is not an array or tensor, or ``op_types`` / ``nodes_to_exclude``
            is a string instead of a sequence of strings.
        ValueError: an unknown ``calibrate_method``, empty ``op_types``, no calibration batch, or a
            batch of a shape the graph does not take.
    """
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    source = os.fspath(onnx_path)
    if not os.path.isfile(source):
        raise FileNotFoundError(f"onnx_path={source!r} is not a file; expected a float32 .onnx graph.")
    if calibrate_method not in CALIBRATION_METHODS:
        raise ValueError(f"calibrate_method must be one of {sorted(CALIBRATION_METHODS)}, got {calibrate_method!r}.")
    for name, value in (("op_types", op_types), ("nodes_to_exclude", nodes_to_exclude)):
        if isinstance(value, str) or not all(isinstance(v, str) for v in value):
            raise TypeError(f"{name} must be a sequence of strings (e.g. ['Conv']), got {value!r}.")
    if not op_types:
        raise ValueError(
            f"op_types must name at least one operator type (e.g. {list(QUANTIZED_OP_TYPES)}), got {op_types!r}."
        )
    if isinstance(calibration, (np.ndarray, torch.Tensor)):
        raise TypeError("calibration must be an iterable of batches (B, C, H, W), got a single "
                        f"{type(calibration).__name__}; wrap it in a list.")
    input_name, shape = _graph_input(source)
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="quantize_") as tmp:
        model = source
        if preprocess:
            # the weights in the file itself (PyTorch's exporter may write them beside it, which the
            # pre-processing's optimisation pass loses track of), then ONNX shape inference and ONNX
            # Runtime's basic optimisations; symbolic shape inference is skipped: on a graph with a
            # dynamic height and width it either gives up or (merging symbols) equates the height
            # with the width, and the int8 graph then fails on non-square inputs
            import onnx

            inline = os.path.join(tmp, "inline.onnx")
            onnx.save(onnx.load(source), inline)
            model = os.path.join(tmp, "preprocessed.onnx")
            quant_pre_process(inline, model, skip_symbolic_shape=True)
        reader = _calibration_reader(calibration, input_name, shape)
        try:
            quantize_static(
                model,
                os.fspath(out),
                calibration_data_reader=reader,
                quant_format=QuantFormat.QDQ,
                op_types_to_quantize=list(op_types),
                per_channel=bool(per_channel),
                reduce_range=bool(reduce_range),
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                nodes_to_exclude=list(nodes_to_exclude),
                calibrate_method=getattr(CalibrationMethod, CALIBRATION_METHODS[calibrate_method]),
                extra_options={**_EXTRA_OPTIONS, **dict(extra_options or {})},
            )
        except ValueError as exc:
            if reader.count == 0:
                raise ValueError("calibration must yield at least one batch (B, C, H, W); it was empty.") from exc
            raise
    if reader.count == 0:
        raise ValueError("calibration must yield at least one batch (B, C, H, W); it was empty.")
    return os.fspath(out)
