"""Deployment support shared by the bundles: the inference network from a checkpoint, ONNX export.

Both bundles (``bundles/mobilemamba_classification`` and ``bundles/mobilemamba_segmentation``)
train an unfused network and deploy it with its BatchNorms folded into the convolutions
(:class:`medmamba.networks.FuseOnLoad`):

- :func:`load_network`: the inference network, from a checkpoint or an exported TorchScript file;
- :func:`export_onnx`: the fused network to ONNX, and both exported files (ONNX, and TorchScript
  from ``ckpt_export``) checked against the eager fused network, with a ``<name>_export.json`` report;
  on request also an int8 ONNX graph (``<name>_int8.onnx``) calibrated on training slices;
- :class:`CalibrationSlices`: those calibration inputs, training volumes through the bundle's own
  preprocessing cut into slice stacks (read when first iterated, so a config can name them
  whether or not the int8 export runs).

:class:`FuseOnLoad` and :class:`medmamba.inferers.VolumePredictor` are re-exported here (configs
name ``medmamba.apps.deploy.FuseOnLoad``), and the bundle modules re-export these names, so configs
may reference them as ``medmamba.apps.classification.load_network`` or
``medmamba.apps.segmentation.export_onnx``.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from medmamba.bundle.flags import flag
from medmamba.inferers.volume_predictor import VolumePredictor
from medmamba.networks.fuse_on_load import FuseOnLoad, has_batchnorm
from medmamba.training.checkpoint import extract_state_dict, load_weights

__all__ = ["CalibrationSlices", "FuseOnLoad", "VolumePredictor", "export_onnx", "load_network"]

logger = logging.getLogger(__name__)


def load_network(
    network: nn.Module | None,
    model_file: str | os.PathLike[str],
    use_torchscript: bool = False,
    key: str | None = None,
    device: str | torch.device = "cpu",
    channels_last: bool = False,
) -> nn.Module:
    """The inference network: a checkpoint loaded into ``network``, or an exported TorchScript file.

    Args:
        network: the architecture (the bundle's ``network_def``; a :class:`FuseOnLoad` is fused on
            load). Ignored for TorchScript.
        model_file: a checkpoint (``.pt``, as the bundle's ``CheckpointSaver`` writes) or, with
            ``use_torchscript`` or a ``.ts`` suffix, a TorchScript file (``ckpt_export`` output).
        use_torchscript: load ``model_file`` with ``torch.jit.load`` (this and ``channels_last``
            also as the strings ``"true"``/``"false"`` of a command-line override,
            :func:`medmamba.bundle.flag`).
        key: entry of a multi-object checkpoint (``"model"``, ``"ema"``...); default flat or ``"model"``.
        device: where to put the network.
        channels_last: convert the weights (eager or TorchScript) to the channels-last memory format
            (faster convolutions on CPUs with oneDNN; outputs the same up to float rounding).

    Returns:
        The network in eval mode on ``device``.

    Raises:
        FileNotFoundError: ``model_file`` does not exist.
        ValueError: no ``network`` for a checkpoint, or a switch that is not a bool or a spelling of one.
    """
    use_torchscript, channels_last = flag(use_torchscript, "use_torchscript"), flag(channels_last, "channels_last")
    path = os.fspath(model_file)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"model_file={path!r} does not exist; train the bundle (or export it) first.")
    if use_torchscript or path.endswith(".ts"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            net = torch.jit.load(path, map_location=device)
        logger.info("loaded TorchScript model %s", path)
        return (net.to(memory_format=torch.channels_last) if channels_last else net).eval()
    if network is None:
        raise ValueError("network (the architecture) is required to load a checkpoint.")
    if isinstance(network, FuseOnLoad):
        network.load_state_dict(extract_state_dict(path, key=key))
    else:
        load_weights(network, path, key=key)
    logger.info("loaded checkpoint %s into %s", path, type(network).__name__)
    network = network.to(device, memory_format=torch.channels_last) if channels_last else network.to(device)
    return network.eval()


def export_onnx(
    network: nn.Module,
    checkpoint: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    input_shape: Sequence[int] = (2, 3, 128, 128),
    torchscript_file: str | os.PathLike[str] | None = None,
    name: str = "model",
    rtol: float = 1e-4,
    report_file: str | os.PathLike[str] | None = None,
    fuse_strict: bool | None = None,
    onnx_exporter: str = "dynamo",
    compiled: bool = False,
    int8: bool = False,
    calibration: Iterable[torch.Tensor | np.ndarray] | None = None,
) -> dict[str, Any]:
    """Export the fused network to ONNX and check it, and an exported TorchScript file, against it.

    ONNX goes through :func:`medmamba.training.export_fused` (norm fusion; PyTorch's default exporter,
    opset 18, dynamic batch, height and width; reload with onnxruntime) and is renamed to
    ``<out_dir>/<name>.onnx``. That file and ``torchscript_file`` (e.g. ``models/model.ts`` from
    ``ckpt_export``) are compared with the eager fused network on a seeded random batch of
    ``input_shape`` and on one of another batch size, and the ONNX graph also at batches 1, 3 and 8
    at two spatial sizes: the largest absolute difference divided by the largest absolute eager
    output must stay within ``rtol``. With ``onnx_exporter="legacy"`` the graph is valid for the
    spatial size of ``input_shape`` only (the scan's loop is fixed at tracing).

    Args:
        network: the unfused architecture (a :class:`FuseOnLoad` is unwrapped to its template).
        checkpoint: the trained weights (flat or ``CheckpointSaver`` state dict).
        out_dir: output folder.
        input_shape: ``(B, C, H, W)`` of the check batch and of the ONNX graph.
        torchscript_file: an exported TorchScript file to check as well, or ``None`` (a path that
            does not exist is skipped with a warning).
        name: file stem of the ONNX file.
        rtol: largest allowed relative error (max |exported - eager| / max |eager|).
        report_file: where to write the result as JSON (default ``<out_dir>/<name>_export.json``).
        fuse_strict: ``strict`` of ``fuse_norms``; ``None``: the ``strict`` of a :class:`FuseOnLoad`
            ``network``, else ``True``.
        onnx_exporter: ``"dynamo"`` (the default: PyTorch's default exporter, dynamic batch, height
            and width in multiples of the network's pad multiple; ``input_shape`` needs batch >= 2;
            the graph is also checked at batches 1, 3 and 8 at ``input_shape``'s size and at a
            second size, in the report as ``onnx@batch=B,size=HxW``; about a minute on 2 cores) or
            ``"legacy"`` (the deprecated TorchScript-based exporter, an explicit fallback: the graph
            fixes the spatial size); see :func:`medmamba.training.export_fused`.
        compiled: also write ``<out_dir>/<name>.pt2``, an ahead-of-time compiled CPU artefact
            (:func:`medmamba.networks.compile_ahead_of_time`: dynamic batch, the spatial size of
            ``input_shape``; batch >= 2; minutes to compile, needs a C++ compiler), checked like the
            other files; load it with :func:`medmamba.networks.load_compiled` (torch only).
        int8: also write ``<out_dir>/<name>_int8.onnx``, the ONNX graph quantised to int8
            (:func:`medmamba.networks.quantize_onnx_int8`: int8 per-channel weights, uint8
            activations, QDQ; the same spatial size and dynamic batch as ``<name>.onnx``), calibrated
            on all but the last of the ``calibration`` batches; its error against the float32 graph
            on the last batch (held out) goes into the report (``"int8"``: ``relative_error``, the
            largest absolute difference over the largest absolute float32 output, and
            ``rms_relative_error``, the norm of the difference over the norm of the output). It is
            reported, not bounded: int8 changes outputs by design; what matters is the validation
            metric, measured by ``benchmarks/bench_int8.py``. Off by default in the bundles
            (``export_int8``): it would be on only if it kept the validation metric within a mean
            Dice drop of 0.005 / a volume AUC drop of 0.01, and it does not pay: on the trained
            bundles (2-core AMD EPYC, AVX-512 VNNI, ONNX Runtime 1.32, 12 validation volumes) the
            segmentation Dice stayed within (0.8747 -> 0.8772) but the classification volume AUC
            fell 0.9722 -> 0.9444 (one positive/negative pair of 36 reordered), and the int8 graph
            was not reliably faster than the float32 one (0.85x to 1.24x at batch 1 and 8 over two
            runs): the selective scan's float32 operators take most of the time, and the integer
            convolutions' gain is eaten by their quantise / dequantise steps.
        calibration: the calibration inputs for ``int8``, float32 batches of ``input_shape``'s
            channels and spatial size (e.g. :class:`CalibrationSlices`: training slices through the
            bundle's preprocessing; never evaluation data); at least two batches.

    Returns:
        ``{"onnx", "torchscript", "compiled", "checkpoint", "input_shape", "max_abs_output",
        "max_abs_error", "relative_error", "rtol", "int8"}`` (``"int8"``: ``None``, or the int8
        file and its error as above).

    Raises:
        medmamba.training.ExportMismatchError: an export differs from the eager fused network.
        ValueError: a bad ``input_shape``; ``int8`` without at least two ``calibration`` batches; a
            ``compiled`` or ``int8`` that is not a bool or a spelling of one (:func:`medmamba.bundle.flag`).
    """
    from medmamba.networks import fuse_norms
    from medmamba.training import ExportMismatchError, export_fused, verify_export

    compiled, int8 = flag(compiled, "compiled"), flag(int8, "int8")  # "false" from a command line is off
    if isinstance(network, FuseOnLoad):
        fuse_strict = network.fuse_strict if fuse_strict is None else fuse_strict
        network = network.template
    strict = True if fuse_strict is None else bool(fuse_strict)
    if torchscript_file is not None and not os.path.isfile(os.fspath(torchscript_file)):
        logger.warning(
            "export_onnx: %s does not exist (run ckpt_export first); only ONNX is checked.", os.fspath(torchscript_file)
        )
        torchscript_file = None
    shape = [int(s) for s in input_shape]
    if len(shape) != 4 or min(shape) < 1:
        raise ValueError(f"input_shape must be (B, C, H, W) with positive sizes, got {input_shape!r}.")
    batches = _calibration_batches(calibration) if int8 else []
    sample = torch.randn(*shape, generator=torch.Generator().manual_seed(0))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    has_bn = has_batchnorm(network)
    fuse: Any = (lambda m: fuse_norms(m, strict=strict)) if has_bn else False
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = export_fused(
            os.fspath(checkpoint), network=network, out_dir=out, sample_input=sample, name=name,
            formats=("onnx", "compiled") if compiled else ("onnx",), fuse=fuse, atol=1e-3, rtol=1e-2,
            onnx_exporter=onnx_exporter,
        )
    onnx_path = out / f"{name}.onnx"
    os.replace(result.onnx_path, onnx_path)
    compiled_path = None
    if result.compiled_path is not None:
        compiled_path = out / f"{name}.pt2"
        os.replace(result.compiled_path, compiled_path)
    eager = load_weights(copy.deepcopy(network), os.fspath(checkpoint))
    eager = fuse_norms(eager, inplace=True, strict=strict) if has_bn else eager.eval()
    with torch.no_grad():
        scale = max(float(eager(sample).abs().max()), 1e-12)
    errors = verify_export(
        eager, sample, torchscript_path=torchscript_file, onnx_path=onnx_path, atol=rtol * scale, rtol=0.0,
        compiled_path=compiled_path,
    )
    errors["fusion"] = result.max_abs_error.get("fusion", float("nan"))
    errors.update({k: v for k, v in result.max_abs_error.items() if k.startswith("onnx@batch=")})
    relative = {k: v / scale for k, v in errors.items()}
    bad = {k: v for k, v in relative.items() if k != "fusion" and v > rtol}
    if bad:
        raise ExportMismatchError(f"exported outputs differ from the eager fused network beyond rtol={rtol}: {bad}.")
    doc = {
        "onnx": str(onnx_path),
        "torchscript": None if torchscript_file is None else os.fspath(torchscript_file),
        "compiled": None if compiled_path is None else str(compiled_path),
        "checkpoint": os.fspath(checkpoint),
        "input_shape": shape,
        "max_abs_output": scale,
        "max_abs_error": errors,
        "relative_error": relative,
        "rtol": rtol,
        "int8": _export_int8(onnx_path, out / f"{name}_int8.onnx", batches) if int8 else None,
    }
    report = Path(report_file) if report_file is not None else out / f"{name}_export.json"
    report.parent.mkdir(parents=True, exist_ok=True)
    report.write_text(json.dumps(doc, indent=1) + "\n")
    logger.info("export: %s; relative errors %s", onnx_path, relative)
    return doc


def _calibration_batches(calibration: Iterable[torch.Tensor | np.ndarray] | None) -> list[torch.Tensor]:
    """The calibration batches of :func:`export_onnx` as float32 tensors (at least two)."""
    if calibration is None or isinstance(calibration, (torch.Tensor, np.ndarray)):
        raise ValueError(f"int8=True needs calibration, a list of at least two batches (B, C, H, W) (see "
                         f"CalibrationSlices), got {type(calibration).__name__}.")
    batches = [torch.as_tensor(b, dtype=torch.float32) for b in calibration]
    if len(batches) < 2:
        raise ValueError(f"calibration must hold at least two batches (the last one checks the int8 graph), got "
                         f"{len(batches)}.")
    return batches


def _export_int8(onnx_path: Path, int8_path: Path, batches: list[torch.Tensor]) -> dict[str, Any]:
    """Quantise ``onnx_path`` on ``batches[:-1]``; its error against the float32 graph on ``batches[-1]``."""
    from medmamba.networks import OnnxRuntimeNetwork, quantize_onnx_int8

    quantize_onnx_int8(onnx_path, int8_path, batches[:-1])
    check = batches[-1]
    ref, got = OnnxRuntimeNetwork(onnx_path)(check), OnnxRuntimeNetwork(int8_path)(check)
    ref, got = (ref[0], got[0]) if isinstance(ref, tuple) else (ref, got)
    diff = (got - ref).double()
    doc = {
        "onnx": str(int8_path),
        "calibration_slices": sum(int(b.shape[0]) for b in batches[:-1]),
        "check_slices": int(check.shape[0]),
        "relative_error": float(diff.abs().max() / ref.abs().max().clamp_min(1e-12)),
        "rms_relative_error": float(diff.norm() / ref.double().norm().clamp_min(1e-12)),
    }
    logger.info("export: %s; int8 relative error %.3g (rms %.3g) on %d held-out slices", int8_path,
                doc["relative_error"], doc["rms_relative_error"], doc["check_slices"])
    return doc


class CalibrationSlices:
    """Calibration inputs for int8 quantisation: slice stacks of training volumes, as the network sees them.

    ``num_volumes`` volumes spread over ``split`` of ``datalist`` go through ``preprocessing`` (the
    bundle's inference preprocessing: loading, orientation, spacing, crop, padding, intensity
    normalisation); ``slices_per_volume`` slices evenly spaced along ``spatial_dim`` of each are
    stacked with ``context`` neighbours on each side, as :class:`medmamba.inferers.SliceStackInferer`
    does, and centre-cropped or edge-padded to ``spatial_size`` (the size a fixed-size ONNX graph
    takes) or, without it, kept at their volume's size (for a graph with a dynamic height and width).

    Nothing is read until the object is first iterated (then the batches are kept): a bundle config
    builds it for :func:`export_onnx`, which reads it only with ``int8=True``::

        "export_calibration": "$medmamba.apps.deploy.CalibrationSlices(@datalist, @preprocessing,
                               @context, @export_input_shape[2:], base_dir=@dataset_dir)"

    Args:
        datalist: a MONAI (Decathlon) datalist JSON.
        preprocessing: the transform of an item ``{image_key: path}`` to a channel-first volume.
        context: neighbouring slices on each side (the bundle's ``context``).
        spatial_size: ``(H, W)`` of the slices; ``None``: each volume's own size (a batch then
            holds the slices of one volume only).
        base_dir: the folder the datalist's paths are relative to (default the datalist's folder).
        split: the datalist's section; the training split (never the one evaluated on).
        num_volumes: volumes to read (fewer if the split is smaller).
        slices_per_volume: slices per volume.
        batch_size: slices per batch.
        spatial_dim: the slicing axis (the bundles': 2).
        image_key: the image entry of the datalist's items.

    Iterating yields float32 batches ``(<= batch_size, C * (2 * context + 1), H, W)``, in volume order.

    Raises:
        ValueError: a non-positive count or a ``spatial_size`` that is not two positive sizes; when
            first iterated, an empty ``split``.
    """

    def __init__(
        self,
        datalist: str | os.PathLike[str],
        preprocessing: Callable[[dict[str, Any]], dict[str, Any]],
        context: int,
        spatial_size: Sequence[int] | None,
        base_dir: str | os.PathLike[str] | None = None,
        split: str = "training",
        num_volumes: int = 4,
        slices_per_volume: int = 12,
        batch_size: int = 8,
        spatial_dim: int = 2,
        image_key: str = "image",
    ) -> None:
        counts = (("num_volumes", num_volumes), ("slices_per_volume", slices_per_volume), ("batch_size", batch_size))
        for arg, value in counts:
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{arg} must be a positive int, got {value!r}.")
        size = None if spatial_size is None else [int(s) for s in spatial_size]
        if size is not None and (len(size) != 2 or min(size) < 1):
            raise ValueError(f"spatial_size must be None or two positive sizes (H, W), got {spatial_size!r}.")
        self.datalist = os.fspath(datalist)
        self.preprocessing = preprocessing
        self.context = int(context)
        self.spatial_size = size
        self.base_dir = os.fspath(base_dir) if base_dir else None
        self.split = split
        self.num_volumes, self.slices_per_volume, self.batch_size = num_volumes, slices_per_volume, batch_size
        self.spatial_dim = int(spatial_dim)
        self.image_key = image_key
        self._batches: list[torch.Tensor] | None = None

    def __iter__(self) -> Iterator[torch.Tensor]:
        if self._batches is None:
            self._batches = self._read()
        return iter(self._batches)

    def _read(self) -> list[torch.Tensor]:
        from monai.data import load_decathlon_datalist
        from monai.transforms import ResizeWithPadOrCrop

        from medmamba.transforms.slice_stack import stack_slices

        items = load_decathlon_datalist(self.datalist, True, self.split, base_dir=self.base_dir)
        if not items:
            raise ValueError(f"the {self.split!r} split of datalist={self.datalist!r} is empty; calibration needs "
                             "training volumes.")
        picks = np.unique(np.linspace(0, len(items) - 1, min(self.num_volumes, len(items))).round().astype(int))
        size = self.spatial_size
        resize = None if size is None else ResizeWithPadOrCrop(size, mode="edge")
        stacks = []
        for i in picks:
            volume = _plain(self.preprocessing({self.image_key: items[int(i)][self.image_key]})[self.image_key])
            count = int(volume.shape[1 + self.spatial_dim])
            centres = np.unique(np.linspace(0, count - 1, self.slices_per_volume + 2)[1:-1].round().astype(int))
            # (N, C', P0, P1): the stacks of the chosen slices
            stack = stack_slices(volume[None], torch.as_tensor(centres), self.spatial_dim, self.context)[0]
            if resize is not None:
                n, c = stack.shape[:2]
                stack = _plain(resize(stack.reshape(n * c, *stack.shape[2:]))).reshape(n, c, *size)
            stacks.append(stack)
        if size is None:
            return [b.contiguous() for stack in stacks for b in stack.split(self.batch_size)]
        return [b.contiguous() for b in torch.cat(stacks).split(self.batch_size)]


def _plain(value: Any) -> torch.Tensor:
    """A float32 ``torch.Tensor`` without MONAI's meta data."""
    value = value.as_tensor() if hasattr(value, "as_tensor") else value
    return torch.as_tensor(value, dtype=torch.float32)
