"""The lesion classifier on the MNI152 template under what a real single-subject scan adds.

The plainest real-scan check that ships offline is the unmodified MNI152 template (lesion-free) and
copies with white-matter lesions planted by another procedure than the training generator's
(:func:`medmamba.data.shift_suite.make_template_checks`). A real scan differs from that average in
ways the template does not show: noise, sharper edges, another intensity curve. This script scores
the lesion-free template and the planted copies with the bundle's own preprocessing, network and
read-out (the ``predictor`` of ``inference.json``: slice score, the pixel maximum of the lesion
log-odds; volume score, the mean of the two highest slices), plain and under Rician noise (3 %, 6 % of the 90th
percentile), unsharp masking (1 × at 1 mm, 2 × at 1.5 mm) and gamma (0.7, 1.4), and prints them
beside the bundle's threshold. A lesion-free row above the threshold, or a planted row below it, is
a failure the template alone does not reveal.

    python benchmarks/template_stress.py --resolution 1 --seed 1   # the validation checks
    python benchmarks/template_stress.py --set network_def#readout=brain   # a candidate setting
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from common import machine_line  # noqa: E402

BUNDLE = ROOT / "bundles" / "mobilemamba_classification"


def perturbations(img: np.ndarray, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """The image plain and under the perturbations of the module docstring."""
    from scipy import ndimage

    ref = float(np.percentile(img[img > 0], 90))

    def rician(level: float) -> np.ndarray:
        return np.abs(img + rng.normal(0, level * ref, img.shape) + 1j * rng.normal(0, level * ref, img.shape))

    return {
        "plain": img,
        "noise 3%": rician(0.03),
        "noise 6%": rician(0.06),
        "unsharp 1x, 1 mm": np.clip(img + 1.0 * (img - ndimage.gaussian_filter(img, 1.0)), 0, None),
        "unsharp 2x, 1.5 mm": np.clip(img + 2.0 * (img - ndimage.gaussian_filter(img, 1.5)), 0, None),
        "gamma 0.7": ref * np.clip(img / ref, 0, None) ** 0.7,
        "gamma 1.4": ref * np.clip(img / ref, 0, None) ** 1.4,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--resolution", type=int, default=1, choices=[1, 2])
    parser.add_argument("--seed", type=int, default=1, help="seed of the lesion placement (1: validation checks)")
    parser.add_argument("--bundle-root", type=Path, default=BUNDLE)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument(
        "--set", action="append", default=[], metavar="ID=VALUE",
        help="override an inference.json entry before parsing (VALUE read as JSON, else as a string); repeatable",
    )
    args = parser.parse_args(argv)
    overrides: dict[str, object] = {}
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep or not key:
            parser.error(f"--set expects ID=VALUE, got {item!r}")
        try:
            overrides[key] = json.loads(value)
        except json.JSONDecodeError:
            overrides[key] = value

    import nibabel as nib
    import torch
    from monai.bundle import ConfigParser
    from tqdm import tqdm

    from medmamba.data.shift_suite import make_template_checks

    parser_cfg = ConfigParser()
    parser_cfg.read_config(str(args.bundle_root / "configs" / "inference.json"))
    parser_cfg["bundle_root"] = str(args.bundle_root)
    for key, value in overrides.items():
        parser_cfg[key] = value
    pre = parser_cfg.get_parsed_content("preprocessing")
    predictor = parser_cfg.get_parsed_content("predictor")  # the bundle's own network, slices and read-out
    threshold = float(parser_cfg.get_parsed_content("threshold"))
    log_odds_threshold = math.log(threshold / (1 - threshold))

    @torch.no_grad()
    def score(path: str) -> float:
        volume = pre({"image": path})["image"].as_tensor().float()[None]
        return float(predictor(volume)["lesion_log_odds"][0])

    print(f"# lesion classifier on the MNI152 template under perturbations\n\nCPU: {machine_line()}\n")
    print(f"overrides: {overrides or None}")
    print(f"bundle {args.bundle_root.name}, threshold {threshold} = {log_odds_threshold:.1f} log-odds; template "
          f"{args.resolution} mm, lesion seed {args.seed}; volume scores in log-odds\n")
    results: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        datalist = json.loads(make_template_checks(tmp, args.resolution, seed=args.seed).read_text())
        rng = np.random.default_rng(0)
        for item in tqdm(datalist["test"], desc="cases", file=sys.stderr):
            image = nib.load(Path(tmp) / f"mni_template_{args.resolution}mm" / item["image"])
            data = np.asarray(image.dataobj, dtype=np.float32)
            row = {}
            for name, img in perturbations(data, rng).items():
                path = str(Path(tmp) / "perturbed.nii.gz")
                nib.save(nib.Nifti1Image(img.astype(np.float32), image.affine), path)
                row[name] = round(score(path), 2)
            results[item["id"]] = row
    names = list(next(iter(results.values())))
    print("| case | " + " | ".join(names) + " |")
    print("|---|" + "---|" * len(names))
    for case, row in results.items():
        print(f"| {case} | " + " | ".join(f"{row[n]:.1f}" for n in names) + " |")
    if args.json:
        args.json.write_text(json.dumps({"cpu": machine_line(), "threshold_log_odds": log_odds_threshold,
                                         "results": results}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
