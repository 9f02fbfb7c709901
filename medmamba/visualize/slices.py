"""Orthogonal slice views (axial, coronal, sagittal) of a 3D volume through one point."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from matplotlib.figure import Figure

from medmamba.transforms.ct_window import WindowSpec
from medmamba.visualize._common import (
    annotate_letters,
    display_range,
    extract_view,
    new_figure,
    resolve_view_axis,
    volume_and_affine,
    window_label,
)

__all__ = ["orthogonal_views"]

_ORDER = ("axial", "coronal", "sagittal")


def orthogonal_views(
    volume: Any,
    point: Sequence[int] | None = None,
    *,
    window: WindowSpec | None = None,
    percentiles: Sequence[float] = (1.0, 99.0),
    vmin: float | None = None,
    vmax: float | None = None,
    channel: int = 0,
    affine: Any | None = None,
    spacing: Sequence[float] | None = None,
    cmap: str = "gray",
    crosshair: bool = True,
    radiological: bool = True,
    letters: bool = True,
    colorbar: bool = False,
    title: str | None = None,
    fig: Figure | None = None,
) -> Figure:
    """Axial, coronal and sagittal slices of a volume through one voxel.

    The views are found from the volume's orientation (a MetaTensor's ``affine``; RAS-aligned array
    axes without one), shown with anterior/superior up and, in radiological convention, the
    patient's right on the left, with the voxel spacing as the pixel aspect ratio.

    Args:
        volume: ``(H, W, D)`` or channel-first ``(C, H, W, D)``; numpy, torch or MONAI MetaTensor.
        point: Voxel index ``(i, j, k)`` the three planes go through; the centre by default.
        window: CT window preset name (see :data:`medmamba.transforms.ct_window.CT_WINDOWS`) or a
            ``(level, width)`` pair in HU; ``None`` displays the ``percentiles`` range (MR).
        percentiles: Display range as percentiles of the volume when ``window`` is ``None``.
        vmin: Explicit lower display bound.
        vmax: Explicit upper display bound.
        channel: Channel shown from a channel-first volume.
        affine: Explicit 4×4 voxel-to-RAS affine (overrides the MetaTensor's).
        spacing: Voxel spacing for arrays without an affine.
        cmap: Colour map name.
        crosshair: Draw the position of ``point`` in each view.
        radiological: Patient's right on the screen's left (``False``: neurological convention).
        letters: Write orientation letters at the image edges.
        colorbar: Add a colour bar (an extra axes).
        title: Figure title.
        fig: Figure to draw into (a new one by default).

    Returns:
        The figure, with one image axes per view (axial, coronal, sagittal).

    Raises:
        ValueError: For a volume that is not 3D/4D, a point outside the volume or a bad window.
    """
    vol, aff = volume_and_affine(volume, channel=channel, affine=affine, spacing=spacing)
    if point is None:
        pt = tuple(s // 2 for s in vol.shape)
    else:
        pt = tuple(int(p) for p in point)
        if len(pt) != 3 or any(not 0 <= p < s for p, s in zip(pt, vol.shape)):
            raise ValueError(f"point={tuple(point)!r} must be a voxel index (i, j, k) inside shape {vol.shape}")
    lo, hi = display_range(vol, window, percentiles, vmin=vmin, vmax=vmax)
    shown_pct = None if vmin is not None or vmax is not None else percentiles
    fig = new_figure(fig, figsize=(12, 4.6))
    axes = fig.subplots(1, 3)
    im = None
    for ax, name in zip(axes, _ORDER):
        _, axis = resolve_view_axis(name, aff)
        dv = extract_view(vol, aff, name, pt[axis], radiological=radiological)
        im = ax.imshow(dv.image, cmap=cmap, vmin=lo, vmax=hi, aspect=dv.aspect, interpolation="nearest")
        ax.set_title(f"{name} (axis {axis}, index {pt[axis]})", fontsize=10)
        ax.set_xticks([])
        ax.set_yticks([])
        if crosshair:
            x, y = dv.to_display(pt)
            ax.axvline(x, color="tab:cyan", lw=0.7, alpha=0.8)
            ax.axhline(y, color="tab:cyan", lw=0.7, alpha=0.8)
        if letters:
            annotate_letters(ax, dv.letters)
    if colorbar and im is not None:
        fig.colorbar(im, ax=list(axes), shrink=0.8, label="intensity")
    fig.suptitle(title if title is not None else f"display {window_label(window, lo, hi, shown_pct)}", fontsize=11)
    return fig
