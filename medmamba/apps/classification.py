"""The ``mobilemamba_classification`` bundle's task: 2.5D lesion classification of brain MR volumes.

The bundle (``bundles/mobilemamba_classification``) classifies axial slices of a brain MR volume as
"lesion present" or not with a 2D network fed ``2k + 1`` neighbouring slices as channels, and
classifies the volume by aggregating the per-slice scores. Its configs build everything from MONAI
and medmamba components; this module holds the task itself:

- :func:`classify`: NIfTI files or DICOM series in (found by :func:`medmamba.data.find_scans`),
  ``probabilities.csv`` out (per-case lesion probability and label; per-slice probabilities in a
  JSON per case), one failing case never stopping the batch;
- the task constants: :data:`CLASS_NAMES`, and the default data set's label conventions the
  configs repeat (:data:`MIN_LESION_VOXELS`, :data:`LESION_CLASS`, :data:`WHITE_MATTER_LABEL`).

The generic pieces live in the package's kind folders and are re-exported here, because the
bundle's configs name them ``medmamba.apps.classification.<name>``:

- lesion labels (:mod:`medmamba.transforms.lesion_labels`): :class:`SliceLesionLabelsd`,
  :class:`SampleLesionLabeld`, :class:`LesionTissueLabeld`, :func:`slice_lesion_labels`,
  :data:`AMBIGUOUS`; synthetic lesions (:mod:`medmamba.transforms.lesion_insertion`):
  :class:`RandLesionInsertd`, :class:`RandStackLesionInsertd`;
- scores (:mod:`medmamba.inferers.lesion_scores`): :func:`lesion_log_odds`, :func:`volume_log_odds`;
  the predictor :class:`VolumeClassifier` (:mod:`medmamba.inferers.volume_predictor`);
- :class:`LesionMetric` (:mod:`medmamba.metrics.lesion`); the handlers :class:`ClassificationReport`
  and :func:`rank_zero_handlers` (:mod:`medmamba.handlers`);
- networks (:mod:`medmamba.networks.fuse_on_load`): :class:`FuseOnLoad`, :class:`FusedMobileMamba`,
  :class:`FusedLesionMapClassifier`; :func:`load_network` and :func:`export_onnx` from
  :mod:`medmamba.apps.deploy`.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

from medmamba.apps.deploy import export_onnx, load_network
from medmamba.apps.pipeline import brain_volume_warning
from medmamba.data.discovery import find_scans
from medmamba.handlers.classification_report import ClassificationReport
from medmamba.handlers.rank_zero import rank_zero_handlers
from medmamba.inferers.brain_extraction import SkullStrippingInferer
from medmamba.inferers.contrast_polarity import analysed_polarity
from medmamba.inferers.lesion_rule import LesionRule, check_rules, rule_callers
from medmamba.inferers.lesion_scores import lesion_log_odds, volume_log_odds
from medmamba.inferers.volume_predictor import VolumeClassifier
from medmamba.io.geometry import slices_to_source, source_geometry, voxel_volume_ml
from medmamba.metrics.lesion import LesionMetric
from medmamba.networks.fuse_on_load import FusedLesionMapClassifier, FusedMobileMamba, FuseOnLoad
from medmamba.transforms.lesion_insertion import RandLesionInsertd, RandStackLesionInsertd
from medmamba.transforms.lesion_labels import (
    AMBIGUOUS,
    LesionTissueLabeld,
    SampleLesionLabeld,
    SliceLesionLabelsd,
    slice_lesion_labels,
)

__all__ = [
    "AMBIGUOUS",
    "CLASS_NAMES",
    "LESION_CLASS",
    "MIN_LESION_VOXELS",
    "WHITE_MATTER_LABEL",
    "ClassificationReport",
    "FuseOnLoad",
    "FusedLesionMapClassifier",
    "FusedMobileMamba",
    "LesionMetric",
    "LesionTissueLabeld",
    "RandLesionInsertd",
    "RandStackLesionInsertd",
    "SampleLesionLabeld",
    "SliceLesionLabelsd",
    "VolumeClassifier",
    "classify",
    "export_onnx",
    "find_scans",
    "lesion_log_odds",
    "load_network",
    "rank_zero_handlers",
    "slice_lesion_labels",
    "volume_log_odds",
]

logger = logging.getLogger(__name__)

#: Class index -> name.
CLASS_NAMES: tuple[str, str] = ("no lesion", "lesion present")
#: Lesion voxels that make a slice positive: the rule of the default data set's
#: ``datalist_classification_slice.json`` (the configs' ``min_lesion_voxels``; ``min_voxels`` of the
#: label transforms).
MIN_LESION_VOXELS = 5
#: Class index of lesion in the dense target of the lesion-map classifier: after background and the
#: default data set's three tissue classes (the configs' ``lesion_class``; ``lesion_value`` of
#: :class:`LesionTissueLabeld`).
LESION_CLASS = 4
#: White-matter label of the default data set's ``tissue.nii.gz`` (``wm_label`` of the lesion insertion).
WHITE_MATTER_LABEL = 3


def _slice_positions_mm(img: Any, n_slices: int, axis: int = 2) -> list[float] | None:
    """World (RAS) coordinate along the slice normal of each slice centre of a preprocessed volume."""
    affine = getattr(img, "affine", None)
    if affine is None:
        return None
    a = torch.as_tensor(affine, dtype=torch.float64)
    if a.shape != (4, 4):
        return None
    column = a[:3, axis]
    normal = column / column.norm().clamp_min(1e-12)
    origin = a[:3, 3]
    return [round(float(torch.dot(origin + column * s, normal)), 3) for s in range(n_slices)]


def classify(
    input_path: str | os.PathLike[str],
    output_dir: str | os.PathLike[str],
    predictor: VolumeClassifier,
    preprocessing: Callable[[Any], Any],
    threshold: float = 0.5,
    write_slice_probabilities: bool = True,
    report_name: str = "probabilities",
    threshold_log_odds: float | None = None,
    warnings_key: str = "scan_warnings",
    weighting_key: str = "scan_weighting",
    brain_extraction: SkullStrippingInferer | None = None,
    brain_volume_range_ml: Sequence[float] | None = None,
    rules: Sequence[LesionRule] = (),
    rule_thresholds: Mapping[str, float | None] | None = None,
    unnormalised_key: str = "unnormalised_image",
) -> dict[str, Any]:
    """Classify every scan under ``input_path``; write ``<output_dir>/probabilities.csv``.

    Per case the report row holds ``lesion_probability`` (volume level), ``label`` (1 = lesion
    present, at ``threshold``, or where a lesion rule's cluster exceeds its threshold in
    ``rule_thresholds``: ``decided_by`` then says which called it), ``class_name``, ``n_slices`` (slices of the input), ``top_slice``
    (index of the input's most suspicious slice), ``slice_axis`` (the input's array axis those
    slices are taken along), ``weighting`` (the scan's MR weighting left by the preprocessing under
    ``weighting_key``, :class:`medmamba.transforms.CheckMRWeightingd`: ``T1``, ``unknown``, or another
    weighting analysed with ``on_mismatch="warn"``; empty without it), ``contrast_polarity`` (``inverted``
    where the predictor's contrast-polarity check analysed a T2-like scan inverted, else ``given``:
    :func:`medmamba.inferers.analysed_polarity`) and ``warnings`` (scan plausibility flags left by the preprocessing under
    ``warnings_key``, joined by "; "); failed cases are recorded with their reason and the
    batch goes on (:func:`medmamba.data.run_batch`, which also keeps identifying DICOM values out of
    the report). Case ids are those of :func:`find_scans` (``sub-018_dicom`` for the single series
    folder ``sub-018/dicom``).

    The network classifies the axial slices of the preprocessed volume (RAS, resampled to the
    training spacing, foreground-cropped); the per-slice results refer to the *input's* slices along
    its array axis closest to the network's slice normal (:func:`medmamba.io.geometry.slices_to_source`):
    each input slice gets the largest probability of the network slices overlapping it, ``None``
    where it was cropped away as background. With ``write_slice_probabilities`` each case also gets
    ``<output_dir>/<case>/slice_probabilities.json``: per input slice its index, position along the
    network's slice normal in mm (RAS world coordinates) and lesion probability, and the network's
    own slices (``network_slices``) likewise.

    Args:
        input_path: see :func:`find_scans`.
        output_dir: output folder.
        predictor: a :class:`VolumeClassifier`.
        preprocessing: the preprocessing, starting by loading ``"image"`` (a path: NIfTI or DICOM).
        threshold: probability threshold of the label.
        write_slice_probabilities: write the per-case slice JSON.
        report_name: base name of the report (``probabilities.csv`` / ``.json``).
        threshold_log_odds: if given, the label is "lesion present" when the volume's lesion log-odds
            are at or above it, and ``threshold`` is not used: a threshold calibrated on a site's own
            scans (:func:`medmamba.apps.calibration.calibrate`) is a log-odds value; as a probability
            it would need six or more nines (10.5 log-odds is 0.9999725, 16 is 0.99999989), beyond the
            six decimals of the report's ``lesion_probability``.
        warnings_key: key of the list of scan warnings in the preprocessed data
            (:class:`medmamba.transforms.CheckScand`).
        weighting_key: key of the scan's MR weighting in the preprocessed data.
        brain_extraction: the predictor's skull-stripping inferer; each row then also reports
            ``brain_volume_ml``, the volume of the brain the network was run on. ``None``: not reported.
        brain_volume_range_ml: plausible ``(low, high)`` brain volume in ml; a case whose extracted
            brain lies outside is classified and flagged in ``warnings`` (a partial-coverage slab, a
            scan that is not a head MR: its lesion probability covers only what was extracted).
            ``None``: not checked; nor is it without ``brain_extraction`` (no extracted brain: the
            bundle's ``--brain_extraction false``).
        rules: the bundle's lesion rules (:class:`medmamba.inferers.LesionRule`: the gated bright-outlier
            and the dark-asymmetry rule); each row then also reports ``<rule.name>_voxels``, the rule's
            cluster size (empty where it does not apply: a volume analysed inverted), scored after the
            network from what its chain kept and from the image the preprocessing keeps under
            ``unnormalised_key``. Empty: none scored.
        rule_thresholds: each rule's threshold in voxels by its name (set on validation data with the
            network's, :func:`medmamba.apps.calibration.calibrate`); the label is then "lesion present"
            where the network's score reaches its threshold **or** a rule's cluster exceeds its own.
            A rule without one (``None`` or absent) is reported, not decided with.
        unnormalised_key: where the preprocessing keeps the volume before its intensity normalisation
            (a ``CopyItemsd`` before it), for ``rules``.

    Returns:
        ``{"n_ok", "n_failed", "report", "failed", "seconds"}``.

    Raises:
        TypeError: ``brain_extraction`` is not a :class:`medmamba.inferers.SkullStrippingInferer`, or a rule
            is not a :class:`medmamba.inferers.LesionRule`.
        ValueError: no ``input_path``, a threshold out of range, ``brain_volume_range_ml`` that is not
            ``(low, high)`` with ``0 <= low < high``, or ``rule_thresholds`` that name no rule or are not
            finite (:func:`medmamba.inferers.lesion_rule.check_rules`).
    """
    from monai.data import MetaTensor

    from medmamba.data.batch import BatchCase
    from medmamba.data.distributed_batch import run_batch_distributed
    from medmamba.bundle.flags import flag
    from medmamba.io.atomic import atomic_write_text

    write_slice_probabilities = flag(write_slice_probabilities, "write_slice_probabilities")
    if input_path is None:
        raise ValueError("input_path is required: a NIfTI file, a DICOM series folder or a folder of them "
                         "(bundle override --input_path <path>).")
    if not 0.0 < float(threshold) < 1.0:
        raise ValueError(f"threshold must be a probability in (0, 1), got {threshold!r}.")
    if threshold_log_odds is not None and not math.isfinite(float(threshold_log_odds)):
        raise ValueError(f"threshold_log_odds must be a finite number of log-odds or None, got {threshold_log_odds!r}.")
    if brain_extraction is not None and not isinstance(brain_extraction, SkullStrippingInferer):
        raise TypeError(f"brain_extraction must be a SkullStrippingInferer or None, got {type(brain_extraction).__name__}.")
    if brain_volume_range_ml is not None:
        low, high = (float(v) for v in brain_volume_range_ml) if len(brain_volume_range_ml) == 2 else (-1.0, -1.0)
        if not 0.0 <= low < high:
            raise ValueError(f"brain_volume_range_ml must be (low, high) in ml with 0 <= low < high, got {brain_volume_range_ml!r}.")
    rules, thresholds = check_rules(rules, rule_thresholds)
    start = time.perf_counter()
    cases = find_scans(input_path)
    logger.info("classifying %d case(s) from %s into %s", len(cases), os.fspath(input_path), os.fspath(output_dir))

    def process(case: BatchCase) -> dict[str, Any]:
        data = preprocessing({"image": os.fspath(case.input)})
        if not isinstance(data, Mapping) or "image" not in data:
            raise TypeError("preprocessing must return a dict holding 'image'")
        img = data["image"]
        warnings = [str(w) for w in (data.get(warnings_key) or [])]
        volume = img.as_tensor() if isinstance(img, MetaTensor) else torch.as_tensor(img)
        out = predictor(volume[None])
        prob = float(out["lesion_probability"][0])
        log_odds = float(out["lesion_log_odds"][0]) if "lesion_log_odds" in out else None
        slices = out["slice_probabilities"][0].cpu()
        brain: dict[str, Any] = {}
        if brain_extraction is not None and brain_extraction.last_brain_voxels:
            brain_ml = brain_extraction.last_brain_voxels[0] * voxel_volume_ml(img.affine) if isinstance(img, MetaTensor) else None
            brain["brain_volume_ml"] = None if brain_ml is None else round(brain_ml, 1)
            if brain_ml is not None and brain_volume_range_ml is not None:
                flag = brain_volume_warning(brain_ml, brain_volume_range_ml, what="extracted brain volume",
                                            consequence="; the lesion probability covers only it")
                if flag is not None:
                    warnings.append(flag)
        if threshold_log_odds is None:
            label = int(prob >= threshold)
        elif log_odds is None:
            raise ValueError("threshold_log_odds needs a predictor that returns 'lesion_log_odds'")
        else:
            label = int(log_odds >= float(threshold_log_odds))
        rule: dict[str, Any] = {}
        if rules:
            if unnormalised_key not in data:
                raise KeyError(f"the lesion rules need the volume before its intensity normalisation under "
                               f"unnormalised_key={unnormalised_key!r}: add CopyItemsd(keys='image', names="
                               f"{unnormalised_key!r}) before the normalisation; the data hold {sorted(map(str, data))}")
            voxels = [r(data[unnormalised_key], predictor) for r in rules]
            rule.update({f"{r.name}_voxels": v for r, v in zip(rules, voxels)})
            if any(thresholds[r.name] is not None for r in rules):
                callers = rule_callers(label == 1, rules, voxels, thresholds)
                rule["decided_by"] = " and ".join(callers)
                label = int(bool(callers))
        if isinstance(img, MetaTensor) and img.ndim == 4:
            source_affine, source_shape = source_geometry(img)
            mapped = slices_to_source(slices, img.affine, img.shape[1:], source_affine, source_shape, axis=2)
        else:  # no geometry: the network's slices are the input's
            positions = _slice_positions_mm(img, int(slices.numel()), axis=2)
            mapped = {"axis": 2, "positions_mm": positions or [None] * int(slices.numel()),
                      "values": [float(p) for p in slices.tolist()], "network_positions_mm": positions}
        scored = [(p, -i) for i, p in enumerate(mapped["values"]) if p is not None]  # ties: the first slice
        for w in warnings:
            logger.warning("case %s: %s", case.case_id, case.redact(w))
        result: dict[str, Any] = {
            "lesion_probability": round(prob, 6),
            "lesion_log_odds": None if log_odds is None else round(log_odds, 4),
            "label": label,
            "class_name": CLASS_NAMES[label],
            "n_slices": len(mapped["values"]),
            "top_slice": -max(scored)[1] if scored else None,
            "slice_axis": int(mapped["axis"]),
            "weighting": str(data.get(weighting_key) or ""),
            "contrast_polarity": analysed_polarity(predictor),
            **brain,
            **rule,
            "warnings": "; ".join(warnings),
        }
        if write_slice_probabilities:
            net_positions = mapped["network_positions_mm"]
            rows = [
                {"slice_index": i, "position_mm": pos, "lesion_probability": None if p is None else round(float(p), 6)}
                for i, (pos, p) in enumerate(zip(mapped["positions_mm"], mapped["values"]))
            ]
            network_rows = [
                {"slice_index": i, "position_mm": None if net_positions is None else net_positions[i],
                 "lesion_probability": round(float(p), 6)}
                for i, p in enumerate(slices.tolist())
            ]
            doc = {
                "case_id": case.case_id,
                "lesion_probability": round(prob, 6),
                "label": label,
                "slice_axis": int(mapped["axis"]),
                "slice_axis_note": ("slices: the input's slices along its array axis slice_axis (as loaded; for DICOM "
                                    "the instance order), each with the largest probability of the network slices "
                                    "overlapping it (null: cropped away as background); network_slices: the "
                                    "network's axial slices of the RAS-oriented, resampled, foreground-cropped "
                                    "volume; position_mm: slice centre along the network's slice normal (RAS mm)"),
                "slices": rows,
                "network_slices": network_rows,
                "warnings": warnings,
            }
            atomic_write_text(case.out_dir / "slice_probabilities.json", json.dumps(doc, indent=1) + "\n")
            result["slice_file"] = f"{case.case_id}/slice_probabilities.json"
        return result

    report = run_batch_distributed(cases, process, output_dir, input_key="image", id_key="id", report_name=report_name)
    summary = report.summary(time.perf_counter() - start)
    logger.info("classification: %d ok, %d failed (%.1f s); report %s", report.n_ok, report.n_failed,
                summary["seconds"], report.csv_path)
    return summary
