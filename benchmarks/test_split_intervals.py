"""Bootstrap 95 % intervals of both bundles' test-split metrics, from the files their evaluate.json wrote.

Reads ``bundles/mobilemamba_segmentation/eval/metrics_per_case.csv`` (per-case Dice) and
``bundles/mobilemamba_classification/eval/predictions.csv`` (per-case volume probability and label)
and prints the mean Dice and the volume AUC with percentile bootstrap intervals over cases (the AUC
resampled within each class). Run after the main job:

    python benchmarks/test_split_intervals.py [--root <repo>]
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from medmamba.metrics import bootstrap_interval, roc_auc  # noqa: E402


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def _first(row: dict[str, str], names: tuple[str, ...]) -> str:
    for name in names:
        if name in row and row[name] not in ("", None):
            return row[name]
    raise KeyError(f"none of the columns {names} in {sorted(row)}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", type=Path, default=ROOT, help="repository whose bundles' eval/ folders to read")
    args = parser.parse_args(argv)
    seg_csv = args.root / "bundles" / "mobilemamba_segmentation" / "eval" / "metrics_per_case.csv"
    cls_csv = args.root / "bundles" / "mobilemamba_classification" / "eval" / "predictions.csv"
    print("| bundle | metric | value [95% CI] | cases |\n|---|---|---|---|")
    if seg_csv.is_file():
        rows = _rows(seg_csv)
        dice = np.array([np.nanmean([float(r[k]) for k in ("dice_csf", "dice_gm", "dice_wm")]) for r in rows])
        print(f"| segmentation | mean Dice (CSF/GM/WM) | {bootstrap_interval(np.mean, dice)} | {len(dice)} |")
        for k in ("dice_csf", "dice_gm", "dice_wm"):
            print(f"| segmentation | {k} | {bootstrap_interval(np.mean, np.array([float(r[k]) for r in rows]))} | {len(rows)} |")
    if cls_csv.is_file():
        rows = _rows(cls_csv)
        # rank by the log-odds where the CSV has them: rounded probabilities tie at 1.0
        names = ("lesion_log_odds", "volume_probability", "lesion_probability", "probability", "score")
        score = np.array([float(_first(r, names)) for r in rows])
        label = np.array([int(float(_first(r, ("volume_label", "label", "target")))) for r in rows])
        print(f"| classification | volume AUC | {bootstrap_interval(roc_auc, score, label, strata=label)} | {len(score)} |")
        if all(r.get("predicted") not in (None, "") for r in rows):  # the bundle's own decisions (its threshold)
            decided, rule = np.array([int(float(r["predicted"])) for r in rows]), "the bundle's threshold"
        else:
            prob = np.array([float(_first(r, names[1:])) for r in rows])
            decided, rule = (prob >= 0.5).astype(int), "p >= 0.5"
        fp = decided[label == 0] == 1
        miss = decided[label == 1] == 0
        print(f"| classification | lesion-free called lesion ({rule}) | {bootstrap_interval(np.mean, fp.astype(float))} | {fp.size} |")
        print(f"| classification | lesion cases missed ({rule}) | {bootstrap_interval(np.mean, miss.astype(float))} | {miss.size} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
