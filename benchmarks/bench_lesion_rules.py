"""What the classification bundle's lesion rules add to the time of a scan.

The bundle scores every volume after its predictor has run also by its lesion rules
(:class:`medmamba.inferers.LesionRule`): the gated bright-outlier rule since classification 0.15.0, the
dark-asymmetry rule since 0.16.0. Loads the bundle's ``inference.json`` (its trained weights and the
segmentation bundle's beside it) once, preprocesses the ``--image`` as the bundle does, and times, round by
round alternated (:func:`common.alternating_medians`), the predictor alone (0.14.x), the predictor and the
bright-outlier rule (0.15.0), and the predictor and both rules (0.16.0). Prints the median seconds side by
side, their ratios to the predictor alone and the CPU. Loading, resampling and writing are not included
(the same for all).

Usage::

    python benchmarks/bench_lesion_rules.py --image a.nii.gz [--rounds 3] [--threads 2] [--bundle B]
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from common import alternating_medians, machine_line, scan_benchmark_args  # noqa: E402

from medmamba.resources import configure_threads  # noqa: E402

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    from monai.bundle import ConfigParser

    args = scan_benchmark_args(__doc__, ROOT / "bundles" / "mobilemamba_classification", argv)
    configure_threads(args.threads)
    config = ConfigParser()
    config.read_config(str(args.bundle / "configs" / "inference.json"))
    config["bundle_root"] = str(args.bundle)
    config["bright_outlier"], config["dark_asymmetry"] = True, True
    predictor, preprocessing = config.get_parsed_content("predictor"), config.get_parsed_content("preprocessing")
    bright, dark = config.get_parsed_content("bright_outlier_rule"), config.get_parsed_content("dark_asymmetry_rule")
    case = preprocessing({"image": str(args.image)})
    volume, unnormalised = case["image"].as_tensor()[None], case["unnormalised_image"]
    clusters: dict[str, int | None] = {}

    def predictor_alone() -> None:  # VolumeClassifier runs without gradients
        predictor(volume)

    def with_bright() -> None:
        predictor(volume)
        clusters["bright"] = bright(unnormalised, predictor)

    def with_both() -> None:
        predictor(volume)
        clusters["bright"], clusters["dark"] = bright(unnormalised, predictor), dark(unnormalised, predictor)

    medians = alternating_medians({"predictor": predictor_alone, "bright": with_bright, "both": with_both}, args.rounds)
    alone = medians["predictor"]
    print(f"# the lesion rules after the classification bundle's predictor\n\nCPU: {machine_line()}\n")
    print(f"{args.image.name}, network input {tuple(volume.shape[2:])}, {args.threads} threads, {args.rounds} rounds, "
          f"median seconds; clusters: bright-outlier {clusters.get('bright')}, dark-asymmetry {clusters.get('dark')} voxels\n")
    print("| predictor (0.14.x) | and bright-outlier rule (0.15.0) | and both rules (0.16.0) | ratios to the predictor |\n"
          "|---|---|---|---|")
    print(f"| {alone:.2f} | {medians['bright']:.2f} | {medians['both']:.2f} | "
          f"{medians['bright'] / alone:.2f} / {medians['both'] / alone:.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
