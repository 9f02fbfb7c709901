"""The lesion classification metric, its scikit-learn reference, and where the bundle code lives.

``medmamba.metrics.binary_metric`` computes AUC and F1 with scikit-learn; these tests pin that its
values are scikit-learn's exactly (ties included) and show why torchmetrics' functional API is not
used instead: it differs in the last float32 bits and ranks log-odds above ~37 as ties.
"""

from __future__ import annotations

import ast
import importlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from medmamba.metrics import LesionMetric, roc_auc
from medmamba.metrics.lesion import binary_metric

sklearn_metrics = pytest.importorskip("sklearn.metrics")

REPO = Path(__file__).resolve().parents[1]


def _random_cases(seed: int, n: int, ties: bool) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, n)
    labels[:2] = (0, 1)  # both classes
    scores = rng.random(n)
    return (np.round(scores, 1) if ties else scores), labels


@pytest.mark.parametrize("ties", [False, True])
def test_auc_and_f1_equal_scikit_learn_exactly(ties: bool) -> None:
    for seed in range(20):
        scores, labels = _random_cases(seed, 50 + 7 * seed, ties)
        assert binary_metric("auc", scores, labels, 0.5) == sklearn_metrics.roc_auc_score(labels, scores)
        predicted = (scores >= 0.5).astype(np.int64)
        assert binary_metric("f1", scores, labels, 0.5) == sklearn_metrics.f1_score(labels, predicted, zero_division=0)
        assert roc_auc(scores, labels) == pytest.approx(sklearn_metrics.roc_auc_score(labels, scores), abs=1e-12)


def test_auc_ranks_log_odds_beyond_the_float64_sigmoid() -> None:
    # per-case slice AUCs are computed on log-odds; a sigmoid would make 38 and 40 both 1.0 (a tie)
    scores = np.array([38.0, 40.0, 1.0, -2.0])
    labels = np.array([0, 1, 1, 0])
    assert binary_metric("auc", scores, labels, 0.0) == pytest.approx(0.75)
    assert float(torch.sigmoid(torch.tensor(38.0, dtype=torch.float64))) == 1.0


def test_torchmetrics_differs_from_scikit_learn_in_float32_only() -> None:
    functional = pytest.importorskip("torchmetrics.functional.classification")
    scores, labels = _random_cases(3, 200, ties=True)
    ours = binary_metric("auc", scores, labels, 0.5)
    theirs = functional.binary_auroc(torch.from_numpy(scores), torch.from_numpy(labels))
    assert theirs.dtype == torch.float32
    assert float(theirs) == pytest.approx(ours, abs=1e-6)


def test_lesion_metric_volume_auc_is_scikit_learn_on_float64_probabilities() -> None:
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(8, 2, 6, generator=generator) * 10
    labels = torch.randint(0, 2, (8, 6), generator=generator)
    labels[:2] = 0  # two lesion-free volumes
    metric = LesionMetric("auc", "volume", aggregation="max")
    metric.reset()
    metric.update((logits, labels))
    log_odds = (logits[:, 1] - logits[:, 0]).amax(dim=1).double()
    expected = sklearn_metrics.roc_auc_score((labels != 0).any(dim=1).numpy(), torch.sigmoid(log_odds).numpy())
    assert metric.compute() == expected


# --------------------------------------------------------------------------------------- package layout
@pytest.mark.parametrize(
    ("task_module", "name", "kind_package"),
    [
        ("medmamba.apps.classification", "SliceLesionLabelsd", "medmamba.transforms"),
        ("medmamba.apps.classification", "SampleLesionLabeld", "medmamba.transforms"),
        ("medmamba.apps.classification", "LesionTissueLabeld", "medmamba.transforms"),
        ("medmamba.apps.classification", "RandStackLesionInsertd", "medmamba.transforms"),
        ("medmamba.apps.classification", "AMBIGUOUS", "medmamba.transforms"),
        ("medmamba.apps.classification", "LesionMetric", "medmamba.metrics"),
        ("medmamba.apps.classification", "ClassificationReport", "medmamba.handlers"),
        ("medmamba.apps.classification", "rank_zero_handlers", "medmamba.handlers"),
        ("medmamba.apps.classification", "VolumeClassifier", "medmamba.inferers"),
        ("medmamba.apps.classification", "lesion_log_odds", "medmamba.inferers"),
        ("medmamba.apps.classification", "FusedLesionMapClassifier", "medmamba.networks"),
        ("medmamba.apps.classification", "FusedMobileMamba", "medmamba.networks"),
        ("medmamba.apps.segmentation", "FlipTTAInferer", "medmamba.inferers"),
        ("medmamba.apps.segmentation", "VolumeSegmenter", "medmamba.inferers"),
        ("medmamba.apps.segmentation", "FusedMobileMambaSeg", "medmamba.networks"),
        ("medmamba.apps.deploy", "FuseOnLoad", "medmamba.networks"),
        ("medmamba.apps.deploy", "VolumePredictor", "medmamba.inferers"),
    ],
)
def test_bundle_config_names_are_the_kind_packages_objects(task_module: str, name: str, kind_package: str) -> None:
    kind = importlib.import_module(kind_package)
    assert name in kind.__all__
    assert getattr(importlib.import_module(task_module), name) is getattr(kind, name)


def test_segmentation_metrics_default_classes_are_the_tasks() -> None:
    from medmamba.apps.segmentation import TISSUE_CLASSES, SegmentationMetrics
    from medmamba.handlers import SegmentationMetrics as GenericSegmentationMetrics

    assert SegmentationMetrics(hd95=False).class_names == TISSUE_CLASSES
    assert SegmentationMetrics({1: "lesion"}, False).class_names == {1: "lesion"}
    assert isinstance(SegmentationMetrics(), GenericSegmentationMetrics)
    with pytest.raises(TypeError, match="class_names"):
        GenericSegmentationMetrics()  # type: ignore[call-arg]


def test_classification_task_constants_match_the_configs_and_transform_defaults() -> None:
    import inspect

    from medmamba.apps import classification as task

    configs = [json.loads(p.read_text()) for p in (REPO / "bundles" / "mobilemamba_classification" / "configs").glob("*.json")]
    for key, value in (("min_lesion_voxels", task.MIN_LESION_VOXELS), ("lesion_class", task.LESION_CLASS)):
        given = [c[key] for c in configs if isinstance(c, dict) and key in c]
        assert given and set(given) == {value}, (key, given)
    default = lambda cls, arg: inspect.signature(cls).parameters[arg].default  # noqa: E731
    assert default(task.SliceLesionLabelsd, "min_voxels") == task.MIN_LESION_VOXELS
    assert default(task.LesionTissueLabeld, "lesion_value") == task.LESION_CLASS
    assert default(task.RandLesionInsertd, "wm_label") == task.WHITE_MATTER_LABEL


def test_kind_packages_do_not_import_the_task_modules() -> None:
    offenders = []
    for folder in ("networks", "transforms", "inferers", "metrics", "handlers"):
        for path in sorted((REPO / "medmamba" / folder).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text())):
                names = [node.module or ""] if isinstance(node, ast.ImportFrom) else (
                    [a.name for a in node.names] if isinstance(node, ast.Import) else [])
                offenders += [f"{path.relative_to(REPO)}: {n}" for n in names if n.startswith("medmamba.apps")]
    assert offenders == []
