"""What reusing the segmentation network's pass over the volume as given saves (``reuse_last_pass``).

With the contrast-polarity check on (``contrast_polarity`` ``auto``, the default of both bundles'
``inference.json``), each volume is run through the segmentation network as given and inverted before
the bundle's own passes, and one of those repeats the probe's pass over the volume as given: the
classification bundle's brain extraction (the segmentation network's single slice-stack pass) and the
first half of the segmentation bundle's first flip-TTA pass. With ``reuse_last_pass`` (the
segmentation bundle's slice-stack inferer, on since segmentation 0.7.1 / classification 0.14.2) that
pass is computed once.

Loads both bundles' ``inference.json`` (their trained weights), preprocesses each ``--image`` as each
bundle does and times each bundle's predictor on the preprocessed volumes in one process, with and
without reuse, alternated round by round (:func:`common.alternating_medians`); checks that both give
the same output, value for value. Prints the median seconds per volume side by side, their ratio and
the CPU. Loading, resampling and writing are not included (the same either way).

Usage::

    python benchmarks/bench_pass_reuse.py --image a.nii.gz --image b.nii.gz [--rounds 3] [--threads 1] [--bundles bundles]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from common import equal_outputs, machine_line, seconds_per_volume  # noqa: E402

from medmamba.resources import configure_threads  # noqa: E402

__all__ = ["main"]

BUNDLES = {"classification": "mobilemamba_classification", "segmentation": "mobilemamba_segmentation"}


def _predictor(bundle: Path, reuse: bool) -> tuple[Any, Any]:
    """``(predictor, preprocessing)`` of a bundle's ``inference.json``, the segmentation network's
    slice-stack inferer reusing its last pass or not."""
    from monai.bundle import ConfigParser

    from medmamba.inferers import ContrastPolarityInferer, SliceStackInferer

    config = ConfigParser()
    config.read_config(str(bundle / "configs" / "inference.json"))
    config["bundle_root"] = str(bundle)
    config["contrast_polarity"] = "auto"
    if "inferer#inferer#progress" in config:  # no per-volume slice bars between the table's rows
        config["inferer#inferer#progress"] = False
    predictor = config.get_parsed_content("predictor")
    polarity = config.get_parsed_content("polarity_inferer")  # the instance inside the predictor's chain
    if not isinstance(polarity, ContrastPolarityInferer) or not isinstance(polarity.probe_inferer, SliceStackInferer):
        raise ValueError(f"{bundle}: expected a contrast-polarity probe with a SliceStackInferer, got {type(polarity).__name__}.")
    polarity.probe_inferer.reuse_last_pass = reuse  # the same instance as the pass it is reused by
    return predictor, config.get_parsed_content("preprocessing")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--image", type=Path, action="append", required=True, help="a NIfTI file or DICOM series folder (repeat)")
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds (each times every setting once)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--bundles", type=Path, default=ROOT / "bundles", help="the folder of the two trained bundles")
    args = parser.parse_args(argv)
    if args.rounds < 1:
        parser.error(f"--rounds must be at least 1, got {args.rounds}")
    configure_threads(args.threads)
    print(f"# reuse of the segmentation network's pass over the volume as given\n\nCPU: {machine_line()}\n")
    print(f"{len(args.image)} scans ({', '.join(p.name for p in args.image)}), {args.rounds} rounds, median seconds per scan\n")
    print("| bundle | network input (first scan) | without reuse | with reuse | ratio | same outputs |")
    print("|---|---|---|---|---|---|")
    for name, folder in BUNDLES.items():
        bundle = args.bundles / folder
        (off, preprocessing), (on, _) = _predictor(bundle, False), _predictor(bundle, True)
        volumes = [preprocessing({"image": str(p)})["image"].as_tensor()[None] for p in args.image]
        with torch.no_grad():
            same = all(equal_outputs(off(v), on(v)) for v in volumes)
        seconds = seconds_per_volume({"off": off, "on": on}, volumes, args.rounds)
        print(f"| {name} | {tuple(volumes[0].shape[2:])} | {seconds['off']:.2f} | {seconds['on']:.2f} "
              f"| {seconds['on'] / seconds['off']:.2f} | {'yes' if same else 'NO'} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
