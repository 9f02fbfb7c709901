"""``torch.export`` of the project's networks with a dynamic batch, height and width.

One exported program serves every batch size and every image size the network accepts, within the
ranges below; its outputs equal the eager network's (float32 rounding). What makes this possible:

- the selective scan runs in its chunked form while exporting
  (:func:`medmamba.networks.selective_scan_chunked`), whose graph does not depend on the sequence
  length (the fast eager scan takes ``log2 L`` steps chosen in Python);
- the wavelet branch pads its map the same way for odd and even sizes while compiling.

``torch.export`` specialises a graph on sizes that are 0 or 1 and on pads that may be zero. So the
height and width are exported as multiples of the network's own padding multiple (32 for
:class:`~medmamba.networks.MobileMamba`, the ``pad_multiple`` (64) of
:class:`~medmamba.networks.MobileMambaSeg`, which pads its input to it), at least 128 pixels, so
that no stage's map is one pixel wide. Inputs of other sizes are padded by the caller (the bundles'
``PadToMultipled`` does).
"""

from __future__ import annotations

import os
import shutil

import torch
from torch import nn

__all__ = ["compile_ahead_of_time", "export_dynamic", "export_onnx_dynamic", "load_compiled", "spatial_multiple"]

#: the smallest height and width exported (the deepest stage, stride 64, then has 2 x 2 pixels)
MIN_SIZE = 128


def spatial_multiple(network: nn.Module) -> int:
    """The multiple that a network's input height and width must have in an exported program.

    Args:
        network: A MobileMamba, MobileMambaSeg, LesionMapClassifier, ensemble or a wrapper of one.

    Returns:
        The largest ``pad_multiple`` of a :class:`~medmamba.networks.MobileMambaSeg` inside, else 32
        (the MobileMamba encoder's overall stride).
    """
    from medmamba.networks.nets.segmentation import MobileMambaSeg

    multiples = [int(m.pad_multiple) for m in network.modules() if isinstance(m, MobileMambaSeg)]
    return max([32, *multiples])


def export_dynamic(
    network: nn.Module,
    example: torch.Tensor,
    max_batch: int = 1024,
    max_size: int = 4096,
) -> torch.export.ExportedProgram:
    """``torch.export.export`` with a dynamic batch, height and width.

    Args:
        network: The network in eval mode (fused or not).
        example: An example input ``(B, C, H, W)``; ``B >= 2`` and ``H``, ``W`` multiples of
            :func:`spatial_multiple` of at least 128 (none of them 1, which ``torch.export`` would
            fix).
        max_batch: Largest batch the program accepts.
        max_size: Largest height and width it accepts.

    Returns:
        The exported program; ``program.module()(x)`` runs it for any batch ``1..max_batch`` and any
        height and width that are multiples of the spatial multiple between 128 and ``max_size``.

    Raises:
        ValueError: If the network is in training mode, or the example's shape is outside these ranges.
    """
    multiple = _check_export(network, example, max_batch, max_size)
    with torch.no_grad():
        return torch.export.export(network, (example,), dynamic_shapes=(_dims(multiple, max_batch, max_size),))


def _check_export(network: nn.Module, example: torch.Tensor, max_batch: int, max_size: int) -> int:
    """Checks of :func:`export_dynamic`'s arguments; returns the spatial multiple."""
    if network.training:
        raise ValueError("network is in training mode; call network.eval() before exporting.")
    multiple = spatial_multiple(network)
    if example.dim() != 4:
        raise ValueError(f"example must be a (batch, channels, height, width) tensor, got shape {tuple(example.shape)}.")
    batch, _, height, width = (int(s) for s in example.shape)
    if not 2 <= batch <= max_batch:
        raise ValueError(f"example batch must be between 2 and max_batch={max_batch} (a batch of 1 would be "
                         f"fixed in the graph), got {batch}.")
    for name, size in (("height", height), ("width", width)):
        if size % multiple or not MIN_SIZE <= size <= max_size:
            raise ValueError(f"example {name} must be a multiple of {multiple} between {MIN_SIZE} and "
                             f"max_size={max_size}, got {size}.")
    return multiple


def _dims(multiple: int, max_batch: int, max_size: int) -> dict[int, object]:
    b = torch.export.Dim("batch", min=1, max=int(max_batch))
    h = torch.export.Dim("height_blocks", min=MIN_SIZE // multiple, max=int(max_size) // multiple)
    w = torch.export.Dim("width_blocks", min=MIN_SIZE // multiple, max=int(max_size) // multiple)
    return {0: b, 2: multiple * h, 3: multiple * w}


def export_onnx_dynamic(
    network: nn.Module,
    example: torch.Tensor,
    path: str | os.PathLike[str],
    max_batch: int = 1024,
    max_size: int = 4096,
    opset_version: int = 18,
) -> str:
    """ONNX with PyTorch's default (``torch.export``-based) exporter, dynamic batch, height and width.

    Written by MONAI's :func:`monai.networks.utils.convert_to_onnx` (``dynamo=True`` with the
    dynamic shapes of :func:`export_dynamic`).

    The graph runs in ONNX Runtime at any batch and any size :func:`export_dynamic` accepts (the
    selective scan is the chunked one, not a loop unrolled for the example's length). Input ``x``,
    output ``y``. Needs ``onnx`` and ``onnxscript`` (the ``export`` extra).

    Args:
        network: The network in eval mode (fused or not).
        example: Example input, as for :func:`export_dynamic`.
        path: The ``.onnx`` file to write.
        max_batch: Largest batch.
        max_size: Largest height and width.
        opset_version: ONNX opset.

    Returns:
        The path written.

    Raises:
        ValueError: As :func:`export_dynamic`.
    """
    from monai.networks.utils import convert_to_onnx

    multiple = _check_export(network, example, max_batch, max_size)
    # MONAI's converter runs the export; its own check (verify=True) is not used: it runs only the
    # example batch and reseeds the global random generators (set_determinism). Callers check the
    # graph at other batches and sizes (medmamba.training.verify_export).
    convert_to_onnx(
        network, (example,), input_names=["x"], output_names=["y"], opset_version=int(opset_version),
        filename=os.fspath(path), verify=False, dynamo=True,
        dynamic_shapes=(_dims(multiple, max_batch, max_size),),
    )
    return os.fspath(path)


def compile_ahead_of_time(
    network: nn.Module,
    example: torch.Tensor,
    path: str | os.PathLike[str],
    max_batch: int = 1024,
) -> str:
    """An ahead-of-time compiled CPU artefact (AOTInductor package, ``.pt2``) with a dynamic batch.

    The network is exported with ``torch.export`` (dynamic batch ``1..max_batch``, the example's
    height and width fixed) and compiled to native code by ``torch._inductor.aoti_compile_and_package``.
    Inductor's weight freezing is on. :func:`load_compiled` runs it without the project's Python
    model code (only ``torch``); on a 2-core CPU it ran 1.5-3x slower than the fused eager network
    (``docs/benchmarks.md``): a deployment artefact, not a speed-up. The
    height and width stay fixed: with a symbolic height and width, Inductor failed to lower a T2
    program (``LoweringException: ValueRangeError`` in torch 2.13); use
    :func:`export_onnx_dynamic` or :func:`export_dynamic` for any size. Compiling a MobileMamba-T2
    takes about two minutes on a 2-core CPU and needs a C++ compiler.

    Args:
        network: The network in eval mode (fused or not).
        example: An example input ``(B, C, H, W)`` with ``2 <= B <= max_batch``; ``H`` and ``W`` are
            the sizes the artefact accepts.
        path: The ``.pt2`` file to write.
        max_batch: Largest batch the artefact accepts.

    Returns:
        The path written.

    Raises:
        ValueError: If the network is in training mode or the example is not a 4D batch of 2 or more.
        RuntimeError: If no C++ compiler is found (``CXX`` or ``c++``/``g++``/``clang++`` on ``PATH``).
    """
    if network.training:
        raise ValueError("network is in training mode; call network.eval() before compiling.")
    if example.dim() != 4 or not 2 <= int(example.shape[0]) <= int(max_batch):
        raise ValueError(f"example must be a (batch, channels, height, width) tensor with 2 <= batch <= "
                         f"max_batch={max_batch} (a batch of 1 would be fixed), got shape {tuple(example.shape)}.")
    compilers = [os.environ.get("CXX", ""), "c++", "g++", "clang++"]
    if not any(c and shutil.which(c) for c in compilers):
        raise RuntimeError("compile_ahead_of_time needs a C++ compiler (set CXX or install g++ / clang++).")
    batch = torch.export.Dim("batch", min=1, max=int(max_batch))
    with torch.no_grad():
        program = torch.export.export(network, (example,), dynamic_shapes=({0: batch},))
    # freezing: weights become constants of the compiled code (prepacked for oneDNN); a scoped
    # config patch, no global setting is changed. Measured on T2@224, batch 8, 2-core EPYC: 760 -> 368 ms.
    with torch._inductor.config.patch(freezing=True):
        return os.fspath(torch._inductor.aoti_compile_and_package(program, package_path=os.fspath(path)))


def load_compiled(path: str | os.PathLike[str]) -> object:
    """Load an artefact of :func:`compile_ahead_of_time`; call the result like the network.

    Args:
        path: The ``.pt2`` file.

    Returns:
        A callable ``x -> y`` (``torch._inductor.aoti_load_package``) on the CPU.

    Raises:
        ValueError: If ``path`` is not a file.
    """
    if not os.path.isfile(os.fspath(path)):
        raise ValueError(f"path must be a .pt2 file written by compile_ahead_of_time, got {os.fspath(path)!r}.")
    return torch._inductor.aoti_load_package(os.fspath(path))
