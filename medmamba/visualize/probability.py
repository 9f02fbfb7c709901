"""Per-slice probability strip for volume classification by slice aggregation."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from medmamba.inferers.volume_classification import aggregate_slice_logits
from medmamba.visualize._common import axes_or_new, to_numpy

__all__ = ["slice_probabilities", "slice_probability_strip"]


def slice_probabilities(scores: Any, *, class_index: int = 1, logits: bool = False) -> np.ndarray:
    """Per-slice probability of one class.

    Args:
        scores: ``(S,)`` per-slice scores of the class, or ``(K, S)`` per-class scores (the layout of
            :class:`~medmamba.inferers.SliceAggregationInferer`'s per-slice logits, batch removed).
        class_index: The class taken from ``(K, S)`` scores.
        logits: Scores are logits: sigmoid for ``(S,)`` (``K == 1`` too), softmax over ``K`` otherwise.

    Returns:
        ``(S,)`` float probabilities.

    Raises:
        ValueError: For other shapes, a bad ``class_index`` or probabilities outside ``[0, 1]``.
    """
    arr = to_numpy(scores, "scores").astype(np.float64)
    if arr.ndim == 2 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim == 1:
        p = 1.0 / (1.0 + np.exp(-arr)) if logits else arr
    elif arr.ndim == 2:
        k = arr.shape[0]
        if not -k <= class_index < k:
            raise ValueError(f"class_index={class_index} is out of range for scores with {k} classes (shape (K, S))")
        if logits:
            e = np.exp(arr - arr.max(axis=0, keepdims=True))
            p = (e / e.sum(axis=0, keepdims=True))[class_index]
        else:
            p = arr[class_index]
    else:
        raise ValueError(f"scores must be (S,) or (K, S), got shape {tuple(arr.shape)}")
    if p.size == 0:
        raise ValueError("scores has no slices")
    if not logits and (np.nanmin(p) < 0.0 or np.nanmax(p) > 1.0):
        raise ValueError(
            f"scores hold values in [{np.nanmin(p):.3g}, {np.nanmax(p):.3g}], not probabilities; pass logits=True"
        )
    return p


def _volume_probability(
    scores: Any,
    aggregate: str | Callable[[torch.Tensor], torch.Tensor],
    top_k: int | float,
    class_index: int,
    logits: bool,
) -> float:
    """The volume-level probability as the inferer computes it (aggregate, then sigmoid/softmax for logits)."""
    arr = torch.as_tensor(to_numpy(scores, "scores"), dtype=torch.float64)
    if arr.ndim == 2 and arr.shape[0] == 1:
        arr = arr[0]
    agg = aggregate_slice_logits(arr, aggregate, top_k, dim=-1)
    if not logits:
        return float(agg if agg.ndim == 0 else agg[class_index])
    if agg.ndim == 0:
        return float(torch.sigmoid(agg))
    return float(torch.softmax(agg, dim=0)[class_index])


def _step_of(x: np.ndarray) -> float:
    """The typical spacing of the slice positions (1 for a single slice)."""
    return float(np.median(np.abs(np.diff(x)))) if x.shape[0] > 1 else 1.0


def _runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """Start/end (exclusive) of the runs of True."""
    padded = np.concatenate([[False], mask.astype(bool), [False]])
    d = np.diff(padded.astype(np.int8))
    return list(zip(np.nonzero(d == 1)[0].tolist(), np.nonzero(d == -1)[0].tolist()))


def slice_probability_strip(
    scores: Any,
    *,
    threshold: float = 0.5,
    class_index: int = 1,
    logits: bool = False,
    aggregate: str | Callable[[torch.Tensor], torch.Tensor] = "mean",
    top_k: int | float = 3,
    volume_probability: float | None = None,
    slice_labels: Any | None = None,
    slice_indices: Sequence[int] | None = None,
    volume_label: int | None = None,
    class_name: str | None = None,
    axis_name: str = "slice",
    heat_strip: bool = True,
    title: str | None = None,
    ax: Axes | None = None,
) -> Figure:
    """Probability of a class along the slices of a volume, with the decision threshold and the
    volume-level aggregate.

    Args:
        scores: ``(S,)`` per-slice probabilities (or logits) of the class, or ``(K, S)`` per-class.
        threshold: Decision threshold (a horizontal line).
        class_index: Class taken from ``(K, S)`` scores.
        logits: ``scores`` are logits (see :func:`slice_probabilities`).
        aggregate: Slice aggregation for the volume-level value: ``"mean"``, ``"max"``, ``"topk"``,
            ``"logsumexp"`` or a callable, as in
            :func:`~medmamba.inferers.volume_classification.aggregate_slice_logits` (applied to the
            logits, then sigmoid/softmax, when ``logits=True``, as the inferer does).
        top_k: ``top_k`` of the ``"topk"`` aggregation.
        volume_probability: A volume-level probability computed elsewhere (skips ``aggregate``).
        slice_labels: ``(S,)`` ground-truth 0/1 slice labels; positive slices are shaded.
        slice_indices: The volume slice index of each score (x axis), ``0..S-1`` by default.
        volume_label: Ground-truth volume label, shown in the title.
        class_name: Name of the class (legend and axis label).
        axis_name: Name of the slice axis (x label), e.g. ``"axial slice"``.
        heat_strip: Also draw the probabilities as a colour strip above the curve (an extra axes).
        title: Axes title.
        ax: Axes to draw the curve into (a new figure by default).

    Returns:
        The figure. The curve axes holds the per-slice line (label ``"slice probability"``), the
        threshold line (``"threshold"``) and the volume aggregate line (``"volume ..."``).

    Raises:
        ValueError: For bad shapes, a threshold outside ``[0, 1]`` or mismatched lengths.
    """
    if not 0.0 <= float(threshold) <= 1.0:
        raise ValueError(f"threshold must be in [0, 1], got {threshold}")
    p = slice_probabilities(scores, class_index=class_index, logits=logits)
    n = p.shape[0]
    x = np.arange(n) if slice_indices is None else np.asarray(slice_indices, dtype=np.float64)
    if x.shape != (n,):
        raise ValueError(f"slice_indices has {x.shape[0] if x.ndim else 0} entries but scores has {n} slices")
    if volume_probability is None:
        vol_p = _volume_probability(scores, aggregate, top_k, class_index, logits)
        agg_name = aggregate if isinstance(aggregate, str) else getattr(aggregate, "__name__", "custom")
    else:
        vol_p = float(volume_probability)
        agg_name = "given"
    if not 0.0 <= vol_p <= 1.0:
        raise ValueError(f"volume probability {vol_p:.4g} is outside [0, 1]")
    fig, ax = axes_or_new(ax, figsize=(9, 3.8))
    cname = class_name or f"class {class_index}"
    handles: list[Any] = []
    if slice_labels is not None:
        gt = to_numpy(slice_labels, "slice_labels").astype(np.float64).ravel()
        if gt.shape != (n,):
            raise ValueError(f"slice_labels has {gt.shape[0]} entries but scores has {n} slices")
        step = _step_of(x)
        for a, b in _runs(gt > 0.5):
            ax.axvspan(x[a] - step / 2, x[b - 1] + step / 2, color="tab:orange", alpha=0.18, lw=0)
        handles.append(Patch(color="tab:orange", alpha=0.3, label=f"ground truth: {cname} slices"))
    (line,) = ax.plot(x, p, marker="o", ms=3, lw=1.4, color="tab:blue", label="slice probability")
    thr = ax.axhline(threshold, color="black", ls="--", lw=1.0, label="threshold")
    vol_line = ax.axhline(vol_p, color="tab:red", ls="-", lw=1.4, alpha=0.8, label=f"volume ({agg_name}) = {vol_p:.3f}")
    handles = [line, thr, vol_line, *handles]
    above = p >= threshold
    if np.any(above):
        ax.scatter(x[above], p[above], s=18, color="tab:red", zorder=3)
    ax.set_ylim(-0.03, 1.03)
    half = _step_of(x) / 2
    ax.set_xlim(x[0] - half, x[-1] + half)
    ax.set_xlabel(axis_name)
    ax.set_ylabel(f"P({cname})")
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small", frameon=False)
    pred = int(vol_p >= threshold)
    default_title = f"volume prediction: {'positive' if pred else 'negative'} ({vol_p:.3f})"
    if volume_label is not None:
        default_title += f", ground truth: {'positive' if int(volume_label) else 'negative'}"
    ax.set_title(title if title is not None else default_title, fontsize=10)
    if heat_strip:
        strip = ax.inset_axes((0.0, 1.12, 1.0, 0.08), sharex=ax)
        step = _step_of(x)
        strip.imshow(
            p[None, :],
            aspect="auto",
            cmap="viridis",
            vmin=0.0,
            vmax=1.0,
            interpolation="nearest",
            extent=(x[0] - step / 2, x[-1] + step / 2, 0, 1),
        )
        strip.set_yticks([])
        strip.tick_params(labelbottom=False)
        ax.title.set_y(1.22)
    return fig
