"""Training curves from a bundle's logs: TensorBoard event files and CSV/JSON metric files."""

from __future__ import annotations

import csv
import json
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Union

import numpy as np
from matplotlib.figure import Figure

from medmamba.visualize._common import new_figure

__all__ = [
    "Curve",
    "find_event_files",
    "load_training_logs",
    "plot_training_curves",
    "read_metrics_file",
    "read_tensorboard_scalars",
    "smooth",
]

PathLike = Union[str, os.PathLike]

#: Column names taken as the x axis of a metrics table, in order of preference.
X_KEYS: tuple[str, ...] = ("epoch", "iteration", "global_step", "step")
_METRIC_SUFFIXES = (".csv", ".tsv", ".json", ".jsonl")


@dataclass(frozen=True)
class Curve:
    """One logged scalar series.

    Attributes:
        name: The tag / column name.
        x: Step values (epoch or iteration).
        y: Scalar values.
        x_name: What ``x`` counts (``"epoch"``, ``"iteration"``, or ``"step"`` when unknown).
        source: The file it was read from.
    """

    name: str
    x: np.ndarray
    y: np.ndarray
    x_name: str = "step"
    source: str = ""


def find_event_files(path: PathLike) -> list[Path]:
    """TensorBoard event files (``events.out.tfevents.*``) at or below ``path``, sorted."""
    p = Path(path)
    if p.is_file():
        return [p] if p.name.startswith("events.out.tfevents") else []
    return sorted(f for f in p.rglob("events.out.tfevents*") if f.is_file())


def read_tensorboard_scalars(path: PathLike, *, tags: Sequence[str] | None = None) -> dict[str, Curve]:
    """Read scalar summaries from TensorBoard event files with tensorboard's ``EventAccumulator``.

    Args:
        path: An event file, or a folder searched recursively (a bundle's ``log_dir``). Event files
            in different sub-folders (runs) whose tags collide get the sub-folder as a prefix
            (``"run/tag"``).
        tags: Only these tags (all by default).

    Returns:
        ``{tag: Curve}``; steps are TensorBoard's global steps (``x_name="step"``), sorted, with the
        last value kept for a repeated step.

    Raises:
        ImportError: If tensorboard is not installed (``pip install medmamba[train]``).
        FileNotFoundError: If ``path`` does not exist or holds no event file.
    """
    try:
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    except ImportError as err:  # pragma: no cover - tensorboard is in the train extra
        raise ImportError("reading TensorBoard logs needs tensorboard: pip install 'medmamba[train]'") from err
    root = Path(path)
    if not root.exists():
        raise FileNotFoundError(f"path={str(path)!r} does not exist")
    files = find_event_files(root)
    if not files:
        raise FileNotFoundError(f"path={str(path)!r} holds no TensorBoard event file (events.out.tfevents.*)")
    runs: dict[Path, list[Path]] = {}
    for f in files:
        runs.setdefault(f.parent, []).append(f)
    per_run: dict[str, dict[str, tuple[dict[int, float], str]]] = {}
    base = root if root.is_dir() else root.parent
    for run_dir, run_files in runs.items():
        series: dict[str, tuple[dict[int, float], str]] = {}
        for f in run_files:  # sorted by name = by creation time stamp
            acc = EventAccumulator(str(f), size_guidance={"scalars": 0})
            acc.Reload()
            for tag in acc.Tags().get("scalars", []):
                if tags is not None and tag not in tags:
                    continue
                values, _ = series.setdefault(tag, ({}, str(f)))
                for ev in acc.Scalars(tag):
                    values[int(ev.step)] = float(ev.value)
        per_run[run_dir.relative_to(base).as_posix() if run_dir != base else ""] = series
    counts: dict[str, int] = {}
    for series in per_run.values():
        for tag in series:
            counts[tag] = counts.get(tag, 0) + 1
    out: dict[str, Curve] = {}
    for run, series in per_run.items():
        for tag, (values, src) in series.items():
            name = f"{run}/{tag}" if counts[tag] > 1 and run else tag
            steps = np.array(sorted(values), dtype=np.float64)
            out[name] = Curve(name, steps, np.array([values[int(s)] for s in steps]), "step", src)
    return out


def _to_float(v: Any) -> float | None:
    """A number from a table cell, or None for empty/non-numeric cells."""
    if isinstance(v, (int, float)):  # bool included
        return float(v)
    if isinstance(v, str):
        try:
            return float(v.strip())
        except ValueError:
            return None
    return None


def _records_to_curves(records: Sequence[Mapping[str, Any]], x_key: str | None, source: str) -> dict[str, Curve]:
    keys: list[str] = []
    for r in records:
        for k in r:
            if k not in keys:
                keys.append(k)
    if x_key is None:
        x_key = next((k for k in X_KEYS if k in keys), None)
    elif x_key not in keys:
        raise ValueError(f"x_key={x_key!r} is not a column of {source!r}; columns are {keys}")
    out: dict[str, Curve] = {}
    for k in keys:
        if k == x_key:
            continue
        xs, ys = [], []
        for i, r in enumerate(records):
            y = _to_float(r.get(k))
            x = float(i) if x_key is None else _to_float(r.get(x_key))
            if y is None or x is None or not math.isfinite(y):
                continue
            xs.append(x)
            ys.append(y)
        if ys:
            out[k] = Curve(k, np.asarray(xs), np.asarray(ys), x_key or "row", source)
    return out


def read_metrics_file(path: PathLike, *, x_key: str | None = None) -> dict[str, Curve]:
    """Read a metrics table written by a training run.

    Accepted layouts:

    * CSV/TSV with a header row (``epoch,loss,val_dice`` ...);
    * JSON: a list of records ``[{"epoch": 1, "loss": 0.5, ...}, ...]``, a dict of columns
      ``{"epoch": [...], "loss": [...]}``, or a dict of series ``{"loss": [[step, value], ...]}``;
    * JSON lines (``.jsonl``): one record per line.

    Non-numeric columns are skipped; empty cells and non-finite values are dropped.

    Args:
        path: The file.
        x_key: Column used as x; the first of ``epoch, iteration, global_step, step`` present by
            default, else the row number.

    Returns:
        ``{column: Curve}``.

    Raises:
        FileNotFoundError: If the file is missing.
        ValueError: For an unsupported suffix or layout, or an unknown ``x_key``.
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"path={str(path)!r} is not a file")
    suffix = p.suffix.lower()
    src = str(p)
    if suffix in (".csv", ".tsv"):
        with p.open(newline="", encoding="utf-8") as fh:
            records = list(csv.DictReader(fh, delimiter="\t" if suffix == ".tsv" else ","))
        return _records_to_curves(records, x_key, src)
    if suffix == ".jsonl":
        with p.open(encoding="utf-8") as fh:
            records = [json.loads(line) for line in fh if line.strip()]
        return _records_to_curves(records, x_key, src)
    if suffix != ".json":
        raise ValueError(f"path={str(path)!r} has suffix {suffix!r}; expected one of {_METRIC_SUFFIXES}")
    with p.open(encoding="utf-8") as fh:
        data = json.load(fh)
    if isinstance(data, list) and all(isinstance(r, Mapping) for r in data):
        return _records_to_curves(data, x_key, src)
    if isinstance(data, Mapping) and data and all(isinstance(v, list) for v in data.values()):
        values = list(data.values())
        if all(v and all(isinstance(e, (list, tuple)) and len(e) == 2 for e in v) for v in values):
            return {
                str(k): Curve(
                    str(k),
                    np.asarray([float(e[0]) for e in v]),
                    np.asarray([float(e[1]) for e in v]),
                    x_key or "step",
                    src,
                )
                for k, v in data.items()
            }
        lengths = {len(v) for v in values}
        if len(lengths) == 1:
            n = lengths.pop()
            records = [{k: v[i] for k, v in data.items()} for i in range(n)]
            return _records_to_curves(records, x_key, src)
    raise ValueError(
        f"{str(path)!r} is not a metrics JSON: expected a list of records, a dict of equal-length columns "
        "or a dict of [[step, value], ...] series"
    )


def load_training_logs(
    source: PathLike | Sequence[PathLike] | Mapping[str, Any],
) -> dict[str, Curve]:
    """Collect curves from TensorBoard logs and/or metrics files.

    Args:
        source: A folder (its TensorBoard event files, and ``*.csv``/``*.jsonl``/``metrics*.json``
            files directly inside it), an event file, a metrics file, a list of those, or a mapping
            ``{name: Curve | (x, y) | y}`` of curves already in memory.

    Returns:
        ``{name: Curve}``; later sources win on a name collision.

    Raises:
        FileNotFoundError: For a missing path, or a folder without any log.
        TypeError: For an unsupported ``source``.
    """
    if isinstance(source, Mapping):
        out: dict[str, Curve] = {}
        for name, v in source.items():
            if isinstance(v, Curve):
                out[str(name)] = v
            elif isinstance(v, tuple) and len(v) == 2:
                x, y = np.asarray(v[0], dtype=np.float64), np.asarray(v[1], dtype=np.float64)
                out[str(name)] = Curve(str(name), x, y)
            else:
                y = np.asarray(v, dtype=np.float64).ravel()
                out[str(name)] = Curve(str(name), np.arange(y.size, dtype=np.float64), y)
        return out
    if isinstance(source, (str, os.PathLike)):
        sources: Iterable[PathLike] = [source]
    elif isinstance(source, Sequence):
        sources = source
    else:
        raise TypeError(f"source must be a path, a list of paths or a mapping of curves, got {type(source).__name__}")
    out = {}
    for s in sources:
        p = Path(s)
        if not p.exists():
            raise FileNotFoundError(f"log path {str(s)!r} does not exist")
        if p.is_dir():
            found = False
            if find_event_files(p):
                out.update(read_tensorboard_scalars(p))
                found = True
            for f in sorted(p.iterdir()):
                low = f.name.lower()
                if f.is_file() and (
                    low.endswith((".csv", ".tsv", ".jsonl")) or (low.startswith("metrics") and low.endswith(".json"))
                ):
                    out.update(read_metrics_file(f))
                    found = True
            if not found:
                raise FileNotFoundError(
                    f"{str(s)!r} holds no TensorBoard event file and no metrics file (*.csv, *.jsonl, metrics*.json)"
                )
        elif p.name.startswith("events.out.tfevents"):
            out.update(read_tensorboard_scalars(p))
        else:
            out.update(read_metrics_file(p))
    return out


def smooth(y: np.ndarray, weight: float) -> np.ndarray:
    """TensorBoard's debiased exponential moving average with smoothing ``weight`` in ``[0, 1)``."""
    if not 0.0 <= weight < 1.0:
        raise ValueError(f"smoothing must be in [0, 1), got {weight}")
    if weight == 0.0:
        return np.asarray(y, dtype=np.float64)
    out = np.empty(len(y), dtype=np.float64)
    last, debias = 0.0, 0.0
    for i, v in enumerate(np.asarray(y, dtype=np.float64)):
        last = last * weight + (1 - weight) * v
        debias = debias * weight + (1 - weight)
        out[i] = last / debias
    return out


def _panel_of(name: str) -> str:
    low = name.lower()
    if "loss" in low:
        return "loss"
    if low == "lr" or "learning_rate" in low or low.endswith("/lr") or low.endswith("_lr") or low.startswith("lr"):
        return "learning rate"
    return "metrics"


def plot_training_curves(
    source: PathLike | Sequence[PathLike] | Mapping[str, Any],
    *,
    keys: Sequence[str] | None = None,
    smoothing: float = 0.0,
    log_loss: bool = False,
    title: str | None = None,
    fig: Figure | None = None,
) -> Figure:
    """Loss, metric and learning-rate curves of a training run.

    Curves whose name contains ``loss`` go to the loss panel, learning rates to their own panel,
    the rest to the metrics panel; empty panels are left out. Each panel's x axis is labelled with
    what the steps count (``epoch``/``iteration`` from a metrics table, ``step`` for TensorBoard).

    Args:
        source: What :func:`load_training_logs` accepts (a bundle's log folder, files, or curves).
        keys: Only these curves (all by default).
        smoothing: TensorBoard-style smoothing weight in ``[0, 1)``; the raw curve is drawn faintly.
        log_loss: Log-scale y axis for the loss panel.
        title: Figure title.
        fig: Figure to draw into.

    Returns:
        The figure: one axes per non-empty panel, one line per curve (plus its faint raw line when
        smoothing).

    Raises:
        ValueError: For unknown ``keys`` or when there is nothing to plot.
    """
    curves = load_training_logs(source)
    if keys is not None:
        missing = [k for k in keys if k not in curves]
        if missing:
            raise ValueError(f"keys {missing} are not in the logs; available: {sorted(curves)}")
        curves = {k: curves[k] for k in keys}
    if not curves:
        raise ValueError("there are no curves to plot")
    panels: dict[str, list[Curve]] = {}
    for name in sorted(curves):
        panels.setdefault(_panel_of(name), []).append(curves[name])
    order = [p for p in ("loss", "metrics", "learning rate") if p in panels]
    fig = new_figure(fig, figsize=(5.2 * len(order), 4))
    axes = fig.subplots(1, len(order), squeeze=False)[0]
    for ax, panel in zip(axes, order):
        x_names = {c.x_name for c in panels[panel]}
        for c in panels[panel]:
            if smoothing > 0:
                (raw,) = ax.plot(c.x, c.y, lw=0.8, alpha=0.25)
                ax.plot(c.x, smooth(c.y, smoothing), lw=1.5, color=raw.get_color(), label=c.name)
            else:
                ax.plot(c.x, c.y, lw=1.5, marker="o" if len(c.x) <= 30 else None, ms=3, label=c.name)
        ax.set_xlabel(x_names.pop() if len(x_names) == 1 else "step")
        ax.set_title(panel, fontsize=10)
        ax.grid(alpha=0.3)
        if panel == "loss" and log_loss:
            ax.set_yscale("log")
        if panel == "learning rate":
            ax.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
        ax.legend(fontsize="small")
    if title is not None:
        fig.suptitle(title, fontsize=11)
    return fig
