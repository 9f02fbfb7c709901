"""Does a rule without a network find the planted hyperintense lesions that the classifier misses?

A white-matter lesion planted as the default data plants it is 0.35-0.6 (hypointense) or 1.3-1.6
(hyperintense) times the white matter's mean intensity (:func:`medmamba.data.synthetic.insert_lesions`).
On a T1 image nothing inside the brain is much brighter than white matter, so a bright outlier needs
no learned appearance: this probe scores each image by the **largest connected cluster of voxels
brighter than ``ratio`` times the local white-matter level** (:func:`bright_outlier_score`), inside
the brain the classification bundle extracts, and asks, on the validation probe of
``benchmarks/readout_probe.py`` (real registry scans of five people with planted lesions, seed 1):

1. how the rule alone ranks each person's lesion-free images against the lesions (AUC per person);
2. what the classifier's decision (the bundle's mirror read-out at its ``models/threshold.json``)
   gains when a volume is also called "lesion" wherever the rule's score exceeds *its* threshold,
   set by the main job's rule on the same threshold sets (above every lesion-free image of
   ``eval/threshold_sets/negatives``);
3. optionally (``--shift-suite``), how often the rule fires on the shift suite's generated lesion-free
   subjects per setting (outside the training ranges included), where its threshold was not set.

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

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

__all__ = ["bright_outlier_score", "local_white_matter_ratio"]

#: the tissue channels of the segmentation network's output
WHITE_MATTER_CHANNEL = 3


def local_white_matter_ratio(image: np.ndarray, white_matter: np.ndarray, sigma: float = 4.0) -> np.ndarray:
    """Each voxel's intensity over the local white-matter level.

    Args:
        image: ``(H, W, D)`` intensities (positive, not z-scored: the ratio is a contrast).
        white_matter: boolean ``(H, W, D)``, the voxels taken as white matter.
        sigma: width in voxels of the Gaussian over which the white-matter level is averaged.

    Returns:
        ``image / level``: about 1 in white matter, < 1 in grey matter and CSF on a T1 image; where
        too little white matter is near (the Gaussian's white-matter weight below 0.05), the level is
        the median of all white matter.

    Raises:
        ValueError: shapes differ, no white-matter voxel, or ``sigma`` not positive.
    """
    from scipy import ndimage

    if image.shape != white_matter.shape or image.ndim != 3:
        raise ValueError(f"image {image.shape} and white_matter {white_matter.shape} must be the same 3D grid.")
    if not white_matter.any():
        raise ValueError("white_matter is empty: no white-matter level.")
    if not sigma > 0:
        raise ValueError(f"sigma must be > 0, got {sigma!r}.")
    image = image.astype(np.float32)
    weight = ndimage.gaussian_filter(white_matter.astype(np.float32), sigma)
    total = ndimage.gaussian_filter(np.where(white_matter, image, 0.0).astype(np.float32), sigma)
    level = np.where(weight > 0.05, total / np.maximum(weight, 1e-6), float(np.median(image[white_matter])))
    return image / np.maximum(level, 1e-6)


def bright_outlier_score(
    image: np.ndarray,
    white_matter_probability: np.ndarray,
    brain: np.ndarray,
    ratio: float = 1.25,
    smooth: float = 0.7,
    sigma: float = 4.0,
    core: int = 2,
) -> int:
    """The largest cluster of voxels brighter than ``ratio`` times the local white-matter level.

    Args:
        image: ``(H, W, D)`` intensities of a T1-weighted volume (positive).
        white_matter_probability: ``(H, W, D)``, a tissue network's white-matter probability.
        brain: boolean ``(H, W, D)`` brain mask.
        ratio: how many times the local white-matter level a voxel must exceed.
        smooth: Gaussian width in voxels applied to ``image`` first (0: none).
        sigma: see :func:`local_white_matter_ratio`.
        core: voxels next to the brain's edge left out, as an erosion by this many voxels.

    Returns:
        The voxel count of the largest 6-connected cluster (0 without one).

    Raises:
        ValueError: shapes differ, ``ratio`` not above 1, negative ``smooth`` or ``core``, or a brain
            without white matter.
    """
    from scipy import ndimage

    if not (image.shape == white_matter_probability.shape == brain.shape) or image.ndim != 3:
        raise ValueError(f"image {image.shape}, white_matter_probability {white_matter_probability.shape} and "
                         f"brain {brain.shape} must be the same 3D grid.")
    if not ratio > 1:
        raise ValueError(f"ratio must be > 1 (brighter than white matter), got {ratio!r}.")
    if smooth < 0 or core < 0:
        raise ValueError(f"smooth and core must be >= 0, got smooth={smooth!r}, core={core!r}.")
    brain = brain.astype(bool)
    ball = ndimage.generate_binary_structure(3, 1)
    image = ndimage.gaussian_filter(image.astype(np.float32), smooth) if smooth else image.astype(np.float32)
    white_matter = (white_matter_probability > 0.5) & ndimage.binary_erosion(brain, ball)
    bright = local_white_matter_ratio(image, white_matter, sigma) > ratio
    if core:
        bright &= ndimage.binary_erosion(brain, ball, iterations=core)
    labels, n = ndimage.label(bright, ball)
    return int(np.bincount(labels.ravel())[1:].max()) if n else 0


class TissueReader:
    """The classification bundle's preprocessing (without its normalisation) and its brain extraction's
    tissue pass, cached per image under ``cache``: ``(image, white-matter probability, brain)``."""

    def __init__(self, bundle: Path, cache: Path, threads: int) -> None:
        self.bundle, self.cache, self.threads = bundle, cache, threads
        self._parts: tuple | None = None
        cache.mkdir(parents=True, exist_ok=True)

    def _load(self) -> tuple:
        from monai.bundle import ConfigParser
        from monai.transforms import Compose

        from medmamba.resources import configure_threads

        parser = ConfigParser()
        parser.read_meta(str(self.bundle / "configs" / "metadata.json"))
        parser.read_config(str(self.bundle / "configs" / "inference.json"))
        parser["bundle_root"] = str(self.bundle)
        configure_threads(self.threads)
        preprocessing = parser.get_parsed_content("preprocessing")
        extractor = parser.get_parsed_content("inferer").extractor  # SkullStrippingInferer's BrainExtractor
        return Compose(preprocessing.transforms[:-1]), preprocessing.transforms[-1], extractor

    def __call__(self, path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        key = hashlib.sha1(str(Path(path).resolve()).encode()).hexdigest()[:16]
        file = self.cache / f"{key}.npz"
        if not file.exists():
            import torch

            from medmamba.inferers.brain_normalization import brain_masks_from_logits

            if self._parts is None:
                self._parts = self._load()
            unnormalised, normalise, extractor = self._parts
            data = unnormalised({"image": str(path)})
            image = torch.as_tensor(data["image"]).float()
            x = torch.as_tensor(normalise(data)["image"]).float()[None]
            with torch.no_grad():
                logits = torch.as_tensor(extractor.inferer(x, extractor.network)).float()
            brain = brain_masks_from_logits(logits, x, extractor.masker)[0].numpy()
            wm = torch.softmax(logits[0], 0)[WHITE_MATTER_CHANNEL].numpy()
            np.savez_compressed(file, image=image[0].numpy(), wm=wm.astype(np.float16), brain=brain)
        z = np.load(file)
        return z["image"], z["wm"].astype(np.float32), z["brain"]


def main(argv: list[str] | None = None) -> int:
    from tqdm import tqdm

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
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)

    records = json.loads(args.probe.read_text())["records"]
    images = {f"probe_{r['scan']}_{r['resolution']}_{r['id']}": Path(r["image"]) for r in records}
    calibration = {}
    for kind in ("negatives", "positives"):
        calibration.update({f"{kind}_{f.name[:-7]}": f for f in sorted((args.threshold_sets / kind).glob("*.nii.gz"))})
    reader = TissueReader(args.bundle_root, args.out / "tissue", args.threads)
    rule = dict(ratio=args.ratio, smooth=args.smooth, sigma=args.sigma, core=args.core)
    rule_scores, net_scores = {}, {}
    for key, path in tqdm({**calibration, **images}.items(), desc="bright-outlier scores"):
        rule_scores[key] = bright_outlier_score(*reader(path), **rule)
        net_scores[key] = readouts([args.maps / f"{key}.npz"], [(1, 4.0)])["mirror size 1 margin 4"]
    threshold_file = args.bundle_root / "models" / "threshold.json"
    net_threshold = float(json.loads(threshold_file.read_text())["threshold_log_odds"])
    rule_threshold = max(v for k, v in rule_scores.items() if k.startswith("negatives_"))
    print(f"\nrule {rule}; its threshold (largest lesion-free cluster of the threshold sets): {rule_threshold} voxels; "
          f"the network's: {net_threshold:.4f} log-odds (mirror read-out)\n")
    print("| person (scans) | rule: AUC hypo / hyper | lesion-free below: network / network or rule "
          "| hypointense above: network / network or rule | hyperintense above: network / network or rule |")
    print("|---|---|---|---|---|")
    totals = np.zeros(9, dtype=int)
    for subject, scans in probe_subjects(sorted({r["scan"] for r in records})).items():
        groups: dict[str, list[tuple[int, float]]] = {"free": [], "hypo": [], "hyper": []}
        for r in records:
            if r["scan"] in scans:
                key = f"probe_{r['scan']}_{r['resolution']}_{r['id']}"
                kind = "free" if r.get("factor") is None else "hypo" if r["factor"] < 1 else "hyper"
                groups[kind].append((rule_scores[key], net_scores[key]))
        net = {k: sum(m > net_threshold for _, m in v) for k, v in groups.items()}
        both = {k: sum(m > net_threshold or s > rule_threshold for s, m in v) for k, v in groups.items()}
        n = {k: len(v) for k, v in groups.items()}
        free = [s for s, _ in groups["free"]]
        aucs = " / ".join(f"{pooled_auc(free, [s for s, _ in groups[k]]):.3f}" if groups[k] else "-" for k in ("hypo", "hyper"))
        print(f"| {subject} ({', '.join(scans)}) | {aucs} | {n['free'] - net['free']} / {n['free'] - both['free']} of {n['free']} "
              f"| {net['hypo']} / {both['hypo']} of {n['hypo']} | {net['hyper']} / {both['hyper']} of {n['hyper']} |")
        if subject != "robex":  # robex is the threshold sets' real scan (calibration data)
            totals += [n["free"] - net["free"], n["free"] - both["free"], n["free"], net["hypo"], both["hypo"], n["hypo"],
                       net["hyper"], both["hyper"], n["hyper"]]
    t = totals
    print(f"| every validation person (robex left out) | | {t[0]} / {t[1]} of {t[2]} | {t[3]} / {t[4]} of {t[5]} | {t[6]} / {t[7]} of {t[8]} |")
    if args.shift_suite is not None:
        print("\n| shift-suite setting | lesion-free subjects above the rule's threshold | largest lesion-free cluster |")
        print("|---|---|---|")
        for datalist in sorted(args.shift_suite.glob("*/datalist.json")):
            cases = [c for c in json.loads(datalist.read_text())["test"] if not c.get("has_lesion")]
            if not cases:
                continue
            scores = [bright_outlier_score(*reader(datalist.parent / c["image"]), **rule) for c in cases]
            print(f"| {datalist.parent.name} | {sum(s > rule_threshold for s in scores)} of {len(scores)} | {max(scores)} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
