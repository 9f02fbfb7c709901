"""An evaluation's report of lesion classification: the flat ``metrics.json`` and per-case ``predictions.csv``."""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from medmamba.data.discovery import scan_stem
from medmamba.inferers.lesion_rule import check_rules, rule_callers
from medmamba.inferers.lesion_scores import check_aggregation, lesion_probability
from medmamba.metrics.lesion import LesionCases, binary_metric, engine_pred_label

if TYPE_CHECKING:
    from ignite.engine import Engine

__all__ = ["ClassificationReport"]

logger = logging.getLogger(__name__)

#: When this module was imported: a bundle imports it while parsing its config, so the time since
#: then is the run's wall time up to the moment it is read (model loading included).
_IMPORTED_AT = time.perf_counter()


def _case_ids(batch: Any, n: int) -> list[str]:
    """Case ids of a batch: its ``id`` entry, else the image file names."""
    if isinstance(batch, Mapping):
        ids = batch.get("id")
        if ids is not None:
            ids = [ids] if isinstance(ids, str) else list(ids)
            if len(ids) == n:
                return [str(i) for i in ids]
        meta = getattr(batch.get("image"), "meta", None) or {}
        names = meta.get("filename_or_obj")
        if names is not None:
            names = [names] if isinstance(names, str) else list(names)
            if len(names) == n:
                return [scan_stem(str(p)) for p in names]
    if isinstance(batch, (list, tuple)) and len(batch) == n and all(isinstance(b, Mapping) for b in batch):
        return [_case_ids(b, 1)[0] for b in batch]
    return [f"case-{i:04d}" for i in range(n)]


class ClassificationReport:
    """Ignite handler writing an evaluation's flat ``metrics.json`` and per-case ``predictions.csv``.

    Attach it to the evaluator (a MONAI ``val_handlers`` entry). It records every volume's slice
    scores; on completion it writes

    * ``<output_dir>/<metrics_file>``: a flat JSON of ``engine.state.metrics`` (floats), the volume
      and slice counts, the aggregation, ``checkpoint``, ``wall_time_s`` (from the import of this
      module, i.e. the bundle's config parsing, to the end of the evaluation: model loading and data
      preprocessing included) and ``evaluation_time_s`` (the evaluator's run);
    * ``<output_dir>/predictions.csv``: per case ``id``, ``label`` (lesion present),
      ``lesion_probability``, ``lesion_log_odds`` (the same score before the sigmoid: it still ranks
      cases whose rounded probabilities are all 1.0), ``predicted``, ``n_slices``,
      ``n_positive_slices``, and the slice-level AUC inside the case (through
      :func:`medmamba.io.write_results_csv`: no identifying DICOM values).

    With ``rules`` each case also gets ``<rule.name>_voxels`` per lesion rule (its cluster,
    :class:`medmamba.inferers.LesionRule`, scored after each iteration from what ``inferer`` kept of it
    and the batch's unnormalised image), ``predicted`` becomes the bundle's decision (the network's
    score at ``threshold`` **or** a rule above its threshold in ``rule_thresholds``, as
    ``inference.json`` decides), and the JSON gets ``<rule.name>_threshold_voxels``,
    ``decision_sensitivity`` and ``decision_specificity`` of that decision beside the metrics, which
    stay the network's (its AUC, and accuracy and F1 at ``threshold``).

    Not ``monai.handlers.MetricsSaver``: it writes ``metrics.csv`` and one ``<metric>_raw.csv`` per
    metric, not this JSON and one per-case table (read by ``benchmarks/test_split_intervals.py``).

    Args:
        output_dir: output folder.
        checkpoint: the evaluated checkpoint (recorded as given).
        aggregation, top_k: the volume aggregation (as in :class:`medmamba.metrics.LesionMetric`).
        threshold: probability threshold of ``predicted``.
        metrics_file: the JSON's file name.
        extra: more entries for the JSON (simple values).
        gather: under an initialised process group, gather the volumes of all ranks (in input
            order; evaluation split over the ranks) and write on rank 0 only.
        rules: the bundle's lesion rules (empty: none scored).
        rule_thresholds: their thresholds in voxels by name (``None`` or absent: reported, not decided with).
        inferer: the evaluator's inferer (its chain holds what the rules read); needed with ``rules``.
        unnormalised_key: the batch key of the volumes before their intensity normalisation.

    Raises:
        ValueError: an unknown ``aggregation`` or a ``top_k`` out of range, ``rules`` without
            ``inferer``, or thresholds that :func:`medmamba.inferers.lesion_rule.check_rules` rejects.
    """

    def __init__(
        self,
        output_dir: str | os.PathLike[str],
        checkpoint: str | os.PathLike[str] | None = None,
        aggregation: str = "topk",
        top_k: int | float = 2,
        threshold: float = 0.5,
        metrics_file: str = "metrics.json",
        extra: Mapping[str, Any] | None = None,
        gather: bool = False,
        rules: Sequence[Any] = (),
        rule_thresholds: Mapping[str, float | None] | None = None,
        inferer: Any = None,
        unnormalised_key: str = "unnormalised_image",
    ) -> None:
        check_aggregation(aggregation, top_k)
        self.rules, self.rule_thresholds = check_rules(rules, rule_thresholds)
        if self.rules and inferer is None:
            raise ValueError("rules need inferer, the evaluator's inferer whose chain the rules read.")
        self.inferer = inferer
        self.unnormalised_key = unnormalised_key
        self._rule: list[list[int | None]] = []
        self.gather = bool(gather)
        self.output_dir = Path(output_dir)
        self.checkpoint = None if checkpoint is None else os.fspath(checkpoint)
        self.threshold = float(threshold)
        self.metrics_file = metrics_file
        self.extra = dict(extra or {})
        self._store = LesionCases(aggregation, top_k)
        self._ids: list[str] = []
        self._started = time.perf_counter()
        self.metrics: dict[str, Any] = {}

    def attach(self, engine: Engine) -> None:
        """Register on the engine's ``STARTED``, ``ITERATION_COMPLETED`` and ``COMPLETED`` events."""
        from ignite.engine import Events

        engine.add_event_handler(Events.STARTED, self._on_started)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._on_iteration)
        engine.add_event_handler(Events.COMPLETED, self._on_completed)

    def _on_started(self, engine: Engine) -> None:
        self._store = LesionCases(self._store.aggregation, self._store.top_k)
        self._ids = []
        self._rule = []
        self._started = time.perf_counter()

    def _on_iteration(self, engine: Engine) -> None:
        pred, label = engine_pred_label(engine.state.output)
        new = self._store.add(pred, label)
        self._ids.extend(_case_ids(engine.state.batch, len(new)))
        if self.rules:
            batch = engine.state.batch
            if not isinstance(batch, Mapping) or self.unnormalised_key not in batch:
                raise KeyError(f"the lesion rules need the unnormalised volumes under {self.unnormalised_key!r} in the "
                               f"batch (CopyItemsd before the normalisation, kept by SelectItemsd).")
            images = batch[self.unnormalised_key]
            self._rule.extend([rule(images[b], self.inferer, index=b) for rule in self.rules] for b in range(len(new)))

    def _on_completed(self, engine: Engine) -> None:
        now = time.perf_counter()
        if self.gather:
            from medmamba.data.distributed_batch import all_gather_in_order

            rule = self._rule if self.rules else [[]] * len(self._ids)
            triples = all_gather_in_order(list(zip(self._ids, self._store.cases, rule)))
            self._ids, self._store.cases = [i for i, _, _ in triples], [c for _, c, _ in triples]
            self._rule = [r for _, _, r in triples] if self.rules else []
        rows = []
        for n, (case_id, (z, y)) in enumerate(zip(self._ids, self._store.cases)):
            log_odds = self._store.volume_log_odds(z)
            prob = lesion_probability(log_odds)
            keep = y >= 0
            inner = binary_metric("auc", z[keep].double().numpy(), y[keep].numpy(), 0.0) if (
                keep.any() and y[keep].unique().numel() == 2) else None
            rows.append({
                "id": case_id,
                "label": int(bool((y != 0).any())),
                "lesion_probability": round(prob, 6),
                "lesion_log_odds": round(log_odds, 4),
                "predicted": int(prob >= self.threshold),
                "n_slices": int(y.numel()),
                "n_positive_slices": int((y == 1).sum()),
                "slice_auc_in_case": None if inner is None else round(inner, 6),
            })
            if self.rules:
                voxels = self._rule[n]
                rows[-1].update({f"{rule.name}_voxels": v for rule, v in zip(self.rules, voxels)})
                if rule_callers(False, self.rules, voxels, self.rule_thresholds):
                    rows[-1]["predicted"] = 1
        slice_scores, _ = self._store.slice_arrays()
        metrics = {k: _plain(v) for k, v in engine.state.metrics.items()}
        doc = {
            **metrics,
            "n_volumes": len(self._store.cases),
            "n_volumes_positive": int(sum(r["label"] for r in rows)),
            "n_slices": int(slice_scores.size),
            "aggregation": self._store.aggregation,
            "top_k": self._store.top_k,
            "threshold": self.threshold,
            "checkpoint": self.checkpoint,
            "evaluation_time_s": round(now - self._started, 2),
            "wall_time_s": round(now - _IMPORTED_AT, 2),
            **{k: _plain(v) for k, v in self.extra.items()},
        }
        if self.rules:
            positives = [r["predicted"] for r in rows if r["label"]]
            negatives = [r["predicted"] for r in rows if not r["label"]]
            doc.update({f"{rule.name}_threshold_voxels": self.rule_thresholds[rule.name] for rule in self.rules})
            doc["decision_sensitivity"] = sum(positives) / len(positives) if positives else None
            doc["decision_specificity"] = 1 - sum(negatives) / len(negatives) if negatives else None
        if self.gather and torch.distributed.is_available() and torch.distributed.is_initialized() and (
                torch.distributed.get_rank() != 0):
            self.metrics = doc  # rank 0 writes the gathered report
            return
        from medmamba.io.atomic import atomic_write_text
        from medmamba.io.results import write_results_csv

        self.output_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.output_dir / self.metrics_file, json.dumps(doc, indent=1) + "\n")
        write_results_csv(self.output_dir / "predictions.csv", rows)
        self.metrics = doc
        logger.info("evaluation: %s -> %s", {k: doc[k] for k in metrics}, self.output_dir / self.metrics_file)


def _plain(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        value = value.item() if value.numel() == 1 else value.tolist()
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
