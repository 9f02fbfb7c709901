"""Does a rule without a network find the planted hyperintense lesions that the classifier misses?

A white-matter lesion planted as the default data plants it is 0.35-0.6 (hypointense) or 1.3-1.6
(hyperintense) times the white matter's mean intensity (:func:`medmamba.data.synthetic.insert_lesions`).
On a T1 image nothing inside the brain is much brighter than white matter, so a bright outlier needs
no learned appearance: this probe scores each image by the **largest connected cluster of voxels
brighter than ``ratio`` times the local white-matter level**
(:func:`medmamba.inferers.bright_outlier_score`, which the classification bundle runs since 0.15.0), inside
the brain the classification bundle extracts, and asks, on the validation probe of
``benchmarks/readout_probe.py`` (real registry scans of five people with planted lesions, seed 1):

1. how the rule alone ranks each person's lesion-free images against the lesions (AUC per person);
2. what the classifier's decision (the bundle's mirror read-out at its ``models/threshold.json``)
   gains when a volume is also called "lesion" wherever the rule's score exceeds *its* threshold,
   set by the main job's rule on the same threshold sets (above every lesion-free image of
   ``eval/threshold_sets/negatives``); and the same with the **gated** rule, where a cluster counts
   only if the network's own lesion map exceeds ``--min-log-odds`` somewhere inside it (the rule
   confirms a spot the network half-sees);
3. optionally (``--shift-suite``), how often the rule and the gated rule fire on the shift suite's
   lesion-free subjects per setting (outside the training ranges included), where their thresholds were
   not set (the network's maps of these images are computed here: the bundle's inferer, as
   ``lesion_placement_probe.LesionMapReader`` runs it, without the contrast-polarity check, so a
   T2-like image reaches the rule as acquired).

Per image the bundle's own preprocessing runs up to (not including) its intensity normalisation
(the 2 mm grid, RAS, foreground crop), and the segmentation network's single slice-stack pass, which
the bundle's brain extraction runs (``inference.json`` ``inferer``), gives the tissue probabilities
and the brain mask (cached under ``--out``). The local white-matter level is the Gaussian-weighted
mean (``sigma`` voxels) of the voxels the network calls white matter with probability above 0.5, the
image first smoothed by ``smooth`` voxels (noise); voxels within ``core`` voxels of the brain's edge
are left out (partial volume with bright fat and marrow of a whole head).

Usage (after ``readout_probe.py`` made the probe and its maps)::

    python benchmarks/bright_outlier_probe.py --probe runs/readout_probe/probe/records.json \\
        --maps runs/readout_probe/maps/0_<tag> \\
        --threshold-sets bundles/mobilemamba_classification/eval/threshold_sets \\
        --bundle-root bundles/mobilemamba_classification --out runs/bright_outlier_probe
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

from medmamba.inferers.bright_outlier import bright_outlier_score  # the rule, as the classification bundle runs it

#: the tissue channels of the segmentation network's output
WHITE_MATTER_CHANNEL = 3


class TissueReader:
    """The classification bundle's preprocessing (without its normalisation) and its brain extraction's
    tissue pass, cached per image under ``cache`` (a folder per segmentation weights):
    ``(image, white-matter probability, brain)``.

    Args:
        maps: the bundle's :class:`lesion_placement_probe.LesionMapReader`, whose parsed ``inference.json``
            (preprocessing, skull-stripping inferer) this reader shares.
        cache: where the arrays are kept.

    Raises:
        ValueError: the bundle's inferer has no brain extraction.
    """

    def __init__(self, maps: Any, cache: Path) -> None:
        from monai.transforms import Compose

        from readout_probe import weights_tag

        transforms = maps.preprocessing.transforms
        self.unnormalised, self.normalise = Compose(transforms[:-1]), transforms[-1]
        self.extractor = getattr(maps.inferer, "extractor", None)  # SkullStrippingInferer's BrainExtractor
        if self.extractor is None:
            raise ValueError("the bundle's inferer has no brain extraction (SkullStrippingInferer): the rule needs its tissue pass.")
        # the tissue pass is the segmentation bundle's network: retrained weights get a new cache
        segmentation = Path(maps.parser.get_parsed_content("segmentation_bundle_root"))
        self.cache = cache / weights_tag(segmentation)
        self.cache.mkdir(parents=True, exist_ok=True)

    def __call__(self, path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        key = hashlib.sha1(str(Path(path).resolve()).encode()).hexdigest()[:16]
        file = self.cache / f"{key}.npz"
        if not file.exists():
            import torch

            from medmamba.inferers.brain_normalization import brain_masks_from_logits

            data = self.unnormalised({"image": str(path)})
            image = torch.as_tensor(data["image"]).float()
            x = torch.as_tensor(self.normalise(data)["image"]).float()[None]
            with torch.no_grad():
                logits = torch.as_tensor(self.extractor.inferer(x, self.extractor.network)).float()
            brain = brain_masks_from_logits(logits, x, self.extractor.masker)[0].numpy()
            wm = torch.softmax(logits[0], 0)[WHITE_MATTER_CHANNEL].numpy()
            np.savez_compressed(file, image=image[0].numpy(), wm=wm.astype(np.float16), brain=brain)
        z = np.load(file)
        return z["image"], z["wm"].astype(np.float32), z["brain"]


def _decisions(key: str, rule_scores: dict, net_scores: dict, thresholds: dict) -> dict[str, bool]:
    """One image's decisions: the network alone, the network or the rule, the network or the gated rule."""
    net = net_scores[key] > thresholds["network"]
    return {"network": net, "rule": net or rule_scores[key]["rule"] > thresholds["rule"],
            "gated": net or rule_scores[key]["gated"] > thresholds["gated"]}


def main(argv: list[str] | None = None) -> int:
    from tqdm import tqdm

    from lesion_placement_probe import LesionMapReader
    from readout_probe import pooled_auc, probe_subjects, readouts

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--probe", type=Path, required=True, help="readout_probe.py's probe/records.json")
    parser.add_argument("--maps", type=Path, required=True, help="readout_probe.py's maps/<run> of the bundle")
    parser.add_argument("--threshold-sets", type=Path, required=True)
    parser.add_argument("--bundle-root", type=Path, required=True)
    parser.add_argument("--shift-suite", type=Path, default=None, help="shift_suite.py's data folder (optional)")
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "bright_outlier_probe")
    parser.add_argument("--ratio", type=float, default=1.25)
    parser.add_argument("--smooth", type=float, default=0.7)
    parser.add_argument("--sigma", type=float, default=4.0)
    parser.add_argument("--core", type=int, default=2)
    parser.add_argument("--min-log-odds", type=float, default=8.0,
                        help="the gated rule: a cluster counts only where the network's lesion log-odds exceed this")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)

    records = json.loads(args.probe.read_text())["records"]
    images = {f"probe_{r['scan']}_{r['resolution']}_{r['id']}": Path(r["image"]) for r in records}
    calibration = {}
    for kind in ("negatives", "positives"):
        calibration.update({f"{kind}_{f.name[:-7]}": f for f in sorted((args.threshold_sets / kind).glob("*.nii.gz"))})
    maps = LesionMapReader(args.bundle_root, args.threads)  # the bundle parsed once, for both readers
    reader = TissueReader(maps, args.out / "tissue")
    threshold = json.loads((args.bundle_root / "models" / "threshold.json").read_text())
    if threshold.get("volume_readout", "maximum") != "mirror":  # the probe scores the network with the upright mirror
        raise ValueError(f"{args.bundle_root / 'models' / 'threshold.json'} was set with volume_readout="
                         f"{threshold.get('volume_readout', 'maximum')!r}; this probe scores the network with the upright "
                         f"mirror read-out ('mirror', classification 0.14-0.16) and needs a threshold set with it.")
    margin = float(threshold.get("mirror_margin", 4.0))  # the read-out the threshold was set with
    rule = dict(ratio=args.ratio, smooth=args.smooth, sigma=args.sigma, core=args.core)

    def both(path: Path, lesion: np.ndarray) -> dict[str, int]:
        tissue = reader(path)
        return {"rule": bright_outlier_score(*tissue, **rule),
                "gated": bright_outlier_score(*tissue, **rule, lesion_log_odds=lesion, min_log_odds=args.min_log_odds)}

    rule_scores, net_scores = {}, {}
    for key, path in tqdm({**calibration, **images}.items(), desc="bright-outlier scores"):
        lesion = np.load(args.maps / f"{key}.npz")["lesion"].astype(np.float32)
        rule_scores[key] = both(path, lesion)
        net_scores[key] = readouts([args.maps / f"{key}.npz"], [(1, margin)])[f"mirror size 1 margin {margin:g}"]
    thresholds = {"network": float(threshold["threshold_log_odds"])}
    for variant in ("rule", "gated"):
        thresholds[variant] = max(v[variant] for k, v in rule_scores.items() if k.startswith("negatives_"))
    print(f"\nrule {rule}, gated: a cluster holding lesion log-odds > {args.min_log_odds:g}; thresholds (above every "
          f"lesion-free image of the threshold sets): network {thresholds['network']:.4f} log-odds (mirror read-out), "
          f"rule {thresholds['rule']} voxels, gated rule {thresholds['gated']} voxels\n")
    print("| person (scans) | rule alone: AUC hypo / hyper | lesion-free below: network / or rule / or gated rule "
          "| hypointense above: network / or rule / or gated rule | hyperintense above: network / or rule / or gated rule |")
    print("|---|---|---|---|---|")
    variants = ("network", "rule", "gated")
    totals: dict[str, dict[str, int]] = {k: {v: 0 for v in variants} for k in ("free", "hypo", "hyper")}
    counts = {"free": 0, "hypo": 0, "hyper": 0}
    for subject, scans in probe_subjects(sorted({r["scan"] for r in records})).items():
        calls: dict[str, list[dict[str, bool]]] = {"free": [], "hypo": [], "hyper": []}
        rules: dict[str, list[int]] = {"free": [], "hypo": [], "hyper": []}
        for r in records:
            if r["scan"] in scans:
                key = f"probe_{r['scan']}_{r['resolution']}_{r['id']}"
                kind = "free" if r.get("factor") is None else "hypo" if r["factor"] < 1 else "hyper"
                calls[kind].append(_decisions(key, rule_scores, net_scores, thresholds))
                rules[kind].append(rule_scores[key]["rule"])
        found = {k: {v: sum(c[v] for c in calls[k]) for v in variants} for k in calls}
        below = {v: len(calls["free"]) - found["free"][v] for v in variants}
        aucs = " / ".join(f"{pooled_auc(rules['free'], rules[k]):.3f}" if rules[k] else "-" for k in ("hypo", "hyper"))
        cells = [" / ".join(str(below[v]) for v in variants) + f" of {len(calls['free'])}"]
        cells += [" / ".join(str(found[k][v]) for v in variants) + f" of {len(calls[k])}" for k in ("hypo", "hyper")]
        print(f"| {subject} ({', '.join(scans)}) | {aucs} | " + " | ".join(cells) + " |")
        if subject != "robex":  # robex is the threshold sets' real scan (calibration data)
            for k in calls:
                counts[k] += len(calls[k])
                for v in variants:
                    totals[k][v] += below[v] if k == "free" else found[k][v]
    cells = [" / ".join(str(totals[k][v]) for v in variants) + f" of {counts[k]}" for k in ("free", "hypo", "hyper")]
    print("| every validation person (robex left out) | | " + " | ".join(cells) + " |")
    positives = [_decisions(k, rule_scores, net_scores, thresholds) for k in rule_scores if k.startswith("positives_")]
    print(f"\nthe threshold sets' lesion images above (network / or rule / or gated rule): "
          + " / ".join(str(sum(c[v] for c in positives)) for v in variants) + f" of {len(positives)}")
    if args.shift_suite is not None:
        print("\n| shift-suite setting | lesion-free subjects above the threshold: rule / gated rule | largest lesion-free cluster: rule / gated |")
        print("|---|---|---|")
        for datalist in sorted(args.shift_suite.glob("*/datalist.json")):
            cases = [c for c in json.loads(datalist.read_text())["test"] if not c.get("has_lesion")]
            if not cases:
                continue
            scores = [both(datalist.parent / c["image"], maps.dense(datalist.parent / c["image"])[2]) for c in cases]
            print(f"| {datalist.parent.name} | {sum(s['rule'] > thresholds['rule'] for s in scores)} / "
                  f"{sum(s['gated'] > thresholds['gated'] for s in scores)} of {len(scores)} "
                  f"| {max(s['rule'] for s in scores)} / {max(s['gated'] for s in scores)} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
