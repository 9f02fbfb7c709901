"""Mixed precision for the training recipe: which precision, decided by the hardware; autocast.

:func:`resolve_precision` turns a config's ``amp`` setting into a :class:`Precision`, at run time,
from the device the run has:

- ``"auto"``: on CUDA bfloat16 where the GPU supports it, else float16 with a ``GradScaler``; on the
  CPU bfloat16 only where the CPU computes it natively (AMX / AVX512-BF16, see
  :func:`medmamba.resources.cpu_native_bf16`), else float32. Emulated bfloat16 is slow: a MONAI
  UNet training step took 12x longer than in float32 on a Zen 3 EPYC (AVX2);
- ``True`` / ``"bf16"`` / ``"fp16"``: forced mixed precision (``True``: bfloat16 on the CPU, the
  ``"auto"`` choice on CUDA). Forcing bfloat16 on a CPU without native support logs a warning
  naming that slowdown; float16 is not used on the CPU (bfloat16 instead, with a warning);
- ``False`` / ``"fp32"``: no autocast.

Losses are always computed in float32 on the cast-back logits, and the selective scan runs in
float32 inside the network, which avoids the NaN losses other Mamba models report under AMP.
:class:`Autocast` runs a network (e.g. a frozen distillation teacher) under its own precision.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from medmamba.resources import cpu_capability, cpu_native_bf16

__all__ = [
    "AMP_CHOICES",
    "Autocast",
    "Precision",
    "autocast",
    "check_amp",
    "create_grad_scaler",
    "resolve_amp_dtype",
    "resolve_precision",
]

logger = logging.getLogger(__name__)

_NAMES = {
    "bf16": torch.bfloat16,
    "bfloat16": torch.bfloat16,
    "fp16": torch.float16,
    "float16": torch.float16,
    "half": torch.float16,
}
_FP32_NAMES = ("fp32", "float32", "none", "off", "false")
_SHORT = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}

#: The values of a config's ``amp`` (strings in any case; also a ``torch.dtype`` or a :class:`Precision`).
AMP_CHOICES = ("auto", True, False, "bf16", "fp16", "fp32")

#: How much slower a training step ran in emulated bfloat16 than in float32 (issue 17: MONAI UNet
#: (32..512) on 4x3x128x128, 2-core AMD EPYC Zen 3, AVX2 only: 4.4 s against 0.36 s).
EMULATED_BF16_SLOWDOWN = 12


@dataclass(frozen=True)
class Precision:
    """The precision a network runs in on one device type, and why.

    Attributes:
        device_type: ``"cpu"``, ``"cuda"``, ...
        dtype: the autocast dtype; ``torch.float32`` means no autocast.
        requested: the ``amp`` setting it was resolved from, e.g. ``"auto"``.
        reason: why, for the log (e.g. ``"auto: CPU without native bf16 (ATen CPU capability AVX2)"``).
    """

    device_type: str
    dtype: torch.dtype
    requested: str = "auto"
    reason: str = ""

    @property
    def enabled(self) -> bool:
        """Whether autocast is on (bfloat16 or float16)."""
        return self.dtype != torch.float32

    @property
    def name(self) -> str:
        """``"bf16"``, ``"fp16"`` or ``"fp32"``."""
        return _SHORT.get(self.dtype, str(self.dtype))

    @property
    def grad_scaler(self) -> bool:
        """Whether training needs a ``GradScaler`` (float16 on CUDA)."""
        return self.dtype == torch.float16 and self.device_type == "cuda"

    @property
    def monai_amp(self) -> bool:
        """The value for MONAI engines' ``amp`` argument. Their autocast is ``torch.autocast("cuda")``
        and their trainer makes a CUDA ``GradScaler``, so it is on only for CUDA autocast."""
        return self.enabled and self.device_type == "cuda"

    @property
    def monai_amp_kwargs(self) -> dict[str, Any]:
        """The value for MONAI engines' ``amp_kwargs`` argument (the autocast dtype)."""
        return {"dtype": self.dtype} if self.enabled else {}

    def autocast(self) -> contextlib.AbstractContextManager:
        """``torch.autocast`` in this precision (disabled for float32)."""
        return torch.autocast(device_type=self.device_type, dtype=self.dtype, enabled=self.enabled)

    def __str__(self) -> str:
        return f"{self.name} ({self.reason})" if self.reason else self.name


def _cuda_half(device: torch.device) -> tuple[torch.dtype, str]:
    """The half type of a CUDA device: bfloat16 where supported, else float16 (with a GradScaler)."""
    if torch.cuda.is_bf16_supported():
        return torch.bfloat16, "GPU supports bf16"
    return torch.float16, "GPU without bf16: fp16 with a GradScaler"


def _bf16_on_cpu(requested: str) -> tuple[torch.dtype, str]:
    native, why = cpu_native_bf16()
    if native:
        return torch.bfloat16, f"forced, CPU has native bf16 ({why})"
    logger.warning(
        "amp=%s forces bfloat16 autocast on a CPU without native bfloat16 (%s; ATen capability %s): bfloat16 is "
        "emulated there, expect training steps about %dx slower than float32 (measured: MONAI UNet step on a "
        "Zen 3 EPYC, 4.4 s in bf16 against 0.36 s in fp32). Use amp='auto' (float32 here) unless you need bf16.",
        requested, why, cpu_capability(), EMULATED_BF16_SLOWDOWN,
    )
    return torch.bfloat16, f"forced, CPU without native bf16: emulated ({why})"


def check_amp(amp: Any, name: str = "amp") -> None:
    """Check that ``amp`` is a setting :func:`resolve_precision` accepts, before a device is known.

    Raises:
        TypeError: ``amp`` of another type.
        ValueError: an unknown string or dtype.
    """
    expected = f"one of {AMP_CHOICES} (strings in any case), a torch.dtype or a Precision"
    if isinstance(amp, str):
        if amp.strip().lower() not in ("auto", "true", *_FP32_NAMES, *_NAMES):
            raise ValueError(f"{name} must be {expected}, got {amp!r}.")
    elif isinstance(amp, torch.dtype):
        if amp not in _SHORT:
            raise ValueError(f"{name} dtype must be torch.float32, torch.bfloat16 or torch.float16, got {amp}.")
    elif not isinstance(amp, (bool, Precision)):
        raise TypeError(f"{name} must be {expected}, got {type(amp).__name__} {amp!r}.")


def resolve_precision(
    amp: bool | str | torch.dtype | Precision,
    device: torch.device | str,
    device_types: Collection[str] | None = None,
    cpu_bf16: bool = True,
) -> Precision:
    """The precision for a config's ``amp`` setting on ``device``, decided at run time and logged.

    Args:
        amp: ``"auto"`` (the hardware decides), ``True`` (mixed precision forced: bfloat16 on the CPU,
            the ``"auto"`` half type on CUDA), ``False`` / ``"fp32"`` (no autocast), ``"bf16"`` or
            ``"fp16"`` (forced; float16 on the CPU becomes bfloat16), a ``torch.dtype``, or a
            :class:`Precision` (returned as it is when its device type matches ``device``).
        device: the device the network runs on.
        device_types: the device types where the consumer can autocast at all (``None``: any);
            elsewhere float32 whatever ``amp`` says. MONAI's evaluators autocast on CUDA only, so
            an evaluation config passes ``("cuda",)`` and its log states the float32 it runs in.
        cpu_bf16: whether bfloat16 pays off on the CPU for this network. ``False`` makes ``"auto"``
            keep float32 on the CPU even where bfloat16 is native (CUDA and forced settings are
            unaffected): the MobileMamba students, whose training step bf16 does not speed up there
            (same time with AMX; 1.3x slower with AVX512-BF16 on a Zen 4 EPYC, one thread), while a
            UNet's step is 1.5-1.7x faster.

    Returns:
        The :class:`Precision`; its ``reason`` says why (logged at INFO). On CUDA ``"auto"`` picks
        bfloat16 where ``torch.cuda.is_bf16_supported()``, else float16; on the CPU bfloat16 only
        where :func:`medmamba.resources.cpu_native_bf16`, else float32; on other devices float32.

    Raises:
        TypeError: ``amp`` of another type.
        ValueError: an unknown ``amp`` string or dtype, or a :class:`Precision` of another device type.
    """
    device_type = torch.device(device).type
    check_amp(amp)
    if isinstance(amp, Precision):
        if amp.device_type != device_type:
            raise ValueError(f"amp is a Precision for {amp.device_type!r}, but the device is {device_type!r}.")
        return amp
    if device_types is not None and (isinstance(device_types, str) or not all(isinstance(t, str) for t in device_types)):
        raise TypeError(f"device_types must be a collection of device type names or None, got {device_types!r}.")
    if device_types is not None and device_type not in device_types:
        requested = str(amp).lower() if isinstance(amp, (bool, str)) else str(amp)
        why = f"amp off: autocast here on {', '.join(device_types) or 'no device'} only"
        precision = Precision(device_type, torch.float32, requested, why)
        logger.info("precision on %s: %s (amp=%s)", device_type, precision, requested)
        return precision
    if isinstance(amp, bool):
        requested = "true" if amp else "false"
        dtype: torch.dtype | None = None if amp else torch.float32
    elif isinstance(amp, str):
        requested = amp.strip().lower()
        if requested == "true":
            return resolve_precision(True, device)
        if requested == "auto":
            dtype = None
        elif requested in _FP32_NAMES:
            dtype = torch.float32
        else:
            dtype = _NAMES[requested]
    else:  # a torch.dtype (check_amp let nothing else through)
        requested, dtype = _SHORT[amp], amp

    if dtype == torch.float32:
        precision = Precision(device_type, torch.float32, requested, "amp off")
    elif device_type == "cuda":
        if dtype is None:
            half, why = _cuda_half(torch.device(device))
            precision = Precision(device_type, half, requested, f"{requested}: {why}")
        else:
            if dtype == torch.bfloat16 and not torch.cuda.is_bf16_supported():
                logger.warning("amp=%s forces bfloat16 on a GPU that does not support it natively.", requested)
            precision = Precision(device_type, dtype, requested, "forced")
    elif device_type == "cpu":
        if requested == "auto":
            native, why = cpu_native_bf16()
            if native and not cpu_bf16:
                why = f"auto: CPU has native bf16 ({why}), but bf16 does not speed this network up there (cpu_bf16=False)"
                precision = Precision(device_type, torch.float32, requested, why)
            elif native:
                precision = Precision(device_type, torch.bfloat16, requested, f"auto: CPU has native bf16 ({why})")
            else:
                precision = Precision(device_type, torch.float32, requested, f"auto: CPU without native bf16 ({why})")
        else:
            if dtype == torch.float16:
                logger.warning("amp=%s: float16 autocast is not used on the CPU; bfloat16 instead.", requested)
            half, why = _bf16_on_cpu(requested)
            precision = Precision(device_type, half, requested, why)
    elif requested == "auto":
        precision = Precision(device_type, torch.float32, requested, f"auto: no mixed precision on {device_type}")
    else:
        precision = Precision(device_type, dtype or torch.bfloat16, requested, "forced")
    logger.info("precision on %s: %s (amp=%s)", device_type, precision, requested)
    return precision


def resolve_amp_dtype(device: torch.device | str, dtype: str | torch.dtype | None = None) -> torch.dtype:
    """The autocast dtype to use on ``device`` when autocast is on.

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


class Autocast(nn.Module):
    """Run a network in its own precision and return float32, e.g. a frozen distillation teacher.

    The precision is resolved by :func:`resolve_precision` from ``amp`` on the device of the first
    input (or given resolved, as a :class:`Precision`), so ``amp="auto"`` runs a teacher in bfloat16
    only where the hardware computes it natively; its logits only serve as soft targets. Its
    autocast region nests inside the caller's, so the teacher keeps its precision whatever the
    student's. ``load_state_dict``/``state_dict`` are the wrapped network's own (no prefix), so
    checkpoints load as into the bare network.

    Args:
        network: the network to wrap.
        amp: any :func:`resolve_precision` setting (``"auto"``, ``True``, ``False``, ``"bf16"``,
            ``"fp16"``, ``"fp32"``) or a :class:`Precision`.
        dtype: deprecated spelling of a forced choice (``"bf16"`` / ``"fp16"``), used when ``amp``
            is ``True`` or ``"auto"``; kept so that older configs (``dtype: "bf16"``) load and run
            as they did.
        enabled: deprecated; ``False`` is ``amp=False``.
    """

    def __init__(
        self,
        network: nn.Module,
        amp: bool | str | torch.dtype | Precision = "auto",
        dtype: str | None = None,
        enabled: bool = True,
    ) -> None:
        super().__init__()
        if not isinstance(network, nn.Module):
            raise TypeError(f"network must be an nn.Module, got {type(network).__name__}.")
        if dtype is not None and str(dtype).lower() not in _NAMES:
            raise ValueError(f"dtype must be one of {sorted(_NAMES)} or None, got {dtype!r}.")
        if not enabled:
            amp = False
        elif dtype is not None and (amp is True or amp == "auto"):
            amp = str(dtype).lower()  # the old Autocast(network, dtype="bf16"): bf16 forced
        check_amp(amp)
        self.network = network
        self.amp = amp
        self._precision: dict[str, Precision] = {}

    def precision(self, device: torch.device | str) -> Precision:
        """The resolved precision on ``device`` (resolved once per device type)."""
        device_type = torch.device(device).type
        if device_type not in self._precision:
            self._precision[device_type] = resolve_precision(self.amp, device)
        return self._precision[device_type]

    def state_dict(self, *args: Any, **kwargs: Any) -> Any:
        """The wrapped network's state dict."""
        return self.network.state_dict(*args, **kwargs)

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False) -> Any:
        """Load into the wrapped network."""
        return self.network.load_state_dict(state_dict, strict=strict, assign=assign)

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        with self.precision(x.device).autocast():
            out = self.network(x, *args, **kwargs)
        if isinstance(out, torch.Tensor):
            return out.float()
        if isinstance(out, (list, tuple)):
            return type(out)(o.float() if isinstance(o, torch.Tensor) else o for o in out)
        return out
