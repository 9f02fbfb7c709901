"""What the brain-normalising inference costs: the segmentation bundle's predictor with 0, 1 and 2 tissue passes.

Loads ``inference.json`` of a segmentation bundle (its trained weights), preprocesses one scan as
the bundle does, and times the predictor (``VolumeSegmenter`` through
``medmamba.inferers.BrainNormalizingInferer``) on that preprocessed volume with ``tissue_passes`` 0
(one network pass, as before segmentation 0.6.8), 1 (the default) and 2, in one process, the
settings alternated round by round; prints the median seconds side by side, the ratio to 0 passes,
and the CPU. Loading, resampling and writing the outputs are not included (they are the same for
every setting).

Usage::

    python benchmarks/bench_brain_normalization.py --image scan.nii.gz \\
        [--bundle bundles/mobilemamba_segmentation] [--rounds 3] [--threads 2]
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


def main(argv: list[str] | None = None) -> int:
    args = scan_benchmark_args(__doc__, ROOT / "bundles" / "mobilemamba_segmentation", argv)
    from monai.bundle import ConfigParser

    configure_threads(args.threads)
    config = ConfigParser()
    config.read_config(str(args.bundle / "configs" / "inference.json"))
    config["bundle_root"] = str(args.bundle)
    config["inferer#inferer#progress"] = False
    preprocessing = config.get_parsed_content("preprocessing")
    predictor = config.get_parsed_content("predictor")
    brain_inferer = config.get_parsed_content("brain_normalizing_inferer")
    data = preprocessing({"image": str(args.image)})
    volume = data["image"].as_tensor()[None]

    def run(passes: int) -> Callable[[], None]:
        def call() -> None:
            brain_inferer.tissue_passes = passes
            with torch.no_grad():
                predictor(volume)
        return call

    settings = (0, 1, 2)
    medians = alternating_medians({p: run(p) for p in settings}, args.rounds)
    base = medians[0]
    print(f"# brain-normalising segmentation inference\n\nCPU: {machine_line()}\n")
    print(f"scan {args.image.name}, network input {tuple(volume.shape[2:])} voxels, {args.rounds} rounds, median\n")
    print("| tissue_passes | network passes | seconds | ratio to 0 |")
    print("|---|---|---|---|")
    for passes in settings:
        print(f"| {passes} | {passes + 1} | {medians[passes]:.2f} | {medians[passes] / base:.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
