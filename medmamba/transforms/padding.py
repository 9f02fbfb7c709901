"""Padding spatial sizes to a multiple of the network stride (MobileMamba downsamples by 64).

Thin wrappers of MONAI's ``DivisiblePad`` / ``DivisiblePadd`` with ``k=64`` by default; being MONAI
transforms, they are recorded in ``applied_operations`` and undone by ``Invertd``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from monai.config import KeysCollection
from monai.transforms import DivisiblePad, DivisiblePadd

__all__ = ["NETWORK_STRIDE", "PadToMultiple", "PadToMultipled"]

#: Total downsampling factor of MobileMamba (stem 4 x three stages of 2 x ... = 64).
NETWORK_STRIDE = 64


def _check_k(k: int | Sequence[int]) -> None:
    ks = [k] if isinstance(k, int) else list(k)
    if not ks or any(not isinstance(v, int) or v < 1 for v in ks):
        raise ValueError(f"k must be a positive int or a sequence of them, got {k!r}")


class PadToMultiple(DivisiblePad):
    """Pad every spatial dimension up to a multiple of ``k`` (default :data:`NETWORK_STRIDE`).

    Args:
        k: The multiple, one for all dimensions or one per dimension.
        method: ``"symmetric"`` (default) or ``"end"``.
        mode: Padding mode (``"constant"`` pads with ``value``, default 0).
        **kwargs: Passed to ``DivisiblePad`` (e.g. ``value``).
    """

    def __init__(self, k: int | Sequence[int] = NETWORK_STRIDE, method: str = "symmetric", mode: str = "constant",
                 **kwargs: Any) -> None:
        _check_k(k)
        super().__init__(k=k, method=method, mode=mode, **kwargs)


class PadToMultipled(DivisiblePadd):
    """Dictionary version of :class:`PadToMultiple`.

    Args:
        keys: Keys to pad (images and labels alike; labels pad with 0).
        k: The multiple (default :data:`NETWORK_STRIDE`).
        method: ``"symmetric"`` or ``"end"``.
        mode: Padding mode(s).
        allow_missing_keys: Skip absent keys.
        **kwargs: Passed to ``DivisiblePadd``.
    """

    def __init__(self, keys: KeysCollection, k: int | Sequence[int] = NETWORK_STRIDE, method: str = "symmetric",
                 mode: str = "constant", allow_missing_keys: bool = False, **kwargs: Any) -> None:
        _check_k(k)
        super().__init__(keys, k=k, method=method, mode=mode, allow_missing_keys=allow_missing_keys, **kwargs)
