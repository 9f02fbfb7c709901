"""What the classification bundle's mirror read-out and lesion rules add to the time of a scan.

The bundle scores every volume after its predictor has run also by its lesion rules
(:class:`medmamba.inferers.LesionRule`): the gated bright-outlier rule since classification 0.15.0, the
dark-asymmetry rule since 0.16.0. Since 0.17.0 the predictor's mirror read-out reflects about each brain's
mid-sagittal plane found by symmetry (``volume_readout`` ``aligned_mirror``), and the dark-asymmetry rule
takes that plane instead of fitting its own. Loads the bundle's ``inference.json`` (its trained weights and
the segmentation bundle's beside it) twice, with its read-out and with 0.16.0's (``mirror``, margin 4),
preprocesses the ``--image`` as the bundle does, and times, round by round alternated
(:func:`common.alternating_medians`), each predictor alone and each with both rules. Prints the median
seconds side by side, the ratios and the CPU. Loading, resampling and writing are not included (the same
for all).

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


def _parsed(bundle: Path, **overrides):
    """The bundle's predictor, preprocessing and both rules, ``inference.json`` with ``overrides``."""
    from monai.bundle import ConfigParser

    config = ConfigParser()
    config.read_config(str(bundle / "configs" / "inference.json"))
    config["bundle_root"] = str(bundle)
    config["bright_outlier"], config["dark_asymmetry"] = True, True
    for key, value in overrides.items():
        config[key] = value
    return (config.get_parsed_content("predictor"), config.get_parsed_content("preprocessing"),
            config.get_parsed_content("bright_outlier_rule"), config.get_parsed_content("dark_asymmetry_rule"),
            config["volume_readout"])


def main(argv: list[str] | None = None) -> int:
    args = scan_benchmark_args(__doc__, ROOT / "bundles" / "mobilemamba_classification", argv)
    configure_threads(args.threads)
    predictor, preprocessing, bright, dark, readout = _parsed(args.bundle)
    upright, *_ = _parsed(args.bundle, volume_readout="mirror", mirror_margin=4.0)
    case = preprocessing({"image": str(args.image)})
    volume, unnormalised = case["image"].as_tensor()[None], case["unnormalised_image"]
    clusters: dict[str, tuple[int | None, int | None]] = {}

    def runs(name: str, chain):
        def alone() -> None:  # VolumeClassifier runs without gradients
            chain(volume)

        def with_rules() -> None:
            chain(volume)
            clusters[name] = bright(unnormalised, chain), dark(unnormalised, chain)

        return alone, with_rules

    upright_alone, upright_rules = runs("mirror", upright)
    aligned_alone, aligned_rules = runs(readout, predictor)
    medians = alternating_medians({"upright": upright_alone, "aligned": aligned_alone, "upright_rules": upright_rules,
                                   "aligned_rules": aligned_rules}, args.rounds)
    print(f"# the mirror read-out and the lesion rules of the classification bundle\n\nCPU: {machine_line()}\n")
    print(f"{args.image.name}, network input {tuple(volume.shape[2:])}, {args.threads} threads, {args.rounds} rounds, "
          f"median seconds; clusters (bright-outlier, dark-asymmetry): upright {clusters.get('mirror')}, "
          f"{readout} {clusters.get(readout)} voxels\n")
    print(f"| predictor, mirror (0.16.0) | predictor, {readout} | and both rules (0.16.0) | and both rules ({readout}) "
          f"| ratios {readout} / 0.16.0: predictor, with rules |\n|---|---|---|---|---|")
    print(f"| {medians['upright']:.2f} | {medians['aligned']:.2f} | {medians['upright_rules']:.2f} | "
          f"{medians['aligned_rules']:.2f} | {medians['aligned'] / medians['upright']:.2f} / "
          f"{medians['aligned_rules'] / medians['upright_rules']:.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
