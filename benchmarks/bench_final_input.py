"""What the segmentation bundle's final pass costs with each ``final_input`` (head, brain, head and brain).

Since segmentation 0.8.0 the final pass sees the whole head and its stripped brain
(``final_input`` ``head_and_brain``, :func:`medmamba.inferers.combine_head_and_brain`): the flip TTA's
plain run sees the head, its mirror run the brain, so no network run is added; what is added is the
stripping and the combination of the two runs' probabilities. Loads the segmentation bundle's
``inference.json`` (its trained weights) once per setting, preprocesses each ``--image`` as the bundle
does and times the predictor on the preprocessed volumes, the settings alternated round by round
(:func:`common.alternating_medians`). Prints the median seconds per volume side by side, each
setting's ratio to ``head`` (0.7.x) and the CPU. Loading, resampling, refinement and writing are not
included (the same for every setting).

Usage::

    python benchmarks/bench_final_input.py --image a.nii.gz --image b.nii.gz [--rounds 3] [--threads 2] [--bundle B]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from common import machine_line, seconds_per_volume  # noqa: E402

from medmamba.inferers import FINAL_INPUTS  # noqa: E402
from medmamba.resources import configure_threads  # noqa: E402

__all__ = ["main"]


def _predictor(bundle: Path, final_input: str) -> tuple[Any, Any]:
    """``(predictor, preprocessing)`` of the segmentation bundle's ``inference.json`` with ``final_input``."""
    from monai.bundle import ConfigParser

    config = ConfigParser()
    config.read_config(str(bundle / "configs" / "inference.json"))
    config["bundle_root"] = str(bundle)
    config["final_input"] = final_input
    config["inferer#inferer#progress"] = False  # no per-volume slice bars between the table's rows
    return config.get_parsed_content("predictor"), config.get_parsed_content("preprocessing")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--image", type=Path, action="append", required=True, help="a NIfTI file or DICOM series folder (repeat)")
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds (each times every setting once)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--bundle", type=Path, default=ROOT / "bundles" / "mobilemamba_segmentation")
    args = parser.parse_args(argv)
    if args.rounds < 1:
        parser.error(f"--rounds must be at least 1, got {args.rounds}")
    configure_threads(args.threads)
    loaded = {name: _predictor(args.bundle, name) for name in FINAL_INPUTS}
    predictors = {name: predictor for name, (predictor, _) in loaded.items()}
    preprocessing = loaded["head"][1]
    volumes = [preprocessing({"image": str(p)})["image"].as_tensor()[None] for p in args.image]
    seconds = seconds_per_volume(predictors, volumes, args.rounds)
    print(f"# the segmentation bundle's final pass by final_input\n\nCPU: {machine_line()}\n")
    print(f"{len(volumes)} scans ({', '.join(p.name for p in args.image)}), network input {tuple(volumes[0].shape[2:])} "
          f"(first scan), {args.threads} threads, {args.rounds} rounds, median seconds per scan\n")
    print("| " + " | ".join(FINAL_INPUTS) + " | " + " | ".join(f"{n} / head" for n in FINAL_INPUTS[1:]) + " |")
    print("|" + "---|" * (2 * len(FINAL_INPUTS) - 1))
    print("| " + " | ".join(f"{seconds[n]:.2f}" for n in FINAL_INPUTS) + " | "
          + " | ".join(f"{seconds[n] / seconds['head']:.2f}" for n in FINAL_INPUTS[1:]) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
