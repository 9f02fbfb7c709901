"""Shared helpers: array conversion, voxel geometry, anatomical views, display ranges, figures.

Private to :mod:`medmamba.visualize`; the public pieces are re-exported from the package.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Union

import numpy as np
import torch
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from nibabel.orientations import io_orientation

from medmamba.transforms.ct_window import CT_WINDOWS, WindowSpec, resolve_window

__all__ = [
    "VIEWS",
    "ArrayLike",
    "as_labels",
    "DisplayView",
    "display_range",
    "extract_view",
    "label_volume",
    "new_figure",
    "root_figure",
    "resolve_view_axis",
    "to_numpy",
    "volume_and_affine",
    "voxel_spacing",
]

#: Anything the plotting functions accept as an image: numpy, torch or MONAI MetaTensor.
ArrayLike = Union[np.ndarray, torch.Tensor]

#: The three orthogonal views, by the world (RAS) axis that is normal to the view plane.
VIEWS: dict[str, int] = {"sagittal": 0, "coronal": 1, "axial": 2}

# In-plane world axes (horizontal, vertical) of each view and the screen-edge letters
# (left, right, top, bottom) in radiological convention.
_VIEW_PLANE: dict[str, tuple[int, int]] = {"sagittal": (1, 2), "coronal": (0, 2), "axial": (0, 1)}
_RADIOLOGICAL_LETTERS: dict[str, tuple[str, str, str, str]] = {
    "sagittal": ("A", "P", "S", "I"),
    "coronal": ("R", "L", "S", "I"),
    "axial": ("R", "L", "A", "P"),
}


def to_numpy(x: Any, name: str = "array") -> np.ndarray:
    """Convert a numpy array, torch tensor or MONAI ``MetaTensor`` to a numpy array (no copy if possible).

    Raises:
        TypeError: If ``x`` is not array-like.
    """
    if isinstance(x, torch.Tensor):
        t = x.detach()
        if hasattr(t, "as_tensor"):
            t = t.as_tensor()
        return t.cpu().numpy()
    if isinstance(x, np.ndarray):
        return x
    if isinstance(x, (list, tuple)) or (np.isscalar(x) and not isinstance(x, (str, bytes))):
        return np.asarray(x)
    raise TypeError(f"{name} must be a numpy array, torch tensor or MetaTensor, got {type(x).__name__}")


def _affine_of(x: Any) -> np.ndarray | None:
    aff = getattr(x, "affine", None)
    if aff is None:
        return None
    aff = to_numpy(aff, "affine").astype(np.float64)
    if aff.shape == (4, 4):
        return aff
    if aff.ndim == 3 and aff.shape[1:] == (4, 4):  # batched MetaTensor
        return aff[0]
    return None


def volume_and_affine(
    volume: Any,
    *,
    name: str = "volume",
    channel: int = 0,
    affine: Any | None = None,
    spacing: Sequence[float] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """A 3D spatial array and its 4×4 voxel-to-world affine.

    Args:
        volume: ``(H, W, D)`` or channel-first ``(C, H, W, D)`` numpy array, tensor or MetaTensor.
        name: Argument name used in error messages.
        channel: Channel to take from a channel-first volume.
        affine: Explicit 4×4 affine; overrides a MetaTensor's.
        spacing: Explicit voxel spacing (3 values, mm); used when there is no affine.

    Returns:
        ``(array, affine)``; without an affine or spacing the identity (1 mm, RAS-aligned axes).

    Raises:
        ValueError: For a volume that is not 3D/4D, a bad channel or a malformed affine/spacing.
    """
    arr = to_numpy(volume, name)
    aff = to_numpy(affine, "affine").astype(np.float64) if affine is not None else _affine_of(volume)
    if arr.ndim == 4:
        if not -arr.shape[0] <= channel < arr.shape[0]:
            raise ValueError(f"channel={channel} is out of range for {name} with {arr.shape[0]} channels")
        arr = arr[channel]
    if arr.ndim != 3:
        raise ValueError(f"{name} must be 3D (H, W, D) or channel-first 4D (C, H, W, D), got shape {tuple(arr.shape)}")
    if aff is None:
        aff = np.eye(4)
        if spacing is not None:
            sp = np.asarray(spacing, dtype=np.float64).ravel()
            if sp.shape != (3,) or np.any(sp <= 0) or not np.all(np.isfinite(sp)):
                raise ValueError(f"spacing must be 3 positive finite numbers, got {spacing!r}")
            aff[:3, :3] = np.diag(sp)
    elif aff.shape != (4, 4) or not np.all(np.isfinite(aff)):
        raise ValueError(f"affine must be a finite 4x4 matrix, got shape {aff.shape}")
    return arr, aff


def voxel_spacing(affine: np.ndarray) -> np.ndarray:
    """Voxel spacing (mm) along each array axis: the norms of the affine's first three columns."""
    sp = np.sqrt((np.asarray(affine, dtype=np.float64)[:3, :3] ** 2).sum(axis=0))
    return np.where(sp > 0, sp, 1.0)


def resolve_view_axis(view: str | int, affine: np.ndarray) -> tuple[str | None, int]:
    """The array axis normal to a view.

    Args:
        view: ``"axial"``, ``"coronal"``, ``"sagittal"`` (found from the affine's orientation) or an
            array axis ``0..2``.
        affine: The voxel-to-RAS affine.

    Returns:
        ``(view name or None, array axis)``.

    Raises:
        ValueError: For an unknown view name or an axis outside 0..2.
    """
    if isinstance(view, str):
        key = view.lower()
        if key not in VIEWS:
            raise ValueError(f"view={view!r} is not known; expected one of {sorted(VIEWS)} or an array axis 0..2")
        ornt = io_orientation(affine)
        return key, int(np.nonzero(ornt[:, 0] == VIEWS[key])[0][0])
    if isinstance(view, (int, np.integer)) and not isinstance(view, bool):
        if not -3 <= int(view) < 3:
            raise ValueError(f"view={view} is out of range; expected an array axis 0..2")
        return None, int(view) % 3
    raise TypeError(f"view must be a view name or an int array axis, got {view!r}")


def as_labels(x: Any, name: str) -> np.ndarray:
    """``x`` as int64 class labels (bool accepted; floats must be integer-valued)."""
    arr = to_numpy(x, name)
    if arr.dtype == bool:
        return arr.astype(np.int64)
    if not np.issubdtype(arr.dtype, np.integer):
        if not np.all(np.isfinite(arr)) or not np.all(arr == np.round(arr)):
            raise ValueError(
                f"{name} must hold integer class labels (threshold or argmax probabilities first), "
                f"got non-integer values of dtype {arr.dtype}"
            )
    return arr.astype(np.int64)


def label_volume(x: Any, name: str, shape: tuple[int, ...]) -> np.ndarray:
    """A 3D integer label volume of spatial ``shape`` (channel-first input: squeezed or argmax)."""
    arr = to_numpy(x, name)
    if arr.ndim == 4:
        arr = arr[0] if arr.shape[0] == 1 else np.argmax(arr, axis=0)
    lab = as_labels(arr, name)
    if lab.shape != shape:
        raise ValueError(f"{name} has spatial shape {tuple(lab.shape)} but the image has {shape}")
    return lab


@dataclass(frozen=True)
class DisplayView:
    """A 2D slice arranged for display (row 0 at the top, column 0 at the left).

    Attributes:
        image: The 2D array ``(rows, cols)``.
        aspect: Height/width of a display pixel (vertical spacing / horizontal spacing).
        row_axis: Array axis shown vertically.
        col_axis: Array axis shown horizontally.
        flip_rows: Whether array index increases upwards (rows reversed).
        flip_cols: Whether array index increases to the left (columns reversed).
        letters: Screen-edge orientation letters (left, right, top, bottom), or ``None``.
    """

    image: np.ndarray
    aspect: float
    row_axis: int
    col_axis: int
    flip_rows: bool
    flip_cols: bool
    letters: tuple[str, str, str, str] | None

    def to_display(self, point: Sequence[float]) -> tuple[float, float]:
        """Map a 3D voxel index to display ``(x, y)`` = (column, row)."""
        rows, cols = self.image.shape[:2]
        r, c = float(point[self.row_axis]), float(point[self.col_axis])
        return (cols - 1 - c if self.flip_cols else c), (rows - 1 - r if self.flip_rows else r)


def extract_view(
    volume: np.ndarray, affine: np.ndarray, view: str | int, index: int, *, radiological: bool = True
) -> DisplayView:
    """Take slice ``index`` of a 3D array for ``view`` and orient it for display.

    For named views the slice is flipped so that anterior/superior is up and, in radiological
    convention, the patient's right is on the screen's left (sagittal: anterior on the left). A
    numeric ``view`` is shown with the remaining array axes as rows/columns, unflipped.

    Raises:
        ValueError: For an index outside the volume.
    """
    name, axis = resolve_view_axis(view, affine)
    n = volume.shape[axis]
    if not -n <= index < n:
        raise ValueError(f"index={index} is out of range for view {view!r} with {n} slices (axis {axis})")
    spacing = voxel_spacing(affine)
    if name is None:
        row_axis, col_axis = [a for a in range(3) if a != axis]
        sl = np.take(volume, index, axis=axis)  # axes (row_axis, col_axis)
        return DisplayView(sl, float(spacing[row_axis] / spacing[col_axis]), row_axis, col_axis, False, False, None)
    ornt = io_orientation(affine)
    world_to_array = {int(ornt[a, 0]): a for a in range(3)}
    h_world, v_world = _VIEW_PLANE[name]
    col_axis, row_axis = world_to_array[h_world], world_to_array[v_world]
    sl = np.take(volume, index, axis=axis)
    remaining = [a for a in range(3) if a != axis]
    if remaining.index(row_axis) != 0:
        sl = sl.T
    # Top row = most anterior/superior: flip when the array index increases towards A/S.
    flip_rows = bool(ornt[row_axis, 1] > 0)
    # Left column = patient's right (axial/coronal) or anterior (sagittal) in radiological convention.
    flip_cols = bool(ornt[col_axis, 1] > 0)
    letters = _RADIOLOGICAL_LETTERS[name]
    if not radiological:
        flip_cols = not flip_cols
        letters = (letters[1], letters[0], letters[2], letters[3])
    if flip_rows:
        sl = sl[::-1]
    if flip_cols:
        sl = sl[:, ::-1]
    aspect = float(spacing[row_axis] / spacing[col_axis])
    return DisplayView(np.ascontiguousarray(sl), aspect, row_axis, col_axis, flip_rows, flip_cols, letters)


def display_range(
    image: Any,
    window: WindowSpec | None = None,
    percentiles: Sequence[float] = (1.0, 99.0),
    *,
    vmin: float | None = None,
    vmax: float | None = None,
) -> tuple[float, float]:
    """The intensity range ``(vmin, vmax)`` to display an image with.

    Args:
        image: The image (any shape) the percentiles are taken from.
        window: A CT window: a preset name of :data:`medmamba.transforms.ct_window.CT_WINDOWS`
            (e.g. ``"brain"``, ``"lung"``) or a ``(level, width)`` pair in HU. ``None`` uses percentiles
            (MR and other modalities without a calibrated scale).
        percentiles: Lower and upper percentile of the finite voxels, used without a window.
        vmin: Explicit lower bound (overrides the window/percentile).
        vmax: Explicit upper bound (overrides the window/percentile).

    Returns:
        ``(vmin, vmax)`` with ``vmin < vmax``.

    Raises:
        ValueError: For an unknown preset, bad percentiles, or ``vmin >= vmax``.
    """
    if window is not None:
        level, width = resolve_window(window)
        lo, hi = level - width / 2.0, level + width / 2.0
    else:
        p = tuple(float(v) for v in percentiles)
        if len(p) != 2 or not 0.0 <= p[0] < p[1] <= 100.0:
            raise ValueError(f"percentiles must be two increasing values in [0, 100], got {percentiles!r}")
        arr = to_numpy(image, "image").astype(np.float64, copy=False)
        finite = arr[np.isfinite(arr)]
        if finite.size == 0:
            lo, hi = 0.0, 1.0
        else:
            lo, hi = (float(v) for v in np.percentile(finite, p))
    lo = float(vmin) if vmin is not None else lo
    hi = float(vmax) if vmax is not None else hi
    if hi <= lo:
        if vmin is not None and vmax is not None:
            raise ValueError(f"vmin={vmin} must be smaller than vmax={vmax}")
        hi = lo + 1.0  # constant image
    return lo, hi


def window_label(window: WindowSpec | None, lo: float, hi: float, percentiles: Sequence[float] | None = None) -> str:
    """A short description of a display range for titles."""
    if window is None:
        what = f"percentiles {percentiles[0]:g}-{percentiles[1]:g} " if percentiles is not None else ""
        return f"{what}[{lo:.4g}, {hi:.4g}]"
    if isinstance(window, str):
        level, width = CT_WINDOWS[window.lower()]
        return f"{window.lower()} window (L {level:g} / W {width:g})"
    level, width = resolve_window(window)
    return f"window L {level:g} / W {width:g}"


def new_figure(
    fig: Figure | None = None, *, figsize: tuple[float, float] | None = None, layout: str | None = "constrained"
) -> Figure:
    """Return ``fig`` or a new ``matplotlib.figure.Figure`` (not registered with pyplot)."""
    if fig is not None:
        if not isinstance(fig, Figure):
            raise TypeError(f"fig must be a matplotlib Figure, got {type(fig).__name__}")
        return fig
    return Figure(figsize=figsize, layout=layout)


def root_figure(ax: Axes) -> Figure:
    """The top-level figure an axes belongs to (also from inside a SubFigure)."""
    fig = ax.figure
    while not isinstance(fig, Figure) and fig is not None:
        fig = fig.figure  # SubFigure -> parent
    return fig  # type: ignore[return-value]


def axes_or_new(ax: Axes | None, *, figsize: tuple[float, float] | None = None) -> tuple[Figure, Axes]:
    """Return ``(ax.figure, ax)`` or a new figure with one axes."""
    if ax is not None:
        if not isinstance(ax, Axes):
            raise TypeError(f"ax must be a matplotlib Axes, got {type(ax).__name__}")
        return root_figure(ax), ax
    fig = new_figure(figsize=figsize)
    return fig, fig.add_subplot()


def annotate_letters(ax: Axes, letters: tuple[str, str, str, str] | None, color: str = "yellow") -> None:
    """Write orientation letters at the left, right, top and bottom edges of an image axes."""
    if letters is None:
        return
    kw: dict[str, Any] = {"transform": ax.transAxes, "color": color, "fontsize": 9, "fontweight": "bold"}
    ax.text(0.02, 0.5, letters[0], ha="left", va="center", **kw)
    ax.text(0.98, 0.5, letters[1], ha="right", va="center", **kw)
    ax.text(0.5, 0.98, letters[2], ha="center", va="top", **kw)
    ax.text(0.5, 0.02, letters[3], ha="center", va="bottom", **kw)
