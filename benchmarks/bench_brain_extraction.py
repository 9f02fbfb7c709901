"""What the classification bundle's brain extraction costs: its predictor with and without it.

Loads ``inference.json`` of a classification bundle (its trained weights) and of the segmentation
bundle beside it, preprocesses one scan as the classification bundle does, and times the predictor
(``VolumeClassifier``) on that preprocessed volume in one process, the settings alternated round by
round:

- ``none``: the slice-stack inferer alone (``--brain_extraction false``, classification 0.12.3);
- ``single pass`` (the default since 0.13.0): the segmentation network's single slice-stack pass
  finds the brain (``brain_extraction_inferer`` ``inferer#inferer``), then the classifier;
- ``segmentation inference``: the segmentation bundle's own two brain-normalised passes with flip
  TTA (``brain_extraction_inferer`` ``brain_normalizing_inferer``), then the classifier.

Prints the median seconds side by side, the ratio to ``none``, and the CPU. Loading, resampling and
writing are not included (the same for every setting).

Usage::

    python benchmarks/bench_brain_extraction.py --image scan.nii.gz \\
        [--bundle bundles/mobilemamba_classification] [--rounds 3] [--threads 2]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from common import machine_line  # noqa: E402

from medmamba.resources import configure_threads  # noqa: E402

__all__ = ["main"]

#: setting label -> ``brain_extraction_inferer`` (``None``: no brain extraction)
SETTINGS = {"none": None, "single pass": "inferer#inferer", "segmentation inference": "brain_normalizing_inferer"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--image", type=Path, required=True, help="a NIfTI file or DICOM series folder")
    parser.add_argument("--bundle", type=Path, default=ROOT / "bundles" / "mobilemamba_classification")
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds (each times every setting once)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    if args.rounds < 1:
        parser.error(f"--rounds must be at least 1, got {args.rounds}")
    from monai.bundle import ConfigParser

    configure_threads(args.threads)
    predictors = {}
    for label, item in SETTINGS.items():
        config = ConfigParser()
        config.read_config(str(args.bundle / "configs" / "inference.json"))
        config["bundle_root"] = str(args.bundle)
        config["brain_extraction"] = item is not None
        if item is not None:
            config["brain_extraction_inferer"] = item
        predictors[label] = config.get_parsed_content("predictor")
        if label == "none":
            data = config.get_parsed_content("preprocessing")({"image": str(args.image)})
    volume = data["image"].as_tensor()[None]
    times: dict[str, list[float]] = {label: [] for label in SETTINGS}
    for round_ in range(args.rounds + 1):  # round 0 warms up
        for label, predictor in predictors.items():
            start = time.perf_counter()
            with torch.no_grad():
                predictor(volume)
            if round_:
                times[label].append(time.perf_counter() - start)
    base = statistics.median(times["none"])
    print(f"# classification with brain extraction\n\nCPU: {machine_line()}\n")
    print(f"scan {args.image.name}, network input {tuple(volume.shape[2:])} voxels, {args.rounds} rounds, median\n")
    print("| brain extraction | seconds | ratio to none |")
    print("|---|---|---|")
    for label in SETTINGS:
        t = statistics.median(times[label])
        print(f"| {label} | {t:.2f} | {t / base:.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
