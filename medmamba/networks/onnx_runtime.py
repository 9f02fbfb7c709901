"""An ONNX file run by ONNX Runtime behind the ``nn.Module`` interface of the torch network.

:class:`OnnxRuntimeNetwork` takes and returns torch tensors, so the bundles' inferers and predictors
(:class:`medmamba.inferers.SliceStackInferer`, :class:`~medmamba.inferers.VolumeSegmenter`, MONAI's
evaluators) run an exported graph -- the fused float32 one, or the int8 one of
:func:`medmamba.networks.quantize_onnx_int8` -- exactly as they run the torch network. A bundle
config swaps it in for its ``network``::

    "network": "$medmamba.networks.OnnxRuntimeNetwork(@ckpt_dir + '/model_int8.onnx')"

The graph runs on the CPU (ONNX Runtime's CPU execution provider); inputs are copied to the host as
float32 and outputs are returned on the input's device.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch
from torch import nn

__all__ = ["OnnxRuntimeNetwork"]

#: ONNX Runtime's input type names and the numpy dtypes fed to them
_INPUT_DTYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64}


class OnnxRuntimeNetwork(nn.Module):
    """Run an ONNX graph in ONNX Runtime with torch tensors in and out.

    The module has no parameters: ``.to()``, ``.eval()`` and ``torch.no_grad()`` change nothing, and
    gradients do not flow through it. A graph of one input and one output returns a tensor; one of
    several outputs returns a tuple in the graph's output order. A batch of zero samples returns
    the outputs of a one-sample batch cut to zero rows (ONNX Runtime rejects some empty inputs).

    Args:
        path: the ``.onnx`` file.
        num_threads: ONNX Runtime's intra-op threads; ``None`` takes ``torch.get_num_threads()``,
            the count a bundle's ``initialize`` sets with
            :func:`medmamba.resources.configure_threads` (so the ONNX graph gets the same CPU share
            as the torch network it stands in for). Inter-op threads are 1 (the graph runs
            sequentially, as torch's eager network does).
        optimization_level: ONNX Runtime's graph optimisations, ``"all"`` (the default: also the
            layout and QDQ fusions that turn ``DequantizeLinear -> Conv -> QuantizeLinear`` into an
            integer convolution), ``"extended"``, ``"basic"`` or ``"disabled"``.

    Attributes:
        path: the file.
        session: the ``onnxruntime.InferenceSession``.
        input_name: the graph's input.
        output_names: the graph's outputs.
        in_channels: the input's channel count where the graph fixes it (read by
            :class:`~medmamba.inferers.SliceStackInferer`'s channel check), else ``None``.

    Raises:
        FileNotFoundError: ``path`` is not a file.
        TypeError: ``num_threads`` is not an int.
        ValueError: ``num_threads < 1``, an unknown ``optimization_level``, or a graph without
            exactly one input or with a non-floating-point input.

    Example::

        net = OnnxRuntimeNetwork("models/model.onnx", num_threads=2)
        logits = net(torch.randn(4, 3, 128, 128))
    """

    _LEVELS = ("all", "extended", "basic", "disabled")

    def __init__(
        self, path: str | os.PathLike[str], num_threads: int | None = None, optimization_level: str = "all"
    ) -> None:
        super().__init__()
        if not os.path.isfile(os.fspath(path)):
            raise FileNotFoundError(f"path={os.fspath(path)!r} is not a file; expected an exported .onnx graph.")
        if num_threads is not None and (isinstance(num_threads, bool) or not isinstance(num_threads, int)):
            raise TypeError(
                f"num_threads must be an int >= 1 or None, got {type(num_threads).__name__} {num_threads!r}."
            )
        if num_threads is not None and num_threads < 1:
            raise ValueError(f"num_threads must be an int >= 1 or None (torch's thread count), got {num_threads}.")
        if optimization_level not in self._LEVELS:
            raise ValueError(f"optimization_level must be one of {self._LEVELS}, got {optimization_level!r}.")
        self.path = os.fspath(path)
        self.num_threads = int(num_threads) if num_threads is not None else max(1, torch.get_num_threads())
        self.optimization_level = optimization_level
        self.session: Any = self._open()
        inputs = self.session.get_inputs()
        if len(inputs) != 1:
            raise ValueError(f"the graph {self.path!r} must have exactly one input, got {[i.name for i in inputs]}.")
        if inputs[0].type not in _INPUT_DTYPES:
            raise ValueError(f"the graph {self.path!r} must take a floating-point input, got {inputs[0].type}.")
        self.input_name: str = inputs[0].name
        self.input_rank = len(inputs[0].shape)
        self._input_dtype = _INPUT_DTYPES[inputs[0].type]
        self.output_names: list[str] = [o.name for o in self.session.get_outputs()]
        channels = inputs[0].shape[1] if self.input_rank > 1 else None
        self.in_channels: int | None = channels if isinstance(channels, int) else None

    def _open(self) -> Any:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = self.num_threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = {
            "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
            "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
            "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
            "disabled": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        }[self.optimization_level]
        return ort.InferenceSession(self.path, options, providers=["CPUExecutionProvider"])

    def __getstate__(self) -> dict[str, Any]:
        """Pickle (and ``copy.deepcopy``) without the session, which is opened again on load."""
        state = self.__dict__.copy()
        state["session"] = None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        self.session = self._open()

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        """The graph's output(s) for a batch ``x``, on ``x``'s device.

        Raises:
            TypeError: ``x`` is not a tensor.
            ValueError: ``x`` has another number of dimensions than the graph's input.
        """
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}.")
        if x.ndim != self.input_rank:
            raise ValueError(
                f"x must have {self.input_rank} dimensions (the input of {self.path!r}), got shape {tuple(x.shape)}."
            )
        empty = x.shape[0] == 0
        source = x.new_zeros((1, *x.shape[1:])) if empty else x
        array = np.ascontiguousarray(source.detach().cpu().numpy(), dtype=self._input_dtype)
        outputs = self.session.run(self.output_names, {self.input_name: array})
        tensors = tuple(torch.from_numpy(o)[:0] if empty else torch.from_numpy(o) for o in outputs)
        tensors = tuple(t.to(x.device) for t in tensors)
        return tensors[0] if len(tensors) == 1 else tensors

    def extra_repr(self) -> str:
        return f"path={self.path!r}, num_threads={self.num_threads}"
