"""Run a 2D network over every slice of a volume, with neighbouring slices as context (2.5D)."""

from __future__ import annotations

import itertools
import weakref
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from monai.data import MetaTensor
from monai.inferers import Inferer
from monai.utils import convert_to_dst_type
from torch import nn
from tqdm import tqdm

from medmamba.transforms.slice_stack import (
    _check_context,
    _check_spatial_axis,
    stack_slices,
)

__all__ = ["SliceStackInferer", "expected_in_channels"]


def expected_in_channels(network: Callable[..., Any]) -> int | None:
    """The number of input channels a network expects, where it can be read off.

    Looks for an integer ``in_channels`` attribute on the network (MONAI networks and medmamba's keep
    one; wrappers such as ``DataParallel`` are unwrapped through ``.module``), else takes the ``in_channels`` of the first convolution registered in the module.

    Args:
        network: the network (any callable; non-modules give ``None``).

    Returns:
        The channel count, or ``None`` when it cannot be determined.
    """
    seen = 0
    while seen < 4:
        value = getattr(network, "in_channels", None)
        if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
            return int(value)
        inner = getattr(network, "module", None)
        if inner is None or not isinstance(inner, nn.Module):
            break
        network, seen = inner, seen + 1
    if isinstance(network, nn.Module) and not isinstance(network, torch.jit.ScriptModule):
        for module in network.modules():
            if isinstance(module, nn.modules.conv._ConvNd):
                return int(module.in_channels)
    return None


class SliceStackInferer(Inferer):
    """Slice-by-slice (2D / 2.5D) inference of a 2D network on 3D volumes.

    For every slice ``s`` along ``spatial_dim`` of a ``(B, C, H, W, D)`` volume, the network gets the
    ``2k + 1`` slices ``s - k .. s + k`` (edges replicated) as ``C * (2k + 1)`` channels, in the same
    modality-major order as :class:`medmamba.transforms.SliceStackd` (see
    :mod:`medmamba.transforms.slice_stack`). Stacks are built per batch of ``sw_batch_size`` slices,
    so memory stays bounded by the volume, the output and one batch. With ``context=0`` this equals
    :class:`monai.inferers.SliceInferer` with ``roi_size`` the full slice.

    Output placement: a per-slice output ``(N, out_C, P0, P1)`` gives a volume ``(B, out_C, ...)`` with
    the slice axis put back at ``spatial_dim`` (e.g. ``(B, out_C, H, W, D)`` for ``spatial_dim=2``;
    ``P0, P1`` may differ from the input's). Any other per-slice shape ``(N, out_C, *rest)`` (e.g.
    classification logits ``(N, K)``) gives ``(B, out_C, *rest, S)``: slices on the last axis.
    Networks that return a sequence (e.g. deep supervision) or a mapping of tensors give a tuple or a
    dict of such volumes.

    Usable as the ``inferer`` of :class:`monai.engines.SupervisedEvaluator`. The inferer does not
    switch gradients off; wrap the call in ``torch.no_grad()`` (MONAI's evaluators do) for inference.

    Args:
        spatial_dim: spatial axis to slide over: 0 (H), 1 (W) or 2 (D, default); negative allowed.
        context: ``k``, the neighbouring slices on each side (0: plain 2D slices).
        sw_batch_size: slices per network call.
        progress: show a tqdm progress bar over the slice batches.
        device: device on which the output volume is accumulated (default: the input's). Use
            ``"cpu"`` to keep a large output off the GPU.
        sw_device: device on which the network runs (default: the input's); each batch of stacks is
            moved there.
        check_channels: compare ``C * (2k + 1)`` with the network's :func:`expected_in_channels`
            before running and raise on a mismatch.
        reuse_last_pass: keep the output of the last call made without gradients and give it again
            (a copy) when the next such call has the same network, unchanged (the same parameter
            versions, the same train/eval mode), no extra arguments and an input equal to the last
            one, value for value. A bundle that runs its network twice on the same volume (the
            contrast-polarity probe on the volume as given, then the brain-normalising or
            brain-extraction pass on the same volume) then computes it once; the outputs are the ones
            a second pass gives, since the network is deterministic in eval mode. Holds one input and
            one output in memory. ``False``: every call runs the network.

    Raises:
        TypeError / ValueError: on invalid arguments (at construction) or inputs (at call time): a
            non-5D input, a stack of ``2k + 1`` slices larger than the volume, a channel count the
            network does not take.

    Example::

        inferer = SliceStackInferer(spatial_dim=2, context=1, sw_batch_size=16)
        with torch.no_grad():
            seg_logits = inferer(ct_volume, net2d)  # (B, out_C, H, W, D)
    """

    def __init__(
        self,
        spatial_dim: int = 2,
        context: int = 0,
        sw_batch_size: int = 8,
        progress: bool = False,
        device: torch.device | str | None = None,
        sw_device: torch.device | str | None = None,
        check_channels: bool = True,
        reuse_last_pass: bool = False,
    ) -> None:
        self.spatial_dim = _check_spatial_axis(spatial_dim, "spatial_dim")
        self.context = _check_context(context)
        if isinstance(sw_batch_size, bool) or not isinstance(sw_batch_size, (int, np.integer)) or sw_batch_size < 1:
            raise ValueError(f"sw_batch_size must be a positive int, got {sw_batch_size!r}.")
        self.sw_batch_size = int(sw_batch_size)
        self.progress = bool(progress)
        self.device = None if device is None else torch.device(device)
        self.sw_device = None if sw_device is None else torch.device(sw_device)
        self.check_channels = bool(check_channels)
        if not isinstance(reuse_last_pass, bool):
            raise TypeError(f"reuse_last_pass must be a bool, got {type(reuse_last_pass).__name__}.")
        self.reuse_last_pass = reuse_last_pass
        self._last_pass: _LastPass | None = None

    def _check_inputs(self, inputs: Any, network: Callable[..., Any]) -> None:
        if not isinstance(inputs, torch.Tensor):
            raise TypeError(f"inputs must be a torch.Tensor of shape (B, C, H, W, D), got {type(inputs).__name__}.")
        if inputs.ndim != 5:
            raise ValueError(
                f"inputs must be a batch of 3D volumes (B, C, H, W, D) (5D), got a {inputs.ndim}D tensor of "
                f"shape {tuple(inputs.shape)}; add the batch / channel dimension, or run a 2D input through "
                "the network directly."
            )
        num_slices = inputs.shape[2 + self.spatial_dim]
        window = 2 * self.context + 1
        if window > num_slices:
            raise ValueError(
                f"context={self.context} needs a stack of {window} slices, larger than the volume "
                f"({num_slices} slices along spatial_dim={self.spatial_dim}, input shape {tuple(inputs.shape)})."
            )
        if self.check_channels:
            expected = expected_in_channels(network)
            given = inputs.shape[1] * window
            if expected is not None and expected != given:
                hint = (
                    f"a volume with {expected // window} modalities"
                    if expected % window == 0
                    else f"a context whose 2*context+1 divides {expected}"
                )
                raise ValueError(
                    f"the network takes {expected} input channels, but context={self.context} stacks "
                    f"2*{self.context}+1={window} slices x {inputs.shape[1]} modalities = {given} channels; "
                    f"build the network with in_channels={given} or use {hint} "
                    "(pass check_channels=False to skip this check)."
                )

    def _placement(self, out_slice: torch.Tensor) -> int:
        """Spatial position (in the output volume) of the slice axis for one per-slice output."""
        return self.spatial_dim if out_slice.ndim == 4 else out_slice.ndim - 2

    def _allocate(self, first: torch.Tensor, batch: int, num_slices: int, device: torch.device) -> torch.Tensor:
        pos = self._placement(first)
        shape = list(first.shape[2:])
        shape.insert(pos, num_slices)
        return torch.empty((batch, first.shape[1], *shape), dtype=first.dtype, device=device)

    def _write(self, out: torch.Tensor, res: torch.Tensor, b: int, start: int) -> None:
        n = res.shape[0]
        pos = self._placement(res)
        out[b].narrow(1 + pos, start, n).copy_(res.movedim(0, 1 + pos))

    def __call__(  # type: ignore[override]
        self, inputs: torch.Tensor, network: Callable[..., Any], *args: Any, **kwargs: Any
    ) -> torch.Tensor | tuple[torch.Tensor, ...] | dict[Any, torch.Tensor]:
        """Run ``network`` over every slice stack of ``inputs``.

        Args:
            inputs: ``(B, C, H, W, D)`` volumes.
            network: a 2D network taking ``(N, C * (2k + 1), P0, P1)``.
            args: extra positional arguments for ``network``.
            kwargs: extra keyword arguments for ``network``.

        Returns:
            The output volume(s), see the class docstring.
        """
        self._check_inputs(inputs, network)
        original = inputs
        if isinstance(inputs, MetaTensor):
            inputs = inputs.as_tensor()
        reusable = self.reuse_last_pass and not args and not kwargs and not torch.is_grad_enabled()
        last = self._last_pass
        if reusable and last is not None and last.matches(inputs, network):
            outputs, kind = {k: v.clone() for k, v in last.outputs.items()}, last.kind
        else:
            self._last_pass = None  # a stale pass is never kept beside a new one
            outputs, kind = self._run(inputs, network, *args, **kwargs)
            if reusable:
                self._last_pass = _LastPass.of(inputs, network, {k: v.clone() for k, v in outputs.items()}, kind)
        return _returned(outputs, kind, original)

    def run_slices(
        self, inputs: torch.Tensor, network: Callable[..., Any], indices: Sequence[int], *args: Any, **kwargs: Any
    ) -> torch.Tensor | tuple[torch.Tensor, ...] | dict[Any, torch.Tensor]:
        """Run ``network`` over the slice stacks centred on some slices of ``inputs`` only.

        The stacks are the ones :meth:`__call__` builds for those slices (the same neighbours, edges
        replicated), so each output slice equals the same slice of a full pass. The last pass kept for
        ``reuse_last_pass`` is neither used nor replaced.

        Args:
            inputs: ``(B, C, H, W, D)`` volumes.
            network: a 2D network taking ``(N, C * (2k + 1), P0, P1)``.
            indices: the centre slices along ``spatial_dim``, each in ``[0, S)`` for ``S`` slices.
            args: extra positional arguments for ``network``.
            kwargs: extra keyword arguments for ``network``.

        Returns:
            As :meth:`__call__`, with ``len(indices)`` slices on the slice axis, in the order given.

        Raises:
            ValueError: ``indices`` is empty or holds a slice outside the volume (and the input checks
                of :meth:`__call__`).
        """
        self._check_inputs(inputs, network)
        num_slices = inputs.shape[2 + self.spatial_dim]
        chosen = [int(i) for i in indices]
        if not chosen or min(chosen) < 0 or max(chosen) >= num_slices:
            raise ValueError(f"indices must be a non-empty sequence of slices in [0, {num_slices - 1}] (spatial_dim="
                             f"{self.spatial_dim} of input shape {tuple(inputs.shape)}), got {list(indices)!r}.")
        original = inputs
        if isinstance(inputs, MetaTensor):
            inputs = inputs.as_tensor()
        outputs, kind = self._run(inputs, network, *args, slices=chosen, **kwargs)
        return _returned(outputs, kind, original)

    def _run(self, inputs: torch.Tensor, network: Callable[..., Any], *args: Any, slices: list[int] | None = None,
             **kwargs: Any) -> tuple[dict[Any, torch.Tensor], str]:
        """The network over the slice stacks of plain-tensor ``inputs`` centred on ``slices`` (``None``:
        every slice): ``({key: volume}, kind)``, the slice axis as long as ``slices``."""
        batch = inputs.shape[0]
        centres = list(range(inputs.shape[2 + self.spatial_dim])) if slices is None else slices
        num_slices = len(centres)
        out_device = self.device or inputs.device
        sw_device = self.sw_device or inputs.device
        starts = range(0, num_slices, self.sw_batch_size)
        jobs = [(b, s) for b in range(batch) for s in starts]
        outputs: Any = None
        kind = ""
        if batch == 0:  # an empty batch: the network's output structure on zero stacks, zero volumes
            plane = [size for axis, size in enumerate(inputs.shape[2:]) if axis != self.spatial_dim]
            empty = inputs.new_zeros((0, inputs.shape[1] * (2 * self.context + 1), *plane))
            parts, kind = _output_parts(network(empty.to(sw_device), *args, **kwargs))
            outputs = {k: self._allocate(v, 0, num_slices, out_device) for k, v in parts.items()}
        for b, start in tqdm(jobs, disable=not self.progress, desc="slices", unit="batch"):
            stop = min(start + self.sw_batch_size, num_slices)
            indices = torch.as_tensor(centres[start:stop], dtype=torch.long, device=inputs.device)
            stacks = stack_slices(inputs[b : b + 1], indices, self.spatial_dim, self.context)[0]
            parts, kind = _output_parts(network(stacks.to(sw_device), *args, **kwargs))
            for key, value in parts.items():
                if value.ndim < 2 or value.shape[0] != stop - start:
                    raise ValueError(
                        f"network output {key!r} must have shape (N={stop - start}, out_C, ...) for N slices, "
                        f"got {tuple(value.shape)}."
                    )
            if outputs is None:
                outputs = {k: self._allocate(v, batch, num_slices, out_device) for k, v in parts.items()}
            for key, value in parts.items():
                self._write(outputs[key], value, b, start)
        return outputs, kind


def _parameter_versions(network: Callable[..., Any]) -> tuple[int, ...] | None:
    """The in-place version counters of a module's parameters and buffers (an optimiser step or a
    ``load_state_dict`` changes them); ``None`` for a callable that is not a module."""
    if not isinstance(network, nn.Module):
        return None
    return tuple(t._version for t in itertools.chain(network.parameters(), network.buffers()))


@dataclass(frozen=True)
class _LastPass:
    """The last reusable pass of a :class:`SliceStackInferer` (``reuse_last_pass``): what it was run on
    and what it gave."""

    inputs: torch.Tensor
    network: weakref.ref
    training: bool | None
    versions: tuple[int, ...] | None
    outputs: dict[Any, torch.Tensor]
    kind: str

    @classmethod
    def of(cls, inputs: torch.Tensor, network: Callable[..., Any], outputs: dict[Any, torch.Tensor], kind: str) -> _LastPass | None:
        """The record of a pass, or ``None`` for a network that cannot be referred to weakly (it is then not kept)."""
        try:
            ref = weakref.ref(network)
        except TypeError:
            return None
        return cls(inputs.detach().clone(), ref, getattr(network, "training", None), _parameter_versions(network), outputs, kind)

    def matches(self, inputs: torch.Tensor, network: Callable[..., Any]) -> bool:
        """Whether a pass of ``network`` over ``inputs`` would give this pass's outputs."""
        return (self.network() is network
                and getattr(network, "training", None) == self.training
                and _parameter_versions(network) == self.versions
                and inputs.shape == self.inputs.shape and inputs.dtype == self.inputs.dtype
                and inputs.device == self.inputs.device and bool(torch.equal(inputs, self.inputs)))


def _returned(outputs: dict[Any, torch.Tensor], kind: str, original: torch.Tensor
              ) -> torch.Tensor | tuple[torch.Tensor, ...] | dict[Any, torch.Tensor]:
    """The output volumes in the network's own structure (``kind`` of :func:`_output_parts`), with the
    input volume's meta data where it was a ``MetaTensor``, as MONAI's inferers keep it."""
    if isinstance(original, MetaTensor):
        outputs = {k: convert_to_dst_type(v, original, dtype=v.dtype, device=v.device)[0] for k, v in outputs.items()}
    if kind == "tensor":
        return outputs[0]
    if kind == "sequence":
        return tuple(outputs[i] for i in range(len(outputs)))
    return outputs


def _output_parts(res: Any) -> tuple[dict[Any, torch.Tensor], str]:
    """A network output as ``({key: tensor}, kind)``, kind ``"tensor"``, ``"mapping"`` or ``"sequence"``."""
    if isinstance(res, torch.Tensor):
        return {0: res}, "tensor"
    if isinstance(res, Mapping):
        return dict(res), "mapping"
    if isinstance(res, Sequence) and all(isinstance(r, torch.Tensor) for r in res):
        return dict(enumerate(res)), "sequence"
    raise TypeError(f"network must return a tensor, a sequence of tensors or a mapping of tensors, got {type(res).__name__}.")
