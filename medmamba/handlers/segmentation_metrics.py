"""Segmentation metrics per case and per class (Dice, HD95 in mm) as an ignite handler, with their files."""

from __future__ import annotations

import json
import logging
import math
import os
import time
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

if TYPE_CHECKING:
    from ignite.engine import Engine

__all__ = ["SegmentationMetrics"]

logger = logging.getLogger(__name__)


def _spacing(img: Any, ndim: int) -> list[float] | None:
    affine = getattr(img, "affine", None)
    if affine is None:
        return None
    a = torch.as_tensor(affine, dtype=torch.float64)
    if a.shape[-1] < ndim + 1:
        return None
    return [float(v) for v in torch.linalg.norm(a[:ndim, :ndim], dim=0)]


def _one_hot(t: torch.Tensor, num_classes: int) -> torch.Tensor:
    t = torch.as_tensor(t).detach().cpu()
    if hasattr(t, "as_tensor"):
        t = t.as_tensor()
    if t.shape[0] == num_classes:
        return t.float()
    if t.shape[0] != 1:
        raise ValueError(f"expected a label map (1, *spatial) or one-hot ({num_classes}, *spatial), got {tuple(t.shape)}.")
    return torch.nn.functional.one_hot(t[0].round().long().clamp(0, num_classes - 1), num_classes).movedim(-1, 0).float()


def _finite_mean(values: Sequence[float]) -> float:
    vals = [v for v in values if v is not None and math.isfinite(v)]
    return float(np.mean(vals)) if vals else float("nan")


class SegmentationMetrics:
    """Ignite handler: Dice and HD95 per class and per case, their means, and their JSON/CSV files.

    Reads ``engine.state.output`` after the evaluator's post-processing (a list of per-case dicts
    with ``pred`` and ``label``, label maps ``(1, *spatial)`` or one-hot), computes per case and per
    foreground class the Dice (MONAI ``compute_dice``) and, with ``hd95``, the 95th-percentile
    Hausdorff distance in mm (MONAI ``compute_hausdorff_distance`` with the voxel spacing read from
    the prediction's affine), and at the end of the epoch puts scalars into
    ``engine.state.metrics``: ``<prefix>dice_<class>``, ``<prefix>mean_dice`` (mean over classes of
    the per-class means over cases), ``<prefix>hd95_<class>``, ``<prefix>mean_hd95``. Under
    ``torch.distributed`` the per-case rows of all ranks are gathered first, back in input order
    (the ranks' shares as MONAI's ``DistributedSampler(shuffle=False, even_divisible=False)`` splits
    them; :func:`medmamba.data.distributed_batch.all_gather_in_order`).

    Attach it before the stats / TensorBoard / checkpoint handlers so that they see its metrics.

    Not ``monai.handlers.MetricsSaver``: it writes ``metrics.csv`` and one ``<metric>_raw.csv`` per
    metric, not the flat JSON and the one per-case table (``id,dice_csf,...``) that the bundle docs
    and ``benchmarks/test_split_intervals.py`` read.

    Args:
        class_names: foreground class index -> name, e.g. ``{1: "csf", 2: "gm", 3: "wm"}`` (the
            metric names are ``dice_<name>``...; the segmentation bundle's default is
            :data:`medmamba.apps.segmentation.TISSUE_CLASSES`).
        hd95: also compute HD95 (slower: distance transforms).
        prefix: metric name prefix (e.g. ``"val_"``).
        output_dir: when given, rank 0 writes ``<output_dir>/<metrics_filename>`` (a flat JSON of the
            metrics plus ``extra``, ``num_cases`` and ``wall_time_s``, seconds since this handler was
            built) and ``<output_dir>/<per_case_filename>`` at the end of each epoch.
        extra: more entries for the JSON (e.g. ``{"checkpoint": ...}``).
        id_key: batch key of the case id.
        metrics_filename: file name of the JSON.
        per_case_filename: file name of the per-case CSV (``None``: not written).

    Raises:
        ValueError: ``class_names`` is empty or holds an index below 1.
    """

    def __init__(
        self,
        class_names: Mapping[int, str],
        hd95: bool = True,
        prefix: str = "",
        output_dir: str | os.PathLike[str] | None = None,
        extra: Mapping[str, Any] | None = None,
        id_key: str = "id",
        metrics_filename: str = "metrics.json",
        per_case_filename: str | None = "metrics_per_case.csv",
    ) -> None:
        names = dict(class_names)
        if not names or any(int(k) < 1 for k in names):
            raise ValueError(f"class_names must map foreground class indices (>= 1) to names, got {names!r}.")
        self.class_names = {int(k): str(v) for k, v in sorted(names.items())}
        self.num_classes = max(self.class_names) + 1
        self.hd95 = bool(hd95)
        self.prefix = str(prefix)
        self.output_dir = None if output_dir is None else Path(output_dir)
        self.extra = dict(extra or {})
        self.id_key = id_key
        self.metrics_filename = metrics_filename
        self.per_case_filename = per_case_filename
        self.rows: list[dict[str, Any]] = []
        self.metrics: dict[str, float] = {}
        self._t0 = time.perf_counter()

    def attach(self, engine: Engine) -> None:
        """Register on ``EPOCH_STARTED`` (reset), ``ITERATION_COMPLETED`` and ``EPOCH_COMPLETED``."""
        from ignite.engine import Events

        engine.add_event_handler(Events.EPOCH_STARTED, self.reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self.update)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self.complete)

    def reset(self, engine: Engine | None = None) -> None:
        """Forget the cases of the previous epoch."""
        self.rows = []

    def case_metrics(self, pred: torch.Tensor, label: torch.Tensor) -> dict[str, float]:
        """Dice (and HD95 in mm) per class of one case (label maps or one-hot, channel first)."""
        from monai.metrics import compute_dice, compute_hausdorff_distance

        p = _one_hot(pred, self.num_classes)[None]
        y = _one_hot(label, self.num_classes)[None]
        if p.shape != y.shape:
            raise ValueError(f"pred shape {tuple(p.shape)} != label shape {tuple(y.shape)}.")
        row: dict[str, float] = {}
        dice = compute_dice(p, y, include_background=True, ignore_empty=True)[0]
        for c, name in self.class_names.items():
            row[f"dice_{name}"] = float(dice[c])
        if self.hd95:
            spacing = _spacing(label, p.ndim - 2) or _spacing(pred, p.ndim - 2)
            named = list(self.class_names)  # only the reported classes (the background's is the costliest)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                hd = compute_hausdorff_distance(
                    p[:, named], y[:, named], include_background=True, percentile=95, spacing=spacing
                )[0]
            for j, name in enumerate(self.class_names.values()):
                row[f"hd95_{name}"] = float(hd[j])
        return row

    def update(self, engine: Engine) -> None:
        """Add the cases of the current iteration."""
        output = engine.state.output
        batch = engine.state.batch
        items = output if isinstance(output, list) else [output]
        batches = batch if isinstance(batch, list) else [batch] * len(items)
        for item, b in zip(items, batches):
            if not isinstance(item, Mapping) or "pred" not in item or "label" not in item:
                raise ValueError("SegmentationMetrics needs per-case dicts with 'pred' and 'label' in engine.state.output.")
            row: dict[str, Any] = {"id": str(b.get(self.id_key, len(self.rows))) if isinstance(b, Mapping) else str(len(self.rows))}
            row.update(self.case_metrics(item["pred"], item["label"]))
            self.rows.append(row)

    def _gather(self) -> list[dict[str, Any]]:
        from medmamba.data.distributed_batch import all_gather_in_order

        return all_gather_in_order(self.rows)

    def summarize(self, rows: Sequence[Mapping[str, Any]]) -> dict[str, float]:
        """The flat metrics of per-case rows (means over cases, ignoring undefined values)."""
        out: dict[str, float] = {}
        kinds = ("dice", "hd95") if self.hd95 else ("dice",)
        for kind in kinds:
            per_class = []
            for name in self.class_names.values():
                value = _finite_mean([r.get(f"{kind}_{name}", float("nan")) for r in rows])
                out[f"{self.prefix}{kind}_{name}"] = value
                per_class.append(value)
            out[f"{self.prefix}mean_{kind}"] = _finite_mean(per_class)
        return out

    def complete(self, engine: Engine | None = None) -> dict[str, float]:
        """Compute the epoch's metrics, store them in ``engine.state.metrics`` and write the files."""
        rows = self._gather()
        self.metrics = self.summarize(rows)
        if engine is not None:
            engine.state.metrics.update(self.metrics)
        rank0 = not (torch.distributed.is_available() and torch.distributed.is_initialized()) or torch.distributed.get_rank() == 0
        if self.output_dir is not None and rank0:
            self.write(rows)
        return self.metrics

    def write(self, rows: Sequence[Mapping[str, Any]]) -> Path:
        """Write the flat metrics JSON (and the per-case CSV) to ``output_dir``."""
        from medmamba.io.atomic import atomic_write_text
        from medmamba.io.results import write_results_csv

        if self.output_dir is None:
            raise ValueError("output_dir is not set.")
        self.output_dir.mkdir(parents=True, exist_ok=True)
        doc: dict[str, Any] = {k: (round(v, 6) if math.isfinite(v) else None) for k, v in self.metrics.items()}
        doc["num_cases"] = len(rows)
        doc.update({str(k): (os.fspath(v) if isinstance(v, os.PathLike) else v) for k, v in self.extra.items()})
        doc["wall_time_s"] = round(time.perf_counter() - self._t0, 2)
        path = self.output_dir / self.metrics_filename
        atomic_write_text(path, json.dumps(doc, indent=1) + "\n")
        if self.per_case_filename:
            write_results_csv(self.output_dir / self.per_case_filename, [dict(r) for r in rows])
        logger.info("metrics: %s -> %s", {k: doc[k] for k in self.metrics}, path)
        return path
