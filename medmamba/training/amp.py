"""Mixed precision for the training recipe: autocast dtype per device, grad scaler.

The paper trains in mixed precision. Here: bfloat16 autocast on the CPU, float16 (with a
``GradScaler``) or bfloat16 on CUDA. Losses are always computed in float32 on the cast-back
logits, and the selective scan runs in float32 inside the network, which avoids the NaN losses
other Mamba models report under AMP.
"""

from __future__ import annotations

import contextlib
import logging

import torch

__all__ = ["resolve_amp_dtype", "autocast", "create_grad_scaler"]

logger = logging.getLogger(__name__)

_NAMES = {
    "bf16": torch.bfloat16,
    "bfloat16": torch.bfloat16,
    "fp16": torch.float16,
    "float16": torch.float16,
    "half": torch.float16,
}


def resolve_amp_dtype(device: torch.device | str, dtype: str | torch.dtype | None = None) -> torch.dtype:
    """The autocast dtype to use on ``device``.

    Args:
        device: the training device.
        dtype: ``"bf16"``/``"bfloat16"``, ``"fp16"``/``"float16"``, a ``torch.dtype`` or ``None``
            (default: float16 on CUDA, bfloat16 elsewhere). float16 is not used on the CPU: it is
            replaced by bfloat16 with a warning.

    Raises:
        ValueError: for an unknown dtype name.
    """
    device_type = torch.device(device).type
    if dtype is None:
        return torch.float16 if device_type == "cuda" else torch.bfloat16
    if isinstance(dtype, str):
        if dtype.lower() not in _NAMES:
            raise ValueError(f"amp dtype must be one of {sorted(_NAMES)} or a torch.dtype, got {dtype!r}.")
        dtype = _NAMES[dtype.lower()]
    if dtype not in (torch.float16, torch.bfloat16):
        raise ValueError(f"amp dtype must be float16 or bfloat16, got {dtype}.")
    if dtype == torch.float16 and device_type != "cuda":
        logger.warning("float16 autocast requested on %s; using bfloat16 instead.", device_type)
        return torch.bfloat16
    return dtype


def autocast(
    device: torch.device | str, enabled: bool = True, dtype: str | torch.dtype | None = None
) -> contextlib.AbstractContextManager:
    """``torch.autocast`` for ``device`` with :func:`resolve_amp_dtype`, or a no-op when disabled."""
    if not enabled:
        return contextlib.nullcontext()
    device_type = torch.device(device).type
    return torch.autocast(device_type=device_type, dtype=resolve_amp_dtype(device, dtype))


def create_grad_scaler(device: torch.device | str, dtype: torch.dtype) -> torch.amp.GradScaler | None:
    """A ``GradScaler`` for float16 on CUDA; ``None`` when not needed (bfloat16, CPU)."""
    device_type = torch.device(device).type
    if dtype == torch.float16 and device_type == "cuda":
        return torch.amp.GradScaler("cuda")
    return None
