"""Fusion at export: fold the norms of the best (or EMA) checkpoint, export, and verify.

At test time the paper folds every BatchNorm into its neighbouring convolution or linear layer
("normalisation layer fusion"), which changes no output and speeds up inference.
:func:`export_fused` does that for a trained checkpoint and writes the deployable files next to
it:

1. load the checkpoint (``torch.load(weights_only=True)``; ``checkpoint_key`` picks ``"model"``
   or ``"ema"`` from a MONAI ``CheckpointSaver`` file) into ``network``;
2. ``medmamba.networks.fuse_norms`` → an eval-mode network without BatchNorm; the fused and
   unfused outputs are compared on the sample batch;
3. TorchScript (``torch.jit.script``, falling back to ``torch.jit.trace``) and ONNX (opset 17,
   dynamic batch dimension, the TorchScript-based exporter ``dynamo=False``);
4. both files are reloaded (``torch.jit.load``, ``onnxruntime``) and their outputs compared to
   the eager fused network on the sample batch and on a batch of another size; any difference
   beyond ``atol + rtol·|reference|`` raises :class:`ExportMismatchError`.

When ``torch.jit.script`` cannot compile the network, it is traced; traced TorchScript and the
ONNX graph are then valid for the sample's spatial size (shape-dependent Python control flow is
fixed at export), with a dynamic batch dimension. Export with a sample of the deployment size.

:class:`FusedExportHandler` runs the same step from an ignite/MONAI bundle when training ends.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import os
import warnings
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import torch
from monai.networks.utils import convert_to_onnx
from torch import nn

from .checkpoint import load_weights

if TYPE_CHECKING:
    from ignite.engine import Engine

__all__ = ["DYNAMIC_CHECK_BATCHES", "ExportMismatchError", "ExportResult", "export_fused", "verify_export", "FusedExportHandler"]

logger = logging.getLogger(__name__)

_FORMATS = ("torchscript", "onnx", "compiled")
_DEFAULT_FORMATS = ("torchscript", "onnx")
#: Batch sizes a dynamic (``"dynamo"``) ONNX graph is checked at, at two spatial sizes.
DYNAMIC_CHECK_BATCHES = (1, 3, 8)


class ExportMismatchError(RuntimeError):
    """An exported (or fused) model's outputs differ from the eager model's beyond tolerance."""


@dataclasses.dataclass
class ExportResult:
    """What :func:`export_fused` wrote and measured.

    Attributes:
        torchscript_path: path of the TorchScript file, or ``None``.
        onnx_path: path of the ONNX file, or ``None``.
        compiled_path: path of the ahead-of-time compiled artefact (``.pt2``), or ``None``.
        torchscript_method: ``"script"`` or ``"trace"``.
        max_abs_error: largest absolute difference to the eager fused network, per check
            (``"fusion"``, ``"torchscript"``, ``"onnx"``, ``"compiled"``, each also with ``"@batch=N"``).
    """

    torchscript_path: str | None = None
    onnx_path: str | None = None
    compiled_path: str | None = None
    torchscript_method: str | None = None
    max_abs_error: dict[str, float] = dataclasses.field(default_factory=dict)


def _flatten(out: Any) -> list[torch.Tensor]:
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, dict):
        return [t for v in out.values() for t in _flatten(v)]
    if isinstance(out, (tuple, list)):
        return [t for v in out for t in _flatten(v)]
    raise TypeError(f"model output must be tensors (possibly nested in tuples/lists/dicts), got {type(out).__name__}.")


def _compare(
    name: str, reference: Sequence[torch.Tensor], other: Sequence[Any], atol: float, rtol: float
) -> float:
    if len(reference) != len(other):
        raise ExportMismatchError(f"{name}: {len(other)} outputs, the eager model has {len(reference)}.")
    worst = 0.0
    for i, (ref, got) in enumerate(zip(reference, other)):
        got = torch.as_tensor(got).to(ref.device, torch.float32)
        ref = ref.float()
        if got.shape != ref.shape:
            raise ExportMismatchError(
                f"{name}: output {i} has shape {tuple(got.shape)}, the eager model's is {tuple(ref.shape)}."
            )
        if not torch.isfinite(got).all():
            raise ExportMismatchError(f"{name}: output {i} holds non-finite values.")
        diff = (got - ref).abs()
        err = float(diff.max()) if diff.numel() else 0.0
        worst = max(worst, err)
        bound = atol + rtol * ref.abs()
        if (diff > bound).any():
            raise ExportMismatchError(
                f"{name}: output {i} differs from the eager fused model by up to {err:.3e} "
                f"(tolerance atol={atol:g}, rtol={rtol:g})."
            )
    return worst


def _other_batch(sample: torch.Tensor) -> torch.Tensor:
    """A batch of a different size (B + 1) to exercise the dynamic batch dimension."""
    return torch.cat([sample, sample[:1].flip(-1)], dim=0)


def verify_export(
    reference: nn.Module,
    sample_input: torch.Tensor,
    torchscript_path: str | os.PathLike | None = None,
    onnx_path: str | os.PathLike | None = None,
    atol: float = 1e-4,
    rtol: float = 1e-3,
    check_dynamic_batch: bool = True,
    compiled_path: str | os.PathLike | None = None,
) -> dict[str, float]:
    """Reload exported files and compare them with ``reference`` on ``sample_input``.

    Args:
        reference: the eager (fused) network, evaluated in eval mode.
        sample_input: a batch ``(B, C, *spatial)``.
        torchscript_path: TorchScript file to check (``torch.jit.load``), or ``None``.
        onnx_path: ONNX file to check (``onnxruntime``, CPU), or ``None``.
        atol, rtol: tolerance, elementwise ``|exported − eager| ≤ atol + rtol·|eager|``.
        check_dynamic_batch: also check a batch of size B + 1.
        compiled_path: ahead-of-time compiled artefact to check
            (:func:`medmamba.networks.load_compiled`), or ``None``.

    Returns:
        Largest absolute error per check.

    Raises:
        ExportMismatchError: when any output differs beyond tolerance (or has another shape).
    """
    reference = reference.eval()
    batches = [sample_input] + ([_other_batch(sample_input)] if check_dynamic_batch else [])
    errors: dict[str, float] = {}
    with torch.no_grad():
        refs = [_flatten(reference(b)) for b in batches]
    runners: dict[str, Callable[[torch.Tensor], list[torch.Tensor]]] = {}
    if torchscript_path is not None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            scripted = torch.jit.load(os.fspath(torchscript_path), map_location="cpu")
        scripted.eval()
        runners["torchscript"] = lambda b: _flatten(scripted(b.cpu()))
    if onnx_path is not None:
        import onnxruntime as ort

        session = ort.InferenceSession(os.fspath(onnx_path), providers=["CPUExecutionProvider"])
        input_name = session.get_inputs()[0].name
        runners["onnx"] = lambda b: [
            torch.from_numpy(g) for g in session.run(None, {input_name: b.detach().cpu().float().numpy()})
        ]
    if compiled_path is not None:
        from medmamba.networks import load_compiled

        compiled = load_compiled(compiled_path)
        runners["compiled"] = lambda b: _flatten(compiled(b.detach().cpu().float()))
    for name, run in runners.items():
        for i, (b, ref) in enumerate(zip(batches, refs)):
            with torch.no_grad():
                got = run(b)
            key = name if i == 0 else f"{name}@batch={b.shape[0]}"
            errors[key] = _compare(key, [r.cpu() for r in ref], got, atol, rtol)
    return errors


def _resolve_fuse(fuse: bool | Callable[[nn.Module], nn.Module], strict: bool) -> Callable[[nn.Module], nn.Module]:
    if callable(fuse):
        return fuse
    if not fuse:
        return lambda m: m.eval()
    from medmamba.networks import fuse_norms

    return lambda m: fuse_norms(m, strict=strict)


def export_fused(
    model: nn.Module | str | os.PathLike,
    network: nn.Module | None = None,
    out_dir: str | os.PathLike | None = None,
    sample_input: torch.Tensor | None = None,
    name: str | None = None,
    checkpoint_key: str | None = None,
    formats: Sequence[str] = _DEFAULT_FORMATS,
    fuse: bool | Callable[[nn.Module], nn.Module] = True,
    fuse_strict: bool = True,
    opset: int = 17,
    atol: float = 1e-4,
    rtol: float = 1e-3,
    check_dynamic_batch: bool = True,
    onnx_exporter: str = "dynamo",
) -> ExportResult:
    """Fuse the norms of a trained network, export TorchScript and ONNX, and verify both.

    Args:
        model: a network (``nn.Module``; it is deep-copied, never modified; a
            :class:`~medmamba.training.ema.ModelEMA` exports its averaged network) or a checkpoint
            path to load into ``network``.
        network: the architecture to load a checkpoint path into (required for a path).
        out_dir: where to write; default the checkpoint's folder (for a path) or ``"."``.
        sample_input: a batch ``(B, C, *spatial)`` for tracing and checking (required).
        name: file stem; default the checkpoint's stem (for a path) or ``"model"``. Files are
            ``<name>_fused.ts``, ``<name>_fused.onnx`` and ``<name>_fused.pt2``.
        checkpoint_key: entry of a MONAI checkpoint file, e.g. ``"ema"`` for the EMA weights.
        formats: any of ``"torchscript"``, ``"onnx"``, ``"compiled"`` (an ahead-of-time compiled CPU
            artefact ``<name>_fused.pt2``, :func:`medmamba.networks.compile_ahead_of_time`: dynamic
            batch, the sample's spatial size; minutes to compile, needs a C++ compiler).
        fuse: ``True`` → ``medmamba.networks.fuse_norms``; ``False`` → no fusion; or a callable
            ``module -> fused module``.
        fuse_strict: passed as ``strict`` to ``fuse_norms`` (``False`` for networks with
            BatchNorms outside fusable units, e.g. some MONAI nets).
        opset: ONNX opset.
        atol, rtol: tolerance of every check.
        check_dynamic_batch: also check a batch of another size.
        onnx_exporter: ``"dynamo"`` (the default: PyTorch's default, ``torch.export``-based exporter
            through :func:`medmamba.networks.export_onnx_dynamic`: dynamic batch, height and width;
            needs a 4D ``sample_input`` of batch >= 2 and sizes that
            :func:`~medmamba.networks.export_dynamic` accepts; the graph is checked at batches
            :data:`DYNAMIC_CHECK_BATCHES` at the sample's size and at a second size; about a minute
            for a T2 network on a 2-core CPU) or ``"legacy"`` (the deprecated TorchScript-based
            exporter, ``dynamo=False``, an explicit fallback: dynamic batch, the sample's spatial
            size fixed, any sample shape).

    Returns:
        :class:`ExportResult`.

    Raises:
        ExportMismatchError: fused or exported outputs differ from the eager ones.
        ValueError / TypeError: bad arguments.
    """
    if sample_input is None or not isinstance(sample_input, torch.Tensor):
        raise TypeError(f"sample_input must be a tensor batch (B, C, *spatial), got {type(sample_input).__name__}.")
    if onnx_exporter not in ("legacy", "dynamo"):
        raise ValueError(f"onnx_exporter must be 'legacy' or 'dynamo', got {onnx_exporter!r}.")
    bad = [f for f in formats if f not in _FORMATS]
    if bad:
        raise ValueError(f"formats must be among {_FORMATS}, got {list(formats)!r}.")
    if isinstance(model, (str, os.PathLike)):
        if network is None:
            raise ValueError("network= (the architecture) is required to export a checkpoint path.")
        path = os.fspath(model)
        eager = load_weights(copy.deepcopy(network), path, key=checkpoint_key)
        out_dir = out_dir if out_dir is not None else os.path.dirname(os.path.abspath(path))
        name = name or os.path.splitext(os.path.basename(path))[0]
    elif isinstance(model, nn.Module):
        # a ModelEMA (or DDP) wrapper exports the averaged network itself
        inner = getattr(model, "module", None)
        eager = copy.deepcopy(inner if isinstance(inner, nn.Module) else model)
        out_dir = out_dir if out_dir is not None else "."
        name = name or "model"
    else:
        raise TypeError(f"model must be an nn.Module or a checkpoint path, got {type(model).__name__}.")
    os.makedirs(out_dir, exist_ok=True)
    eager = eager.cpu().eval()
    sample_input = sample_input.detach().cpu().float()

    fused = _resolve_fuse(fuse, fuse_strict)(copy.deepcopy(eager))
    fused = fused.cpu().eval()
    result = ExportResult()
    with torch.no_grad():
        ref_unfused = _flatten(eager(sample_input))
        ref_fused = _flatten(fused(sample_input))
    result.max_abs_error["fusion"] = _compare("fusion", ref_unfused, ref_fused, atol, rtol)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        # tracing fixes shape-dependent Python control flow (e.g. the scan's loop over the sequence
        # length) to the sample's spatial size; the batch dimension stays dynamic.
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        if "torchscript" in formats:
            ts_path = os.path.join(os.fspath(out_dir), f"{name}_fused.ts")
            try:
                scripted = torch.jit.script(fused)
                result.torchscript_method = "script"
            except Exception as exc:  # scripting fails on dynamic Python; tracing still works
                logger.info("torch.jit.script failed (%s); falling back to torch.jit.trace", type(exc).__name__)
                with torch.no_grad():
                    scripted = torch.jit.trace(fused, sample_input, check_trace=False)
                result.torchscript_method = "trace"
            scripted.save(ts_path)
            result.torchscript_path = ts_path
        if "onnx" in formats:
            onnx_path = os.path.join(os.fspath(out_dir), f"{name}_fused.onnx")
            n_out = len(ref_fused)
            output_names = ["output"] if n_out == 1 else [f"output{i}" for i in range(n_out)]
            if onnx_exporter == "dynamo":
                from medmamba.networks import export_onnx_dynamic

                if n_out != 1:
                    raise ValueError(f"onnx_exporter='dynamo' exports one output; the network returns {n_out}.")
                export_onnx_dynamic(fused, sample_input, onnx_path, opset_version=max(int(opset), 18))
            else:
                # MONAI's converter with the legacy exporter; verify_export below does the checks
                # (MONAI's verify=True runs one batch and reseeds the global generators)
                dynamic_axes = {"input": {0: "batch"}, **{o: {0: "batch"} for o in output_names}}
                convert_to_onnx(
                    fused,
                    (sample_input,),
                    input_names=["input"],
                    output_names=output_names,
                    opset_version=int(opset),
                    dynamic_axes=dynamic_axes,
                    filename=onnx_path,
                    verify=False,
                    dynamo=False,
                )
            result.onnx_path = onnx_path
        if "compiled" in formats:
            from medmamba.networks import compile_ahead_of_time

            result.compiled_path = compile_ahead_of_time(fused, sample_input,
                                                         os.path.join(os.fspath(out_dir), f"{name}_fused.pt2"))

    result.max_abs_error.update(
        verify_export(
            fused,
            sample_input,
            torchscript_path=result.torchscript_path,
            onnx_path=result.onnx_path,
            atol=atol,
            rtol=rtol,
            check_dynamic_batch=check_dynamic_batch,
            compiled_path=result.compiled_path,
        )
    )
    if result.onnx_path is not None and onnx_exporter == "dynamo":
        # the dynamic graph is also checked at batches 1, 3 and 8 at the sample's size and at another
        # height and width (one spatial multiple more in height)
        from medmamba.networks import spatial_multiple

        step = spatial_multiple(fused)
        channels, height, width = (int(s) for s in sample_input.shape[1:4])
        gen = torch.Generator().manual_seed(1)
        for h, w in ((height, width), (height + step, width)):
            for b in DYNAMIC_CHECK_BATCHES:
                other = torch.randn(b, channels, h, w, generator=gen)
                err = verify_export(fused, other, onnx_path=result.onnx_path, atol=atol, rtol=rtol, check_dynamic_batch=False)
                result.max_abs_error[f"onnx@batch={b},size={h}x{w}"] = err["onnx"]
    logger.info("export_fused: wrote %s, %s, %s; max errors %s", result.torchscript_path, result.onnx_path,
                result.compiled_path, result.max_abs_error)
    return result


class FusedExportHandler:
    """Ignite handler: at the end of training, export the best (or EMA) checkpoint, fused.

    Args:
        network: the architecture (its current weights are exported when no checkpoint is
            found), e.g. ``"@network_def"`` or ``"@ema"``'s ``module``.
        sample_input: a sample batch; or give ``input_shape``.
        input_shape: shape of a random sample batch ``(B, C, *spatial)`` (seeded, float32).
        checkpoint: a checkpoint path to export.
        checkpoint_saver: a MONAI ``CheckpointSaver``; its best (key-metric) checkpoint is
            exported, else its final one. Attach this handler after the saver.
        checkpoint_key: entry of the checkpoint (``"model"``, ``"ema"``...).
        out_dir: output folder; default next to the checkpoint.
        name: file stem.
        event: ignite event name on which to export (default ``"COMPLETED"``).
        export_kwargs: more keyword arguments for :func:`export_fused` (``formats``, ``atol``...).

    After the run the :class:`ExportResult` is at :attr:`result`.
    """

    def __init__(
        self,
        network: nn.Module,
        sample_input: torch.Tensor | None = None,
        input_shape: Sequence[int] | None = None,
        checkpoint: str | os.PathLike | None = None,
        checkpoint_saver: Any | None = None,
        checkpoint_key: str | None = None,
        out_dir: str | os.PathLike | None = None,
        name: str | None = None,
        event: str = "COMPLETED",
        export_kwargs: dict | None = None,
    ) -> None:
        if not isinstance(network, nn.Module):
            raise TypeError(f"network must be an nn.Module, got {type(network).__name__}.")
        if sample_input is None:
            if input_shape is None:
                raise ValueError("give sample_input or input_shape.")
            generator = torch.Generator().manual_seed(0)
            sample_input = torch.randn(*[int(s) for s in input_shape], generator=generator)
        self.network = network
        self.sample_input = sample_input
        self.checkpoint = checkpoint
        self.checkpoint_saver = checkpoint_saver
        self.checkpoint_key = checkpoint_key
        self.out_dir = out_dir
        self.name = name
        self.event = event
        self.export_kwargs = dict(export_kwargs or {})
        self.result: ExportResult | None = None

    def attach(self, engine: Engine) -> None:
        from ignite.engine import Events

        engine.add_event_handler(getattr(Events, self.event), self)

    def resolve_checkpoint(self) -> str | None:
        """The checkpoint path to export: ``checkpoint``, else the saver's best, else its final."""
        if self.checkpoint is not None:
            return os.fspath(self.checkpoint)
        saver = self.checkpoint_saver
        if saver is None:
            return None
        for attr in ("_key_metric_checkpoint", "_final_checkpoint", "_interval_checkpoint"):
            ckpt = getattr(saver, attr, None)
            if ckpt is None or not getattr(ckpt, "_saved", None):
                continue
            path = os.fspath(ckpt.last_checkpoint)
            if not os.path.isabs(path) and not os.path.exists(path):
                path = os.path.join(getattr(saver, "save_dir", "."), path)
            if os.path.isfile(path):
                return path
        return None

    def __call__(self, engine: Engine | None = None) -> ExportResult:
        path = self.resolve_checkpoint()
        if path is None:
            logger.warning("FusedExportHandler: no checkpoint found; exporting the network's current weights.")
            model: nn.Module | str = self.network
        else:
            model = path
        self.result = export_fused(
            model,
            network=self.network,
            out_dir=self.out_dir,
            sample_input=self.sample_input,
            name=self.name,
            checkpoint_key=self.checkpoint_key,
            **self.export_kwargs,
        )
        return self.result
