"""Settings of the segmentation's tissue refinement compared offline on stored network probabilities.

The refinement (:class:`medmamba.transforms.TissueIntensityRefine`) runs after the network, on the
input's grid, so its settings can be compared without running the network again: the segmentation
bundle's ``inference.json`` writes the unrefined probabilities once per case
(``--refine_tissue false --write_probabilities true``), and this script refines them with each
setting, applies the bundle's clean-up (the 6 mm opening and the largest component,
:func:`medmamba.apps.pipeline.brain_transforms`) and scores the label map against the set's truth
(mean Dice over CSF, grey and white matter; brain volume ratio), as ``shift_suite.py`` does.

    # 1. unrefined probabilities of every case of the shift-suite sets under runs/val/data
    for s in runs/val/data/*; do python -m monai.bundle run \\
        --config_file bundles/mobilemamba_segmentation/configs/inference.json \\
        --bundle_root bundles/mobilemamba_segmentation --input_path $s/images \\
        --output_dir runs/val/unrefined/$(basename $s) --refine_tissue false --write_probabilities true; done
    # 2. the settings, as keyword arguments of refine_tissue_probabilities (null: no refinement)
    python benchmarks/refinement_sweep.py --sets runs/val/data/* --predictions runs/val/unrefined \\
        --variants '{"none": null, "0.6.10": {"keep_brain_decision": false}, "0.6.11": {"iterations": 4}}'

Use it on validation data only (the seed-1 shift suite, the registry scans); the CPU is printed in
the header, with the seconds each setting took per case.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from common import machine_line  # noqa: E402


def score_case(prob, image, affine, spacing, truth, setting, cleaner, opening_mm=6.0, refine=True):
    """Mean tissue Dice, per-class Dice and brain volume ratio of one case under one setting.

    ``setting`` ``None`` scores the probabilities as they are; otherwise its ``stripped_input_brain``
    and ``brain_gap_closing_mm`` run the bundle's brain steps first and the rest are the refinement's
    arguments (not refined when ``refine`` is false: thick slices, as the bundle does).
    """
    import torch
    from monai.data import MetaTensor

    from medmamba.metrics import dice_per_class
    from medmamba.transforms import CloseBrainGaps, StrippedInputBrain
    from medmamba.transforms.label_map import channel_argmax
    from medmamba.transforms.tissue_refinement import refine_tissue_probabilities

    options = {} if setting is None else dict(setting)
    closing_mm = float(options.pop("brain_gap_closing_mm", 0.0))
    prob = MetaTensor(prob, affine=torch.as_tensor(affine))
    if options.pop("stripped_input_brain", False):
        prob = StrippedInputBrain()(prob, image)
    if closing_mm > 0:
        prob = CloseBrainGaps(closing_mm=closing_mm, opening_mm=opening_mm)(prob, image)
    refine = refine and setting is not None
    refined = refine_tissue_probabilities(prob.as_tensor(), image, spacing, **options) if refine else prob.as_tensor()
    labels = cleaner(MetaTensor(channel_argmax(refined).float(), affine=torch.as_tensor(affine)))
    labels = np.asarray(labels)[0].round().astype(np.uint8)
    dice = dice_per_class(labels, truth, [1, 2, 3])
    return {
        "mean_dice": float(np.nanmean(list(dice.values()))),
        "dice": {int(k): round(float(v), 4) for k, v in dice.items()},
        "brain_volume_ratio": float((labels > 0).sum() / max(1, (truth > 0).sum())),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sets", type=Path, nargs="+", required=True, help="shift-suite set folders (datalist.json)")
    parser.add_argument("--predictions", type=Path, required=True,
                        help="folder of <set>/<case>/<case>_prob.nii.gz written without refinement")
    parser.add_argument("--variants", required=True,
                        help="JSON: name -> refine_tissue_probabilities kwargs or null; a setting may also hold "
                             "stripped_input_brain (true: StrippedInputBrain first, as the bundle) and "
                             "brain_gap_closing_mm (CloseBrainGaps before the refinement)")
    parser.add_argument("--max-voxel-mm", type=float, default=3.0, help="the bundle's refine_max_voxel_mm")
    parser.add_argument("--opening-mm", type=float, default=6.0, help="the bundle's brain_opening_mm")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=None, help="JSON lines of every case and setting")
    args = parser.parse_args(argv)

    import nibabel as nib
    import torch

    from medmamba.apps.pipeline import brain_transforms

    torch.set_num_threads(args.threads)
    variants = json.loads(Path(args.variants).read_text()) if Path(args.variants).is_file() else json.loads(args.variants)
    if not isinstance(variants, dict) or not variants:
        raise ValueError(f"--variants must be a JSON object name -> settings, got {args.variants!r}")
    cleaner, _ = brain_transforms([1, 2, 3], [1, 2, 3], args.opening_mm)
    print(f"# tissue refinement sweep\n\nCPU: {machine_line()}\n")
    rows = []
    sink = args.out.open("w") if args.out else None
    missing = [str(d) for d in args.sets if not (d / "datalist.json").is_file()]
    if missing:
        raise ValueError(f"--sets must be shift-suite set folders with a datalist.json; none in {missing}")
    for set_dir in args.sets:
        datalist = json.loads((set_dir / "datalist.json").read_text())
        for item in datalist["test"]:
            prob_path = args.predictions / set_dir.name / item["id"] / f"{item['id']}_prob.nii.gz"
            if not prob_path.is_file():
                raise ValueError(f"{prob_path} is missing: run inference.json with --write_probabilities true "
                                 f"--refine_tissue false on {set_dir / 'images'} into {args.predictions / set_dir.name}")
            prob_img, image_img = nib.load(prob_path), nib.load(set_dir / item["image"])
            prob = torch.from_numpy(np.moveaxis(np.asarray(prob_img.dataobj, dtype=np.float32), -1, 0).copy())
            image = torch.from_numpy(np.asarray(image_img.dataobj, dtype=np.float32).copy())
            truth = np.asarray(nib.load(set_dir / item["label"]).dataobj)
            spacing = [float(s) for s in image_img.header.get_zooms()[:3]]
            for name, setting in variants.items():
                start = time.perf_counter()
                thick = max(spacing) > args.max_voxel_mm  # not refined by the bundle; its brain steps still run
                row = score_case(prob, image, prob_img.affine, spacing, truth, setting, cleaner, args.opening_mm,
                                 refine=not thick)
                row.update(set=set_dir.name, case=item["id"], variant=name, seconds=round(time.perf_counter() - start, 2))
                rows.append(row)
                if sink:
                    sink.write(json.dumps(row) + "\n")
                    sink.flush()
    if sink:
        sink.close()
    names = list(variants)
    print("| set | cases | " + " | ".join(f"{n}: mean Dice / brain volume" for n in names) + " |")
    print("|---|---|" + "---|" * len(names))
    for set_dir in args.sets:
        cells = []
        for n in names:
            sel = [r for r in rows if r["set"] == set_dir.name and r["variant"] == n]
            cells.append(f"{np.mean([r['mean_dice'] for r in sel]):.3f} / {np.median([r['brain_volume_ratio'] for r in sel]):.3f}")
        n_cases = len([r for r in rows if r["set"] == set_dir.name and r["variant"] == names[0]])
        print(f"| {set_dir.name} | {n_cases} | " + " | ".join(cells) + " |")
    print("\nseconds per case: " + ", ".join(
        f"{n} {np.median([r['seconds'] for r in rows if r['variant'] == n]):.2f}" for n in names))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
