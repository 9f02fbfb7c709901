"""CT window presets scaled to [0, 1], alone or several stacked as channels.

A window ``(level, width)`` maps HU ``level - width/2 .. level + width/2`` linearly to 0..1 and
clips outside (MONAI's ``ScaleIntensityRange``). Presets follow common radiology practice.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any, Union

import torch
from monai.config import KeysCollection
from monai.config.type_definitions import NdarrayOrTensor
from monai.data import MetaTensor
from monai.transforms import MapTransform, ScaleIntensityRange, Transform
from monai.utils import convert_to_tensor

__all__ = ["CT_WINDOWS", "CTWindow", "CTWindowd", "WindowSpec", "resolve_window"]

#: Window presets as (level, width) in HU.
CT_WINDOWS: dict[str, tuple[float, float]] = {
    "brain": (40.0, 80.0),
    "subdural": (80.0, 200.0),
    "stroke": (40.0, 40.0),
    "lung": (-600.0, 1500.0),
    "mediastinum": (50.0, 350.0),
    "abdomen": (50.0, 400.0),
    "liver": (30.0, 150.0),
    "bone": (400.0, 1800.0),
}

WindowSpec = Union[str, tuple[float, float]]


def resolve_window(window: WindowSpec) -> tuple[float, float]:
    """Turn a preset name or a ``(level, width)`` pair into ``(level, width)``.

    Raises:
        ValueError: For an unknown preset or a non-positive width.
        TypeError: For anything else.
    """
    if isinstance(window, str):
        key = window.lower()
        if key not in CT_WINDOWS:
            raise ValueError(f"window={window!r} is not a preset; expected one of {sorted(CT_WINDOWS)} or (level, width)")
        return CT_WINDOWS[key]
    if isinstance(window, Sequence) and len(window) == 2:
        level, width = float(window[0]), float(window[1])
        if width <= 0:
            raise ValueError(f"window width must be > 0, got window={tuple(window)!r}")
        return level, width
    raise TypeError(f"window must be a preset name or a (level, width) pair, got {window!r}")


class CTWindow(Transform):
    """Apply one or more CT windows; several windows are stacked as channels.

    For an input with ``C`` channels and ``W`` windows the output has ``C * W`` channels, ordered
    window-major (all channels through the first window, then the second, ...).

    Args:
        windows: A preset name, a ``(level, width)`` pair, or a sequence of them.
    """

    def __init__(self, windows: WindowSpec | Sequence[WindowSpec] = "brain") -> None:
        if isinstance(windows, str) or (
            isinstance(windows, Sequence) and len(windows) == 2 and all(isinstance(v, (int, float)) for v in windows)
        ):
            windows = [windows]  # type: ignore[list-item]
        self.windows = [resolve_window(w) for w in windows]  # type: ignore[union-attr]
        if not self.windows:
            raise ValueError("windows must name at least one window")
        self._scalers = [
            ScaleIntensityRange(a_min=lv - wd / 2.0, a_max=lv + wd / 2.0, b_min=0.0, b_max=1.0, clip=True)
            for lv, wd in self.windows
        ]

    def __call__(self, img: NdarrayOrTensor) -> torch.Tensor:
        """Window ``img`` (channel-first, HU)."""
        t = convert_to_tensor(img, track_meta=True)
        outs = [convert_to_tensor(s(t), track_meta=True) for s in self._scalers]
        if len(outs) == 1:
            return outs[0]
        out = torch.cat([o.as_tensor() if isinstance(o, MetaTensor) else o for o in outs], dim=0)
        if isinstance(t, MetaTensor):
            out = MetaTensor(out, meta=t.meta, applied_operations=t.applied_operations)
        return out


class CTWindowd(MapTransform):
    """Dictionary version of :class:`CTWindow`.

    Args:
        keys: Image keys.
        windows: Preset name(s) or ``(level, width)`` pair(s); several are stacked as channels.
        allow_missing_keys: Skip absent keys.
    """

    def __init__(
        self, keys: KeysCollection, windows: WindowSpec | Sequence[WindowSpec] = "brain", allow_missing_keys: bool = False
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.windower = CTWindow(windows)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        """Window each image under ``keys``."""
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.windower(d[key])
        return d
