"""Lesion classification metrics at slice and volume level: AUC, accuracy and F1 as an ignite metric.

:class:`LesionMetric` reads a slice classifier's per-slice logits and the per-slice labels of
:class:`medmamba.transforms.SliceLesionLabelsd`; :class:`LesionCases` keeps them per volume for it
and for :class:`medmamba.handlers.ClassificationReport`.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch
from ignite.metrics import Metric
from ignite.metrics.metric import reinit__is_reduced

from medmamba.inferers.lesion_scores import check_aggregation, lesion_log_odds, lesion_probability, volume_log_odds

__all__ = ["LESION_LEVELS", "LESION_METRICS", "LesionCases", "LesionMetric", "binary_metric", "engine_pred_label"]

#: The metrics :class:`LesionMetric` computes.
LESION_METRICS = ("auc", "accuracy", "f1")
#: The levels it computes them at.
LESION_LEVELS = ("slice", "volume")


def binary_metric(metric: str, scores: np.ndarray, labels: np.ndarray, threshold: float) -> float:
    """AUC, accuracy or F1 (of class 1) of binary ``labels`` given ``scores``.

    Computed with scikit-learn, not torchmetrics: ``binary_auroc`` / ``binary_f1_score`` compute in
    float32 (up to ~1e-7 off) and sigmoid scores outside [0, 1], which ties log-odds above ~37.

    Args:
        metric: ``"auc"``, ``"accuracy"`` or ``"f1"``.
        scores: one score per case (any real scale for ``"auc"``, probabilities otherwise).
        labels: 0/1 per case.
        threshold: ``scores >= threshold`` is predicted positive (accuracy and F1).

    Returns:
        The metric; ``nan`` without cases, and for AUC (with a warning) with a single class.
    """
    if labels.size == 0:
        return float("nan")
    if metric == "auc":
        if np.unique(labels).size < 2:
            warnings.warn("AUC is undefined with a single class among the labels; returning nan.", stacklevel=3)
            return float("nan")
        from sklearn.metrics import roc_auc_score

        return float(roc_auc_score(labels, scores))
    predicted = (scores >= threshold).astype(np.int64)
    if metric == "accuracy":
        return float((predicted == labels).mean())
    from sklearn.metrics import f1_score

    return float(f1_score(labels, predicted, zero_division=0))


def engine_pred_label(output: Any) -> tuple[Any, Any]:
    """``(pred, label)`` of an engine output: a dict, a decollated list of dicts, or a pair.

    Raises:
        TypeError: any other output.
    """
    if isinstance(output, Mapping):
        return output["pred"], output["label"]
    if isinstance(output, (list, tuple)) and output and isinstance(output[0], Mapping):
        return [o["pred"] for o in output], [o["label"] for o in output]
    if isinstance(output, (list, tuple)) and len(output) == 2:
        return output[0], output[1]
    raise TypeError(f"engine output must be a dict with 'pred' and 'label' or a list of them, got {type(output).__name__}.")


def _as_cases(pred: Any, label: Any) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per-volume ``(slice_log_odds (S,), slice_labels (S,))`` pairs of a batch.

    Raises:
        ValueError: ``pred`` is not per-slice logits ``(B, K, S)`` or ``label`` has not one label per slice.
    """
    if isinstance(pred, (list, tuple)):
        cases = []
        for p, y in zip(pred, label):
            cases.extend(_as_cases(torch.as_tensor(p)[None], torch.as_tensor(y)[None]))
        return cases
    p = torch.as_tensor(pred).detach().float().cpu()
    y = torch.as_tensor(label).detach().cpu()
    if p.ndim == 2:  # (K, S): one volume
        p, y = p[None], y.reshape(1, -1)
    if p.ndim != 3:
        raise ValueError(f"pred must hold per-slice logits (B, K, S), got shape {tuple(p.shape)}.")
    z = lesion_log_odds(p, class_dim=1)
    y = y.reshape(z.shape[0], -1).long()
    if y.shape != z.shape:
        raise ValueError(f"label must hold one label per slice, shape {tuple(z.shape)}, got {tuple(y.shape)}.")
    return [(z[b], y[b]) for b in range(z.shape[0])]


class LesionCases:
    """Per-volume slice log-odds and labels, and the slice / volume arrays the metrics need.

    Args:
        aggregation: volume aggregation of the slice log-odds (:func:`medmamba.inferers.volume_log_odds`).
        top_k: for ``"topk"``.

    Attributes:
        cases: ``(slice_log_odds (S,), slice_labels (S,))`` per volume, in the order added.
    """

    def __init__(self, aggregation: str, top_k: int | float) -> None:
        self.aggregation = aggregation
        self.top_k = top_k
        self.cases: list[tuple[torch.Tensor, torch.Tensor]] = []

    def add(self, pred: Any, label: Any) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Add the volumes of a batch (per-slice logits ``(B, K, S)``, labels ``(B, S)``); returns them."""
        new = _as_cases(pred, label)
        self.cases.extend(new)
        return new

    def slice_arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """Slice probabilities (float64) and labels of all non-ambiguous slices."""
        if not self.cases:
            return np.zeros(0), np.zeros(0, dtype=np.int64)
        z = torch.cat([c[0] for c in self.cases])
        y = torch.cat([c[1] for c in self.cases])
        keep = y >= 0
        return torch.sigmoid(z[keep].double()).numpy(), y[keep].numpy()

    def volume_log_odds(self, z: torch.Tensor) -> float:
        """The case's volume log-odds (its ranking score: a float32 probability is 1.0 from about 17)."""
        return float(volume_log_odds(z, self.aggregation, self.top_k))

    def volume_score(self, z: torch.Tensor) -> float:
        """The case's volume probability, in float64 (distinct up to about 36 log-odds)."""
        return lesion_probability(self.volume_log_odds(z))

    def volume_arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """Volume probabilities (float64) and labels (1: any lesion voxel) of all volumes."""
        scores = np.array([self.volume_score(z) for z, _ in self.cases], dtype=np.float64)
        labels = np.array([int(bool((y != 0).any())) for _, y in self.cases], dtype=np.int64)
        return scores, labels


class LesionMetric(Metric):
    """AUC, accuracy or F1 of lesion classification at slice or volume level (an ignite metric).

    Reads ``pred`` (per-slice logits ``(B, K, S)``, as :class:`medmamba.inferers.SliceStackInferer`
    returns for a slice classifier) and ``label`` (per-slice labels ``(B, S)`` from
    :class:`medmamba.transforms.SliceLesionLabelsd`) from the engine output (a dict, or decollated
    dicts).

    * ``level="slice"``: every slice whose label is not :data:`medmamba.transforms.AMBIGUOUS`;
      score ``sigmoid(log-odds)``.
    * ``level="volume"``: one score per volume, ``sigmoid`` of
      :func:`medmamba.inferers.volume_log_odds`; label 1 when any slice holds lesion voxels.

    Accuracy and F1 (of the lesion class) threshold the probability at ``threshold``; AUC is the
    ROC AUC (scikit-learn; see :func:`binary_metric`), ``nan`` with a warning when only one class
    is present.

    By default each process computes on what it saw (no all-gather): run validation un-split (every
    DDP rank sees every validation volume), as the bundle's ``multi_gpu_train.json`` does. With
    ``gather=True`` (evaluation split over the ranks, ``multi_gpu_evaluate.json``) the volumes of
    all ranks are gathered first (:func:`medmamba.data.distributed_batch.all_gather_in_order`).

    Args:
        metric: ``"auc"``, ``"accuracy"`` or ``"f1"``.
        level: ``"slice"`` or ``"volume"``.
        aggregation: volume aggregation of the slice log-odds (:func:`medmamba.inferers.volume_log_odds`).
        top_k: for ``"topk"``.
        threshold: probability threshold for accuracy and F1.
        output_transform: maps the engine output to ``(pred, label)``; default reads the keys.
        device: ignite's metric device (unused: the values are kept on the CPU).
        gather: compute on the volumes of all ranks of an initialised process group.

    Raises:
        ValueError: an unknown ``metric``, ``level`` or ``aggregation``, or a ``threshold`` outside (0, 1).
    """

    def __init__(
        self,
        metric: str = "auc",
        level: str = "volume",
        aggregation: str = "topk",
        top_k: int | float = 2,
        threshold: float = 0.5,
        output_transform: Callable[[Any], Any] = engine_pred_label,
        device: str | torch.device = "cpu",
        gather: bool = False,
    ) -> None:
        if metric not in LESION_METRICS:
            raise ValueError(f"metric must be one of {LESION_METRICS}, got {metric!r}.")
        if level not in LESION_LEVELS:
            raise ValueError(f"level must be one of {LESION_LEVELS}, got {level!r}.")
        check_aggregation(aggregation, top_k)
        if not 0.0 < float(threshold) < 1.0:
            raise ValueError(f"threshold must be a probability in (0, 1), got {threshold!r}.")
        self.metric = metric
        self.level = level
        self.threshold = float(threshold)
        self.gather = bool(gather)
        self._store = LesionCases(aggregation, top_k)
        super().__init__(output_transform=output_transform, device=device)

    @reinit__is_reduced
    def reset(self) -> None:
        self._store = LesionCases(self._store.aggregation, self._store.top_k)

    @reinit__is_reduced
    def update(self, output: Any) -> None:
        pred, label = output
        self._store.add(pred, label)

    def compute(self) -> float:
        store = self._store
        if self.gather:
            from medmamba.data.distributed_batch import all_gather_in_order

            store = LesionCases(store.aggregation, store.top_k)
            store.cases = all_gather_in_order(self._store.cases)
        scores, labels = store.slice_arrays() if self.level == "slice" else store.volume_arrays()
        return binary_metric(self.metric, scores, labels, self.threshold)
