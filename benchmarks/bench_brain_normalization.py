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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--image", type=Path, required=True, help="a NIfTI file or DICOM series folder")
    parser.add_argument("--bundle", type=Path, default=ROOT / "bundles" / "mobilemamba_segmentation")
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds (each times every setting once)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    if args.rounds < 1:
        parser.error(f"--rounds must be at least 1, got {args.rounds}")
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
    settings = (0, 1, 2)
    times: dict[int, list[float]] = {p: [] for p in settings}
    for round_ in range(args.rounds + 1):  # round 0 warms up
        for passes in settings:
            brain_inferer.tissue_passes = passes
            start = time.perf_counter()
            with torch.no_grad():
                predictor(volume)
            if round_:
                times[passes].append(time.perf_counter() - start)
    base = statistics.median(times[0])
    print(f"# brain-normalising segmentation inference\n\nCPU: {machine_line()}\n")
    print(f"scan {args.image.name}, network input {tuple(volume.shape[2:])} voxels, {args.rounds} rounds, median\n")
    print("| tissue_passes | network passes | seconds | ratio to 0 |")
    print("|---|---|---|---|")
    for passes in settings:
        t = statistics.median(times[passes])
        print(f"| {passes} | {passes + 1} | {t:.2f} | {t / base:.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
