"""MR intensity normalisation: percentile clipping and foreground z-score.

MR intensities have no absolute scale, so each image is normalised on its own: the intensities are
clipped to percentiles computed over the foreground, then shifted and scaled to zero mean and unit
standard deviation over the foreground. The foreground is the set of voxels above
``foreground_fraction`` times the 99th percentile (or a given absolute threshold), per channel.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.config.type_definitions import NdarrayOrTensor
from monai.transforms import MapTransform, Transform
from monai.utils import convert_to_tensor

__all__ = ["MRNormalize", "MRNormalized", "foreground_mask", "foreground_threshold", "quantiles"]


#: Above this many values, quantiles are taken over a regular subsample of about 1e6 of them.
_MAX_QUANTILE_VALUES = 2_000_000


def quantiles(values: torch.Tensor, q: Sequence[float]) -> list[float]:
    """Quantiles of ``values`` with linear interpolation, as ``torch.quantile`` defines them.

    On the CPU the order statistics are found by selection (``numpy.percentile``, introselect:
    linear time) instead of ``torch.quantile``'s full sort, several times faster on a brain volume
    (``benchmarks/bench_normalisation.py``, ``docs/benchmarks.md``); other devices use
    ``torch.quantile``. Above two million values
    a regular subsample of about one million is used (``torch.quantile`` has a size limit).

    Args:
        values: The values (any shape, flattened; float).
        q: Quantiles in [0, 1].

    Returns:
        One float per entry of ``q``.

    Raises:
        ValueError: ``values`` is empty or a ``q`` is outside [0, 1].
    """
    if values.numel() == 0:
        raise ValueError("values must not be empty to take quantiles.")
    if any(not 0.0 <= float(v) <= 1.0 for v in q):
        raise ValueError(f"q must be in [0, 1], got {list(q)!r}.")
    flat = values.detach().flatten()
    if flat.numel() > _MAX_QUANTILE_VALUES:
        flat = flat[:: flat.numel() // (_MAX_QUANTILE_VALUES // 2) + 1]
    if flat.device.type == "cpu":
        return _select_quantiles(flat.float().numpy(), q)
    return [float(v) for v in torch.quantile(flat.float(), torch.tensor(list(q), device=flat.device))]


def _select_quantiles(values: np.ndarray, q: Sequence[float]) -> list[float]:
    """Linear-interpolation quantiles of a flat float array by one ``numpy.partition`` (introselect).

    The two order statistics around each quantile's position ``q·(n−1)`` are selected in one call and
    interpolated as ``numpy.percentile`` does (about half its time: no copy to float64, one pass).
    """
    n = values.size
    pos = [float(v) * (n - 1) for v in q]
    low = [min(int(np.floor(p)), n - 1) for p in pos]
    kth = sorted({k for lo in low for k in (lo, min(lo + 1, n - 1))})
    part = np.partition(values, kth)
    out = []
    for p, lo in zip(pos, low):
        a, b = float(part[lo]), float(part[min(lo + 1, n - 1)])
        t = p - lo
        # numpy's lerp: exact at both ends, monotone in t
        out.append(b - (b - a) * (1.0 - t) if t >= 0.5 else a + (b - a) * t)
    return out


def foreground_threshold(channel: torch.Tensor, foreground_fraction: float = 0.1) -> float:
    """``foreground_fraction`` times the 99th percentile of ``channel``: the MR foreground threshold."""
    return quantiles(channel, [0.99])[0] * foreground_fraction


def _central_box(mask: torch.Tensor, fraction: float) -> torch.Tensor:
    """``mask`` restricted to the box spanning the middle ``fraction`` of its bounding box per axis."""
    idx = torch.nonzero(mask)
    lo, hi = idx.min(dim=0).values, idx.max(dim=0).values + 1
    box = torch.zeros_like(mask)
    sl = []
    for a in range(mask.ndim):
        centre, half = (int(lo[a]) + int(hi[a])) / 2.0, (int(hi[a]) - int(lo[a])) * fraction / 2.0
        start = int(np.floor(centre - half))
        sl.append(slice(start, max(start + 1, int(np.ceil(centre + half)))))
    box[tuple(sl)] = True
    inside = mask & box
    return inside if bool(inside.any()) else mask


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
        threshold = foreground_threshold(x, foreground_fraction)
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
        statistics_region: Where the clipping percentiles and z-score statistics are taken:
            ``"foreground"`` (every foreground voxel) or ``"centre"`` (the foreground voxels inside
            the central box spanning the middle ``centre_fraction`` of the foreground's bounding box
            along each axis: in a head, mostly brain, so that a whole head and the same brain
            skull-stripped get about the same statistics).
        centre_fraction: Size of that central box, as a fraction of the bounding box per axis.
    """

    def __init__(
        self,
        lower: float | None = 0.5,
        upper: float | None = 99.5,
        foreground_fraction: float = 0.1,
        threshold: float | None = None,
        zscore: bool = True,
        background_value: float | None = None,
        statistics_region: str = "foreground",
        centre_fraction: float = 0.5,
    ) -> None:
        if statistics_region not in ("foreground", "centre"):
            raise ValueError(f"statistics_region must be 'foreground' or 'centre', got {statistics_region!r}")
        if not 0.0 < float(centre_fraction) <= 1.0:
            raise ValueError(f"centre_fraction must be in (0, 1], got {centre_fraction!r}")
        self.statistics_region = statistics_region
        self.centre_fraction = float(centre_fraction)
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

    def _statistics(self, x: torch.Tensor, fg: torch.Tensor, region_given: bool = False) -> tuple[Any, Any, float, float]:
        region = _central_box(fg, self.centre_fraction) if self.statistics_region == "centre" and not region_given else fg
        # the foreground values, gathered once (numpy's boolean gather is several times faster on
        # the CPU than torch's); the z-score statistics are those of the clipped gathered values
        v = torch.from_numpy(x.numpy()[region.numpy()]) if x.device.type == "cpu" else x[region]
        lo = hi = None
        if self.lower is not None or self.upper is not None:
            found = iter(quantiles(v, [p / 100.0 for p in (self.lower, self.upper) if p is not None]))
            lo = next(found) if self.lower is not None else None
            hi = next(found) if self.upper is not None else None
            v = torch.clamp(v, min=lo, max=hi)
        mean, std = 0.0, 1.0
        if self.zscore:
            mean, std = float(v.mean()), float(v.std()) if v.numel() > 1 else 1.0
        return lo, hi, mean, std

    def statistics(self, channel: torch.Tensor, region: torch.Tensor | None = None) -> tuple[Any, Any, float, float]:
        """What one channel is normalised with: ``(lower clip, upper clip, mean, std)``.

        Args:
            channel: Intensities of one channel.
            region: Boolean mask of ``channel``'s shape: take the statistics over these voxels
                instead of the foreground (e.g. a brain mask); ``None``: the foreground (or its
                centre, per ``statistics_region``).

        Returns:
            The clip levels (``None`` where that side is not clipped) and the z-score's mean and
            standard deviation (0 and 1 without the z-score).

        Raises:
            ValueError: ``region`` has another shape than ``channel`` or selects no voxel.
        """
        x = channel.as_tensor() if hasattr(channel, "as_tensor") else torch.as_tensor(channel)
        x = x.float()
        if region is None:
            return self._statistics(x, foreground_mask(x, self.foreground_fraction, self.threshold))
        r = torch.as_tensor(region).to(device=x.device, dtype=torch.bool)
        if tuple(r.shape) != tuple(x.shape):
            raise ValueError(f"region must have the channel's shape {tuple(x.shape)}, got {tuple(r.shape)}.")
        if not bool(r.any()):
            raise ValueError("region selects no voxel; expected a mask with at least one voxel set.")
        return self._statistics(x, r, region_given=True)

    def __call__(self, img: NdarrayOrTensor, statistics: Sequence[tuple[Any, Any, float, float]] | None = None) -> torch.Tensor:
        """Normalise ``img`` (channel-first).

        Args:
            img: Channel-first image.
            statistics: Per channel, the :meth:`statistics` to normalise with instead of the
                channel's own (e.g. another image's); ``None``: each channel's own.
        """
        t = convert_to_tensor(img, track_meta=True, dtype=torch.float32)
        if statistics is not None and len(statistics) != t.shape[0]:
            raise ValueError(f"statistics holds {len(statistics)} entries, expected one per channel ({t.shape[0]})")
        out = t.clone()
        for c in range(t.shape[0]):
            x = t[c].as_tensor() if hasattr(t[c], "as_tensor") else t[c]
            # the foreground is needed for the own statistics and for background_value only
            fg = None
            if statistics is None or self.background_value is not None:
                fg = foreground_mask(x, self.foreground_fraction, self.threshold)
            lo, hi, mean, std = self._statistics(x, fg) if statistics is None else statistics[c]
            y = x
            if self.lower is not None or self.upper is not None:
                y = torch.clamp(y, min=lo, max=hi)
            if self.zscore:
                y = (y - mean) / (std if std > 1e-8 else 1.0)
            elif y is x:
                y = x.clone()
            if fg is not None and self.background_value is not None:
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
