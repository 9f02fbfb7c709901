"""A montage: a grid of slices along one axis for a quick look at a series."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from medmamba.transforms.ct_window import WindowSpec
from medmamba.visualize._common import (
    display_range,
    extract_view,
    label_volume,
    new_figure,
    resolve_view_axis,
    volume_and_affine,
    window_label,
)
from medmamba.visualize.overlay import ClassColors, label_to_rgba

__all__ = ["montage", "montage_indices"]


def montage_indices(n_total: int, n_slices: int, *, margin: float = 0.05) -> list[int]:
    """``n_slices`` evenly spaced slice indices of ``0..n_total-1``, leaving out a ``margin`` fraction
    at both ends (all slices when there are fewer than asked).

    Raises:
        ValueError: For ``n_slices < 1`` or a margin outside ``[0, 0.5)``.
    """
    if n_slices < 1:
        raise ValueError(f"n_slices must be >= 1, got {n_slices}")
    if not 0.0 <= margin < 0.5:
        raise ValueError(f"margin must be in [0, 0.5), got {margin}")
    if n_slices >= n_total:
        return list(range(n_total))
    lo, hi = margin * (n_total - 1), (1 - margin) * (n_total - 1)
    idx = np.unique(np.round(np.linspace(lo, hi, n_slices)).astype(int))
    return idx.tolist()


def montage(
    volume: Any,
    *,
    view: str | int = "axial",
    n_slices: int = 16,
    indices: Sequence[int] | None = None,
    ncols: int | None = None,
    margin: float = 0.05,
    window: WindowSpec | None = None,
    percentiles: Sequence[float] = (1.0, 99.0),
    vmin: float | None = None,
    vmax: float | None = None,
    label: Any | None = None,
    colors: ClassColors = None,
    alpha: float = 0.4,
    cmap: str = "gray",
    channel: int = 0,
    affine: Any | None = None,
    spacing: Sequence[float] | None = None,
    radiological: bool = True,
    title: str | None = None,
    fig: Figure | None = None,
) -> Figure:
    """A grid of slices of a volume, with one display range for all of them.

    Args:
        volume: ``(H, W, D)`` or ``(C, H, W, D)``; numpy, torch or MONAI MetaTensor.
        view: ``"axial"``, ``"coronal"``, ``"sagittal"`` (from the affine) or an array axis.
        n_slices: Number of evenly spaced slices (ignored when ``indices`` is given).
        indices: Explicit slice indices along the view's axis.
        ncols: Grid columns (about the square root of the number of slices by default).
        margin: Fraction of the slices skipped at both ends when spacing them evenly.
        window: CT window preset / ``(level, width)``; ``None`` uses ``percentiles`` of the volume.
        percentiles: Display range as percentiles without a window.
        vmin: Explicit lower display bound.
        vmax: Explicit upper display bound.
        label: Optional integer label volume overlaid (filled) on every slice.
        colors: Label colours (see :func:`medmamba.visualize.class_colors`).
        alpha: Opacity of the label overlay.
        cmap: Colour map.
        channel: Channel of a channel-first volume.
        affine: Explicit voxel-to-RAS affine.
        spacing: Voxel spacing without an affine.
        radiological: Radiological display convention.
        title: Figure title.
        fig: Figure to draw into.

    Returns:
        The figure with one axes per slice (the slice index in its corner).

    Raises:
        ValueError: For a bad volume, view, indices or ``ncols``.
    """
    vol, aff = volume_and_affine(volume, channel=channel, affine=affine, spacing=spacing)
    vname, axis = resolve_view_axis(view, aff)
    n_total = vol.shape[axis]
    if indices is None:
        idx = montage_indices(n_total, n_slices, margin=margin)
    else:
        idx = [int(i) for i in indices]
        bad = [i for i in idx if not 0 <= i < n_total]
        if not idx or bad:
            raise ValueError(f"indices {bad or '[]'} are not slice indices of 0..{n_total - 1} along axis {axis}")
    lab = None if label is None else label_volume(label, "label", vol.shape)
    n = len(idx)
    if ncols is None:
        ncols = max(1, math.ceil(math.sqrt(n)))
    elif ncols < 1:
        raise ValueError(f"ncols must be >= 1, got {ncols}")
    nrows = math.ceil(n / ncols)
    lo, hi = display_range(vol, window, percentiles, vmin=vmin, vmax=vmax)
    shown_pct = None if vmin is not None or vmax is not None else percentiles
    fig = new_figure(fig, figsize=(2.0 * ncols, 2.0 * nrows + 0.4), layout="compressed")
    grid = fig.subplots(nrows, ncols, squeeze=False)
    for k, ax in enumerate(grid.ravel()):
        if k >= n:
            ax.remove()
            continue
        dv = extract_view(vol, aff, view, idx[k], radiological=radiological)
        ax.imshow(dv.image, cmap=cmap, vmin=lo, vmax=hi, aspect=dv.aspect, interpolation="nearest")
        if lab is not None:
            lv = extract_view(lab, aff, view, idx[k], radiological=radiological).image
            ax.imshow(label_to_rgba(lv, colors, alpha), aspect=dv.aspect, interpolation="nearest")
        ax.text(0.03, 0.97, str(idx[k]), transform=ax.transAxes, ha="left", va="top", color="yellow", fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])
    shown = f"{vname or f'axis {axis}'} slices, display {window_label(window, lo, hi, shown_pct)}"
    fig.suptitle(title if title is not None else shown, fontsize=11)
    return fig
