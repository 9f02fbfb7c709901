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

import sys
from collections.abc import Callable
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from common import alternating_medians, machine_line, scan_benchmark_args  # noqa: E402

from medmamba.resources import configure_threads  # noqa: E402

__all__ = ["main"]

#: setting label -> ``brain_extraction_inferer`` (``None``: no brain extraction)
SETTINGS = {"none": None, "single pass": "inferer#inferer", "segmentation inference": "brain_normalizing_inferer"}


def main(argv: list[str] | None = None) -> int:
    args = scan_benchmark_args(__doc__, ROOT / "bundles" / "mobilemamba_classification", argv)
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

    def run(predictor: Callable[[torch.Tensor], object]) -> Callable[[], None]:
        def call() -> None:
            with torch.no_grad():
                predictor(volume)
        return call

    medians = alternating_medians({label: run(p) for label, p in predictors.items()}, args.rounds)
    base = medians["none"]
    print(f"# classification with brain extraction\n\nCPU: {machine_line()}\n")
    print(f"scan {args.image.name}, network input {tuple(volume.shape[2:])} voxels, {args.rounds} rounds, median\n")
    print("| brain extraction | seconds | ratio to none |")
    print("|---|---|---|")
    for label in SETTINGS:
        print(f"| {label} | {medians[label]:.2f} | {medians[label] / base:.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
