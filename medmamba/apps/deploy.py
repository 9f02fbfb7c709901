"""Deployment support shared by the bundles: the inference network from a checkpoint, ONNX export.

Both bundles (``bundles/mobilemamba_classification`` and ``bundles/mobilemamba_segmentation``)
train an unfused network and deploy it with its BatchNorms folded into the convolutions
(:class:`medmamba.networks.FuseOnLoad`):

- :func:`load_network`: the inference network, from a checkpoint or an exported TorchScript file;
- :func:`export_onnx`: the fused network to ONNX, and both exported files (ONNX, and TorchScript
  from ``ckpt_export``) checked against the eager fused network, with a ``<name>_export.json`` report.

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
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from medmamba.inferers.volume_predictor import VolumePredictor
from medmamba.networks.fuse_on_load import FuseOnLoad, has_batchnorm
from medmamba.training.checkpoint import extract_state_dict, load_weights

__all__ = ["FuseOnLoad", "VolumePredictor", "export_onnx", "load_network"]

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
        use_torchscript: load ``model_file`` with ``torch.jit.load``.
        key: entry of a multi-object checkpoint (``"model"``, ``"ema"``...); default flat or ``"model"``.
        device: where to put the network.
        channels_last: convert the weights (eager or TorchScript) to the channels-last memory format
            (faster convolutions on CPUs with oneDNN; outputs the same up to float rounding).

    Returns:
        The network in eval mode on ``device``.

    Raises:
        FileNotFoundError: ``model_file`` does not exist.
        ValueError: no ``network`` for a checkpoint.
    """
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
    onnx_exporter: str = "legacy",
) -> dict[str, Any]:
    """Export the fused network to ONNX and check it, and an exported TorchScript file, against it.

    ONNX goes through :func:`medmamba.training.export_fused` (norm fusion, opset 17, dynamic batch,
    reload with onnxruntime) and is renamed to ``<out_dir>/<name>.onnx``. That file and
    ``torchscript_file`` (e.g. ``models/model.ts`` from ``ckpt_export``) are compared with the eager
    fused network on a seeded random batch of ``input_shape`` and on one of another batch size: the
    largest absolute difference divided by the largest absolute eager output must stay within
    ``rtol``. The ONNX graph is valid for the spatial size of ``input_shape`` (the scan's loop is
    fixed at tracing), with a dynamic batch size.

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
        onnx_exporter: ``"legacy"`` (the default: the graph fixes the spatial size) or ``"dynamo"``
            (PyTorch's default exporter: dynamic batch, height and width in multiples of the
            network's pad multiple; ``input_shape`` needs batch >= 2; about a minute on 2 cores,
            which the main job's budget does not include); see :func:`medmamba.training.export_fused`.

    Returns:
        ``{"onnx", "torchscript", "checkpoint", "input_shape", "max_abs_output", "max_abs_error",
        "relative_error", "rtol"}``.

    Raises:
        medmamba.training.ExportMismatchError: an export differs from the eager fused network.
        ValueError: a bad ``input_shape``.
    """
    from medmamba.networks import fuse_norms
    from medmamba.training import ExportMismatchError, export_fused, verify_export

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
    sample = torch.randn(*shape, generator=torch.Generator().manual_seed(0))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    has_bn = has_batchnorm(network)
    fuse: Any = (lambda m: fuse_norms(m, strict=strict)) if has_bn else False
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = export_fused(
            os.fspath(checkpoint), network=network, out_dir=out, sample_input=sample, name=name,
            formats=("onnx",), fuse=fuse, atol=1e-3, rtol=1e-2, onnx_exporter=onnx_exporter,
        )
    onnx_path = out / f"{name}.onnx"
    os.replace(result.onnx_path, onnx_path)
    eager = load_weights(copy.deepcopy(network), os.fspath(checkpoint))
    eager = fuse_norms(eager, inplace=True, strict=strict) if has_bn else eager.eval()
    with torch.no_grad():
        scale = max(float(eager(sample).abs().max()), 1e-12)
    errors = verify_export(
        eager, sample, torchscript_path=torchscript_file, onnx_path=onnx_path, atol=rtol * scale, rtol=0.0
    )
    errors["fusion"] = result.max_abs_error.get("fusion", float("nan"))
    relative = {k: v / scale for k, v in errors.items()}
    bad = {k: v for k, v in relative.items() if k != "fusion" and v > rtol}
    if bad:
        raise ExportMismatchError(f"exported outputs differ from the eager fused network beyond rtol={rtol}: {bad}.")
    doc = {
        "onnx": str(onnx_path),
        "torchscript": None if torchscript_file is None else os.fspath(torchscript_file),
        "checkpoint": os.fspath(checkpoint),
        "input_shape": shape,
        "max_abs_output": scale,
        "max_abs_error": errors,
        "relative_error": relative,
        "rtol": rtol,
    }
    report = Path(report_file) if report_file is not None else out / f"{name}_export.json"
    report.parent.mkdir(parents=True, exist_ok=True)
    report.write_text(json.dumps(doc, indent=1) + "\n")
    logger.info("export: %s; relative errors %s", onnx_path, relative)
    return doc
