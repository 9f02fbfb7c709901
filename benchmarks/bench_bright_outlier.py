"""What the classification bundle's bright-outlier rule adds to the time of a scan.

Since classification 0.15.0 the bundle scores every volume also by the gated bright-outlier rule
(:class:`medmamba.inferers.BrightOutlierRule`) after its predictor has run. Loads the bundle's
``inference.json`` (its trained weights and the segmentation bundle's beside it) once, preprocesses the
``--image`` as the bundle does, and times, round by round alternated (:func:`common.alternating_medians`),
the predictor alone (0.14.x) and the predictor followed by the rule. Prints the median seconds
side by side, their ratio and the CPU. Loading, resampling and writing are not included (the same for both).

Usage::

    python benchmarks/bench_bright_outlier.py --image a.nii.gz [--rounds 3] [--threads 2] [--bundle B]
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
    config["bright_outlier"] = True
    predictor, preprocessing = config.get_parsed_content("predictor"), config.get_parsed_content("preprocessing")
    rule = config.get_parsed_content("bright_outlier_rule")
    case = preprocessing({"image": str(args.image)})
    volume, unnormalised = case["image"].as_tensor()[None], case["unnormalised_image"]
    cluster: list[int | None] = [None]

    def predictor_alone() -> None:  # VolumeClassifier runs without gradients
        predictor(volume)

    def with_rule() -> None:
        predictor(volume)
        cluster[0] = rule(unnormalised, predictor)

    medians = alternating_medians({"predictor": predictor_alone, "with rule": with_rule}, args.rounds)
    alone, both = medians["predictor"], medians["with rule"]
    print(f"# the bright-outlier rule after the classification bundle's predictor\n\nCPU: {machine_line()}\n")
    print(f"{args.image.name}, network input {tuple(volume.shape[2:])}, {args.threads} threads, {args.rounds} rounds, "
          f"median seconds; the rule's cluster {cluster[0]} voxels\n")
    print("| predictor (0.14.x) | predictor and rule (0.15.0) | ratio |\n|---|---|---|")
    print(f"| {alone:.2f} | {both:.2f} | {both / alone:.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
