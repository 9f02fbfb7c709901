"""MR intensity normalisation: percentile clipping and foreground z-score.

MR intensities have no absolute scale, so each image is normalised on its own: the intensities are
clipped to percentiles computed over the foreground, then shifted and scaled to zero mean and unit
standard deviation over the foreground. The foreground is the set of voxels above
``foreground_fraction`` times the 99th percentile (or a given absolute threshold), per channel.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from typing import Any

import torch
from monai.config import KeysCollection
from monai.config.type_definitions import NdarrayOrTensor
from monai.transforms import MapTransform, Transform
from monai.utils import convert_to_tensor

__all__ = ["MRNormalize", "MRNormalized", "foreground_mask"]


def foreground_mask(channel: torch.Tensor, foreground_fraction: float = 0.1, threshold: float | None = None) -> torch.Tensor:
    """Foreground voxels of one channel.

    Args:
        channel: Intensities of one channel.
        foreground_fraction: Fraction of the 99th percentile above which a voxel is foreground.
        threshold: Absolute threshold (overrides ``foreground_fraction``).

    Returns:
        Boolean mask; all voxels when nothing exceeds the threshold.
    """
    x = channel.float()
    if threshold is None:
        flat = x.flatten()
        if flat.numel() > 2_000_000:
            flat = flat[:: flat.numel() // 1_000_000 + 1]
        threshold = float(torch.quantile(flat, 0.99)) * foreground_fraction
    mask = x > threshold
    return mask if bool(mask.any()) else torch.ones_like(mask)


class MRNormalize(Transform):
    """Clip to foreground percentiles, then z-score over the foreground, per channel.

    Args:
        lower: Lower clipping percentile (0-100) over the foreground; ``None`` to skip clipping.
        upper: Upper clipping percentile over the foreground; ``None`` to skip clipping.
        foreground_fraction: Foreground is above this fraction of the 99th percentile.
        threshold: Absolute foreground threshold (overrides ``foreground_fraction``).
        zscore: Apply the z-score (otherwise only clip).
        background_value: Value written outside the foreground after normalising (``None`` keeps
            the normalised values there).
    """

    def __init__(
        self,
        lower: float | None = 0.5,
        upper: float | None = 99.5,
        foreground_fraction: float = 0.1,
        threshold: float | None = None,
        zscore: bool = True,
        background_value: float | None = None,
    ) -> None:
        for name, val in (("lower", lower), ("upper", upper)):
            if val is not None and not 0.0 <= val <= 100.0:
                raise ValueError(f"{name} must be a percentile in [0, 100], got {val!r}")
        if lower is not None and upper is not None and lower >= upper:
            raise ValueError(f"lower ({lower}) must be < upper ({upper})")
        if not 0.0 <= foreground_fraction < 1.0:
            raise ValueError(f"foreground_fraction must be in [0, 1), got {foreground_fraction!r}")
        self.lower, self.upper = lower, upper
        self.foreground_fraction = foreground_fraction
        self.threshold = threshold
        self.zscore = zscore
        self.background_value = background_value

    def __call__(self, img: NdarrayOrTensor) -> torch.Tensor:
        """Normalise ``img`` (channel-first)."""
        t = convert_to_tensor(img, track_meta=True, dtype=torch.float32)
        out = t.clone()
        for c in range(t.shape[0]):
            x = t[c].as_tensor() if hasattr(t[c], "as_tensor") else t[c]
            fg = foreground_mask(x, self.foreground_fraction, self.threshold)
            vals = x[fg]
            if vals.numel() > 2_000_000:
                vals = vals[:: vals.numel() // 1_000_000 + 1]
            y = x.clone()
            if self.lower is not None or self.upper is not None:
                lo = float(torch.quantile(vals, self.lower / 100.0)) if self.lower is not None else None
                hi = float(torch.quantile(vals, self.upper / 100.0)) if self.upper is not None else None
                y = torch.clamp(y, min=lo, max=hi)
            if self.zscore:
                v = y[fg]
                mean, std = float(v.mean()), float(v.std()) if v.numel() > 1 else 1.0
                y = (y - mean) / (std if std > 1e-8 else 1.0)
            if self.background_value is not None:
                y[~fg] = self.background_value
            out[c] = y
        return out


class MRNormalized(MapTransform):
    """Dictionary version of :class:`MRNormalize` (same arguments after ``keys``)."""

    def __init__(self, keys: KeysCollection, allow_missing_keys: bool = False, **kwargs: Any) -> None:
        super().__init__(keys, allow_missing_keys)
        self.normalizer = MRNormalize(**kwargs)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        """Normalise each image under ``keys``."""
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.normalizer(d[key])
        return d
