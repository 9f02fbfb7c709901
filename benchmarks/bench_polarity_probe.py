"""The contrast-polarity probe on sampled slice stacks: same decisions, how much faster.

Both bundles run the segmentation network on every volume as given and inverted before their own
passes (``contrast_polarity`` ``auto``): the pass as given is reused by the next step, the inverted
one is the probe's own cost (about a quarter of the segmentation bundle's network time on a T1 scan).
With ``polarity_probe_slice_step`` ``s`` the inverted volume runs on every ``s``-th slice stack and both
tissue-map fits are measured on those slices (:class:`medmamba.inferers.ContrastPolarityInferer`).

Two parts, in one process, with the segmentation bundle's trained weights:

1. **Decisions.** For every image of every ``--set`` (a folder with ``images/*.nii.gz``, e.g. a set of
   ``benchmarks/shift_suite.py``'s ``data/``, or one file), preprocessed as the segmentation bundle
   does: the fits at each ``--steps`` value; per set the volumes analysed inverted at each step,
   whether every decision equals the first step's, the largest change of the two gains the decision
   reads (explained variance and confidence, inverted minus given) against the first step, and the
   smallest margin of a decision at each step (:func:`decision_margin`).
2. **Time.** Each bundle's predictor on ``--time-image`` scans with step 1 and with ``--time-step``,
   alternated round by round (:func:`common.alternating_medians`); median seconds per scan side by
   side, their ratio, whether the outputs are equal value for value. Loading, resampling and writing
   are not included (the same either way).

Usage::

    python benchmarks/bench_polarity_probe.py --set suite/data/t1_head_2mm --set suite/data/t2_head_2mm \\
        --time-image a.nii.gz [--steps 1 2 4 8] [--time-step 4] [--rounds 3] [--threads 1] [--bundles bundles]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from common import equal_outputs, machine_line, seconds_per_volume  # noqa: E402

from medmamba.resources import configure_threads  # noqa: E402

__all__ = ["decision_margin", "main", "set_images"]

BUNDLES = {"classification": "mobilemamba_classification", "segmentation": "mobilemamba_segmentation"}


def set_images(path: Path) -> list[Path]:
    """The NIfTI images of a set: ``path`` itself (a file), or ``images/*.nii.gz`` (else ``*.nii.gz``) in it.

    Raises:
        ValueError: the path does not exist or holds no NIfTI image.
    """
    if path.is_file():
        return [path]
    images = sorted((path / "images").glob("*.nii*")) or sorted(path.glob("*.nii*"))
    if not images:
        raise ValueError(f"--set {path}: expected a NIfTI file or a folder with images/*.nii.gz, found none.")
    return images


def decision_margin(given: Any, inverted: Any, min_explained_gain: float, min_confidence_gain: float) -> float:
    """How far a polarity decision lies from flipping: for a volume inverted, the smaller of the two
    gains' excess over their thresholds; for one left as given, the larger shortfall's size (the gain
    that fails by more); in the gains' own units (explained-variance share, mean probability)."""
    excess = (inverted.explained - given.explained - min_explained_gain,
              inverted.confidence - given.confidence - min_confidence_gain)
    if min(excess) >= 0:
        return min(excess)
    return -min(excess)


def _config(bundle: Path, step: int) -> Any:
    from monai.bundle import ConfigParser

    config = ConfigParser()
    config.read_config(str(bundle / "configs" / "inference.json"))
    config["bundle_root"] = str(bundle)
    config["contrast_polarity"] = "auto"
    config["polarity_probe_slice_step"] = step
    if "inferer#inferer#progress" in config:  # no per-volume slice bars between the table's rows
        config["inferer#inferer#progress"] = False
    return config


def _decisions(bundles: Path, sets: list[Path], steps: list[int]) -> None:
    from medmamba.inferers import ContrastPolarityInferer, prefers_inverted

    config = _config(bundles / BUNDLES["segmentation"], 1)
    network = config.get_parsed_content("network")
    preprocessing = config.get_parsed_content("preprocessing")
    base = config.get_parsed_content("polarity_inferer")
    probes = {s: ContrastPolarityInferer(base.inferer, probe_inferer=base.probe_inferer, probe_network=base.probe_network,
                                         min_explained_gain=base.min_explained_gain,
                                         min_confidence_gain=base.min_confidence_gain, probe_slice_step=s)
              for s in steps}
    steps_text = " / ".join(str(s) for s in steps)
    print(f"| set | volumes | inverted at step {steps_text} | same decisions | largest gain change vs step {steps[0]} at step "
          f"{' / '.join(str(s) for s in steps[1:])} (explained; confidence) | smallest margin at step {steps_text} |")
    print("|---|---|---|---|---|---|")
    for folder in sets:
        images = set_images(folder)
        inverted_counts = dict.fromkeys(steps, 0)
        margins = dict.fromkeys(steps, float("inf"))
        changes = {s: [0.0, 0.0] for s in steps[1:]}
        same = True
        for image in tqdm(images, desc=folder.name, unit="volume", leave=False):
            volume = preprocessing({"image": str(image)})["image"].as_tensor()
            gains, choices = {}, {}
            for step, probe in probes.items():
                given, inverted = probe.fits(volume, network)
                choices[step] = prefers_inverted(given, inverted, probe.min_explained_gain, probe.min_confidence_gain)
                inverted_counts[step] += int(choices[step])
                gains[step] = (inverted.explained - given.explained, inverted.confidence - given.confidence)
                margins[step] = min(margins[step], decision_margin(given, inverted, probe.min_explained_gain, probe.min_confidence_gain))
            same &= len(set(choices.values())) == 1
            for step in steps[1:]:
                for k in range(2):
                    changes[step][k] = max(changes[step][k], abs(gains[step][k] - gains[steps[0]][k]))
        change_text = " / ".join(f"{changes[s][0]:.3f}; {changes[s][1]:.3f}" for s in steps[1:])
        print(f"| {folder.name} | {len(images)} | {' / '.join(str(inverted_counts[s]) for s in steps)} "
              f"| {'yes' if same else 'NO'} | {change_text} | {' / '.join(f'{margins[s]:.3f}' for s in steps)} |", flush=True)


def _timing(bundles: Path, images: list[Path], step: int, rounds: int) -> None:
    print(f"\n{len(images)} scans ({', '.join(p.name for p in images)}), {rounds} rounds, median seconds per scan\n")
    print(f"| bundle | network input (first scan) | step 1 | step {step} | ratio | same outputs |")
    print("|---|---|---|---|---|---|")
    for name, folder in BUNDLES.items():
        full_config, sampled_config = _config(bundles / folder, 1), _config(bundles / folder, step)
        full, sampled = full_config.get_parsed_content("predictor"), sampled_config.get_parsed_content("predictor")
        preprocessing = full_config.get_parsed_content("preprocessing")
        volumes = [preprocessing({"image": str(p)})["image"].as_tensor()[None] for p in images]
        with torch.no_grad():
            same = all(equal_outputs(full(v), sampled(v)) for v in volumes)
        seconds = seconds_per_volume({"full": full, "sampled": sampled}, volumes, rounds)
        print(f"| {name} | {tuple(volumes[0].shape[2:])} | {seconds['full']:.2f} | {seconds['sampled']:.2f} "
              f"| {seconds['sampled'] / seconds['full']:.2f} | {'yes' if same else 'NO'} |", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--set", type=Path, action="append", default=[], help="a set folder (images/*.nii.gz) or a NIfTI file (repeat)")
    parser.add_argument("--steps", type=int, nargs="+", default=[1, 2, 4, 8], help="probe slice steps; the first is the reference")
    parser.add_argument("--time-image", type=Path, action="append", default=[], help="a scan to time both bundles on (repeat)")
    parser.add_argument("--time-step", type=int, default=4, help="the step timed against step 1")
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds (each times both settings once)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--bundles", type=Path, default=ROOT / "bundles", help="the folder of the two trained bundles")
    args = parser.parse_args(argv)
    if args.rounds < 1:
        parser.error(f"--rounds must be at least 1, got {args.rounds}")
    if min(args.steps + [args.time_step]) < 1:
        parser.error(f"--steps and --time-step must be at least 1, got {args.steps} and {args.time_step}")
    if not args.set and not args.time_image:
        parser.error("give at least one --set or --time-image")
    configure_threads(args.threads)
    print(f"# the contrast-polarity probe on sampled slice stacks\n\nCPU: {machine_line()}\n")
    with torch.no_grad():
        if args.set:
            _decisions(args.bundles, args.set, args.steps)
        if args.time_image:
            _timing(args.bundles, args.time_image, args.time_step, args.rounds)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
