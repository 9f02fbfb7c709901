"""Label and prediction overlays on a slice, with a class legend, and prediction error maps."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Union

import numpy as np
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.colors import to_rgba
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from medmamba.transforms.ct_window import WindowSpec
from medmamba.visualize._common import (
    annotate_letters,
    as_labels,
    axes_or_new,
    display_range,
    extract_view,
    label_volume,
    new_figure,
    resolve_view_axis,
    to_numpy,
    volume_and_affine,
)

__all__ = [
    "ERROR_CATEGORIES",
    "ERROR_COLORS",
    "class_colors",
    "error_categories",
    "error_map",
    "label_overlay",
    "label_to_rgba",
    "prediction_overview",
]

ColorSpec = Union[str, Sequence[float]]
ClassNames = Union[Mapping[int, str], Sequence[str], None]
ClassColors = Union[Mapping[int, ColorSpec], Sequence[ColorSpec], None]

#: Error-map categories (code → name); code 0 is "correct background" and is not drawn.
ERROR_CATEGORIES: dict[int, str] = {1: "true positive", 2: "false positive", 3: "false negative", 4: "wrong class"}
#: Colours of the error-map categories.
ERROR_COLORS: dict[int, str] = {1: "tab:green", 2: "tab:red", 3: "tab:blue", 4: "gold"}

_MODES = ("filled", "contour")


def class_colors(classes: Sequence[int], colors: ClassColors = None) -> dict[int, tuple[float, float, float, float]]:
    """Colours (opaque RGBA) for class ids.

    Args:
        classes: The class ids (0 = background gets no colour).
        colors: A mapping ``{class id: colour}`` or a sequence indexed by class id (entry 0, the
            background, is ignored); classes not covered get the ``tab10`` colour ``(id - 1) % 10``.

    Returns:
        ``{class id: (r, g, b, 1.0)}`` for every non-zero id in ``classes``.

    Raises:
        ValueError: For a colour matplotlib does not understand.
    """
    tab10 = colormaps["tab10"]
    out: dict[int, tuple[float, float, float, float]] = {}
    for c in classes:
        c = int(c)
        if c == 0:
            continue
        spec: Any = None
        if isinstance(colors, Mapping):
            spec = colors.get(c)
        elif colors is not None and c < len(colors):
            spec = colors[c]
        if spec is None:
            spec = tab10((c - 1) % 10)
        try:
            rgba = to_rgba(spec)
        except ValueError as err:
            raise ValueError(f"colors[{c}]={spec!r} is not a matplotlib colour") from err
        out[c] = (rgba[0], rgba[1], rgba[2], 1.0)
    return out


def _class_name(c: int, class_names: ClassNames) -> str:
    if isinstance(class_names, Mapping):
        return str(class_names.get(c, f"class {c}"))
    if class_names is not None and c < len(class_names):
        return str(class_names[c])
    return f"class {c}"


def label_to_rgba(label: Any, colors: ClassColors = None, alpha: float = 0.4) -> np.ndarray:
    """Colour a 2D label map: class ``k`` → its colour with opacity ``alpha``, background transparent.

    Args:
        label: 2D integer label map.
        colors: See :func:`class_colors`.
        alpha: Opacity of the labelled pixels in ``[0, 1]``.

    Returns:
        Float RGBA array ``(H, W, 4)``.

    Raises:
        ValueError: For a label that is not 2D or not integer-valued, or ``alpha`` outside ``[0, 1]``.
    """
    lab = as_labels(label, "label")
    if lab.ndim != 2:
        raise ValueError(f"label must be 2D, got shape {tuple(lab.shape)}")
    if not 0.0 <= float(alpha) <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    rgba = np.zeros((*lab.shape, 4), dtype=np.float64)
    for c, col in class_colors(np.unique(lab).tolist(), colors).items():
        rgba[lab == c] = (col[0], col[1], col[2], float(alpha))
    return rgba


@dataclass
class _Slices:
    image: np.ndarray
    masks: list[np.ndarray | None]
    aspect: float
    letters: tuple[str, str, str, str] | None
    where: str


def _prepare(
    image: Any,
    masks: Sequence[Any | None],
    names: Sequence[str],
    *,
    view: str | int,
    index: int | None,
    channel: int,
    affine: Any | None,
    spacing: Sequence[float] | None,
    radiological: bool,
) -> _Slices:
    """Bring the image and masks to display-ready 2D slices (a 2D input is shown as is)."""
    img = to_numpy(image, "image")
    if img.ndim == 3 and img.shape[0] == 1:
        img = img[0]  # a channel-first 2D slice (1, H, W); volumes are (H, W, D) with H > 1 or 4D
    if img.ndim == 2:
        out = []
        for m, n in zip(masks, names):
            if m is None:
                out.append(None)
                continue
            arr = to_numpy(m, n)
            if arr.ndim == 3:
                arr = arr[0] if arr.shape[0] == 1 else np.argmax(arr, axis=0)
            lab = as_labels(arr, n)
            if lab.shape != img.shape:
                raise ValueError(f"{n} has shape {tuple(lab.shape)} but the image slice has {tuple(img.shape)}")
            out.append(lab)
        aspect = 1.0
        if spacing is not None:
            sp = [float(s) for s in spacing]
            if len(sp) != 2 or min(sp) <= 0:
                raise ValueError(f"spacing for a 2D image must be 2 positive numbers (rows, cols), got {spacing!r}")
            aspect = sp[0] / sp[1]
        return _Slices(img, out, aspect, None, "")
    vol, aff = volume_and_affine(image, name="image", channel=channel, affine=affine, spacing=spacing)
    labs = [None if m is None else label_volume(m, n, vol.shape) for m, n in zip(masks, names)]
    vname, axis = resolve_view_axis(view, aff)
    if index is None:
        first = next((m for m in labs if m is not None and np.any(m)), None)
        if first is None:
            index = vol.shape[axis] // 2
        else:
            other = tuple(a for a in range(3) if a != axis)
            index = int(np.argmax((first != 0).sum(axis=other)))
    dv = extract_view(vol, aff, view, index, radiological=radiological)
    out = [None if m is None else extract_view(m, aff, view, index, radiological=radiological).image for m in labs]
    where = f"{vname or f'axis {axis}'} {index}"
    return _Slices(dv.image, out, dv.aspect, dv.letters, where)


def _draw_labels(
    ax: Axes,
    lab: np.ndarray,
    *,
    class_names: ClassNames,
    colors: ClassColors,
    mode: str,
    alpha: float,
    legend: bool,
) -> list[int]:
    present = [int(c) for c in np.unique(lab) if c != 0]
    cols = class_colors(present, colors)
    if mode == "filled":
        ax.imshow(label_to_rgba(lab, colors, alpha), aspect=ax.get_aspect(), interpolation="nearest")
        handles = [Patch(facecolor=cols[c], edgecolor="black", label=_class_name(c, class_names)) for c in present]
    else:
        for c in present:
            ax.contour((lab == c).astype(np.float32), levels=[0.5], colors=[cols[c]], linewidths=1.2)
        handles = [Line2D([], [], color=cols[c], lw=2, label=_class_name(c, class_names)) for c in present]
    if legend and handles:
        ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small", frameon=False)
    return present


def _show_image(ax: Axes, sl: _Slices, lo: float, hi: float, cmap: str, letters: bool) -> None:
    ax.imshow(sl.image, cmap=cmap, vmin=lo, vmax=hi, aspect=sl.aspect, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    if letters:
        annotate_letters(ax, sl.letters)


def _check_mode(mode: str) -> None:
    if mode not in _MODES:
        raise ValueError(f"mode={mode!r} is not known; expected one of {_MODES}")


def label_overlay(
    image: Any,
    label: Any,
    *,
    view: str | int = "axial",
    index: int | None = None,
    class_names: ClassNames = None,
    colors: ClassColors = None,
    mode: str = "filled",
    alpha: float = 0.4,
    window: WindowSpec | None = None,
    percentiles: Sequence[float] = (1.0, 99.0),
    cmap: str = "gray",
    channel: int = 0,
    affine: Any | None = None,
    spacing: Sequence[float] | None = None,
    radiological: bool = True,
    letters: bool = True,
    legend: bool = True,
    title: str | None = None,
    ax: Axes | None = None,
) -> Figure:
    """A label (or prediction) map over an image slice, with a legend of the classes present.

    Args:
        image: A 2D slice ``(H, W)`` or ``(1, H, W)``, or a volume ``(H, W, D)`` / ``(C, H, W, D)``
            (numpy, torch, MetaTensor) from which ``view``/``index`` select the slice.
        label: Integer labels of the same spatial shape (0 = background); a multi-channel
            (one-hot / probability) array is reduced by argmax over the channel axis.
        view: ``"axial"``, ``"coronal"``, ``"sagittal"`` or an array axis, for volumes.
        index: Slice index along the view's axis; by default the slice with the most labelled voxels.
        class_names: ``{id: name}`` or a sequence indexed by class id (``names[0]`` = background).
        colors: ``{id: colour}`` or a sequence indexed by class id; ``tab10`` by default.
        mode: ``"filled"`` (translucent colour, opacity ``alpha``) or ``"contour"`` (outlines).
        alpha: Opacity of the filled overlay.
        window: CT window preset / ``(level, width)``; ``None`` uses ``percentiles`` (MR).
        percentiles: Display range as percentiles of the image slice when no window is given.
        cmap: Colour map of the image.
        channel: Image channel shown from a channel-first volume.
        affine: Explicit voxel-to-RAS affine for volumes.
        spacing: Voxel spacing for arrays without an affine (3 values for volumes; 2 for slices).
        radiological: Radiological display convention (see :func:`orthogonal_views`).
        letters: Write orientation letters at the image edges.
        legend: Add the class legend.
        title: Axes title (default: the slice shown).
        ax: Axes to draw into (a new figure by default).

    Returns:
        The figure. In ``"filled"`` mode the axes holds two images: the slice and the RGBA overlay
        (:func:`label_to_rgba`); in ``"contour"`` mode one contour set per class.

    Raises:
        ValueError: For mismatched shapes, non-integer labels or an unknown ``mode``.
    """
    _check_mode(mode)
    sl = _prepare(
        image,
        [label],
        ["label"],
        view=view,
        index=index,
        channel=channel,
        affine=affine,
        spacing=spacing,
        radiological=radiological,
    )
    lo, hi = display_range(sl.image, window, percentiles)
    fig, ax = axes_or_new(ax, figsize=(6, 5))
    _show_image(ax, sl, lo, hi, cmap, letters)
    _draw_labels(
        ax,
        sl.masks[0],
        class_names=class_names,
        colors=colors,
        mode=mode,
        alpha=alpha,  # type: ignore[arg-type]
        legend=legend,
    )
    ax.set_title(title if title is not None else f"labels{', ' + sl.where if sl.where else ''}", fontsize=10)
    return fig


def error_categories(prediction: Any, label: Any) -> np.ndarray:
    """Per-voxel agreement of a prediction with the label (0 = background is "negative").

    Returns:
        An ``int8`` array of the same shape with codes of :data:`ERROR_CATEGORIES`: 0 correct
        background, 1 true positive (same foreground class), 2 false positive (foreground predicted
        on background), 3 false negative (background predicted on foreground), 4 wrong class
        (foreground predicted as another foreground class).

    Raises:
        ValueError: For different shapes or non-integer labels.
    """
    pred = as_labels(prediction, "prediction")
    lab = as_labels(label, "label")
    if pred.shape != lab.shape:
        raise ValueError(f"prediction has shape {tuple(pred.shape)} but label has {tuple(lab.shape)}")
    out = np.zeros(pred.shape, dtype=np.int8)
    pf, lf = pred != 0, lab != 0
    out[pf & lf & (pred == lab)] = 1
    out[pf & ~lf] = 2
    out[~pf & lf] = 3
    out[pf & lf & (pred != lab)] = 4
    return out


def _draw_errors(ax: Axes, cat: np.ndarray, *, alpha: float, show_true_positives: bool, legend: bool) -> None:
    rgba = np.zeros((*cat.shape, 4), dtype=np.float64)
    handles = []
    for code, name in ERROR_CATEGORIES.items():
        if code == 1 and not show_true_positives:
            continue
        sel = cat == code
        n = int(sel.sum())
        if n == 0:
            continue
        col = to_rgba(ERROR_COLORS[code])
        rgba[sel] = (col[0], col[1], col[2], float(alpha))
        handles.append(Patch(facecolor=col, edgecolor="black", label=f"{name} ({n} px)"))
    ax.imshow(rgba, aspect=ax.get_aspect(), interpolation="nearest")
    if legend and handles:
        ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small", frameon=False)


def error_map(
    image: Any,
    prediction: Any,
    label: Any,
    *,
    view: str | int = "axial",
    index: int | None = None,
    alpha: float = 0.6,
    show_true_positives: bool = True,
    window: WindowSpec | None = None,
    percentiles: Sequence[float] = (1.0, 99.0),
    cmap: str = "gray",
    channel: int = 0,
    affine: Any | None = None,
    spacing: Sequence[float] | None = None,
    radiological: bool = True,
    letters: bool = True,
    legend: bool = True,
    title: str | None = None,
    ax: Axes | None = None,
) -> Figure:
    """Where a prediction is right and wrong: true positives, false positives, false negatives and
    foreground confused with another class (see :func:`error_categories`), over the image slice.

    Args:
        image: 2D slice or volume (see :func:`label_overlay`).
        prediction: Predicted integer labels (or multi-channel scores, reduced by argmax).
        label: Reference integer labels.
        view: View for volumes.
        index: Slice index; by default the slice with the most labelled voxels.
        alpha: Opacity of the coloured categories.
        show_true_positives: Also colour the correctly found foreground.
        window: CT window preset / ``(level, width)``; ``None`` uses ``percentiles``.
        percentiles: Display range percentiles without a window.
        cmap: Image colour map.
        channel: Image channel of a channel-first volume.
        affine: Explicit affine for volumes.
        spacing: Voxel spacing without an affine.
        radiological: Radiological display convention.
        letters: Orientation letters.
        legend: Add a legend of the categories present, with pixel counts.
        title: Axes title.
        ax: Axes to draw into.

    Returns:
        The figure; the axes holds the slice and the RGBA category image.
    """
    sl = _prepare(
        image,
        [label, prediction],
        ["label", "prediction"],
        view=view,
        index=index,
        channel=channel,
        affine=affine,
        spacing=spacing,
        radiological=radiological,
    )
    lo, hi = display_range(sl.image, window, percentiles)
    fig, ax = axes_or_new(ax, figsize=(6, 5))
    _show_image(ax, sl, lo, hi, cmap, letters)
    cat = error_categories(sl.masks[1], sl.masks[0])
    _draw_errors(ax, cat, alpha=alpha, show_true_positives=show_true_positives, legend=legend)
    ax.set_title(title if title is not None else f"errors{', ' + sl.where if sl.where else ''}", fontsize=10)
    return fig


def prediction_overview(
    image: Any,
    label: Any,
    prediction: Any,
    *,
    view: str | int = "axial",
    index: int | None = None,
    class_names: ClassNames = None,
    colors: ClassColors = None,
    mode: str = "filled",
    alpha: float = 0.4,
    window: WindowSpec | None = None,
    percentiles: Sequence[float] = (1.0, 99.0),
    cmap: str = "gray",
    channel: int = 0,
    affine: Any | None = None,
    spacing: Sequence[float] | None = None,
    radiological: bool = True,
    title: str | None = None,
    fig: Figure | None = None,
) -> Figure:
    """Label, prediction and error map of one slice side by side.

    Arguments as in :func:`label_overlay` and :func:`error_map`; ``index`` defaults to the slice
    with the most labelled voxels.

    Returns:
        The figure with three axes: label overlay, prediction overlay, error map.
    """
    _check_mode(mode)
    sl = _prepare(
        image,
        [label, prediction],
        ["label", "prediction"],
        view=view,
        index=index,
        channel=channel,
        affine=affine,
        spacing=spacing,
        radiological=radiological,
    )
    lo, hi = display_range(sl.image, window, percentiles)
    fig = new_figure(fig, figsize=(15, 4.8))
    axes = fig.subplots(1, 3)
    for ax, mask, name in zip(axes[:2], sl.masks, ("label", "prediction")):
        _show_image(ax, sl, lo, hi, cmap, True)
        _draw_labels(
            ax,
            mask,
            class_names=class_names,
            colors=colors,
            mode=mode,
            alpha=alpha,  # type: ignore[arg-type]
            legend=True,
        )
        ax.set_title(name, fontsize=10)
    _show_image(axes[2], sl, lo, hi, cmap, True)
    _draw_errors(axes[2], error_categories(sl.masks[1], sl.masks[0]), alpha=0.6, show_true_positives=True, legend=True)
    axes[2].set_title("errors", fontsize=10)
    fig.suptitle(title if title is not None else (sl.where or "slice"), fontsize=11)
    return fig
