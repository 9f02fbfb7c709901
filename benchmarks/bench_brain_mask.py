"""What the brain mask's opening costs: :func:`medmamba.transforms.detach_brain` on the mask's bounding
box (since segmentation 0.6.14) against the whole array (up to 0.6.13), in one run.

The segmentation bundle detaches face and neck from the network's brain (a 6 mm opening: two
Euclidean distance transforms) on the input's own grid, twice per case since 0.6.13 (before its
brain gaps are closed, and in the clean-up of the final label map), and once more per pass on its
2 mm network grid; the classification bundle once per volume. On a whole head the brain's bounding
box is a fraction of the grid (face, neck and air around it), and the distance transforms need no
more than that box grown by one voxel: the result is the same array (``tests/test_brain_detach.py``).

With ``--image`` (a NIfTI scan), the segmentation bundle's ``inference.json`` is also run end to end
on it in this process (``monai.bundle.run``: loading, network, refinement, clean-up, writing), the
two settings alternated round by round (the whole-array setting by patching ``detach_brain``'s
default for the run), and the written label maps compared.

Input: a label map or class probabilities (``--labels``: a NIfTI such as a segmentation bundle's
``<case>_seg.nii.gz`` or ``<case>_prob.nii.gz``; brain = labels 1-3, or the arg-max of the
probabilities); by default the tissue labels of the default data's first validation subject (2 mm, a
generated head's grid; ``--zoom 2`` gives it on a 1 mm grid by nearest neighbour). Prints the median
seconds of both settings side by side, their ratio, whether the masks are equal, and the CPU.

Usage::

    python benchmarks/bench_brain_mask.py [--labels case_seg.nii.gz] [--zoom 1] [--rounds 5] [--radius-mm 6] \
        [--image scan.nii.gz [--bundle bundles/mobilemamba_segmentation] [--threads 2]]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from common import alternating_medians, machine_line  # noqa: E402

__all__ = ["main"]


def default_labels() -> Path:
    """The tissue labels of the default data's first validation subject."""
    datalist = json.loads((ROOT / "data" / "default" / "datalist_segmentation.json").read_text())
    return ROOT / "data" / "default" / datalist["validation"][0]["label"]


def load_brain(path: Path, zoom: int) -> tuple[np.ndarray, list[float]]:
    """``(brain mask, voxel size in mm)`` of a label map or probability NIfTI, ``zoom``-fold finer."""
    import nibabel as nib

    image = nib.load(str(path))
    array = np.asarray(image.dataobj)
    labels = array.argmax(-1) if array.ndim == 4 else array
    brain = np.isin(labels, (1, 2, 3))
    spacing = [float(v) for v in image.header.get_zooms()[:3]]
    if zoom > 1:
        for axis in range(3):
            brain = np.repeat(brain, zoom, axis=axis)
        spacing = [v / zoom for v in spacing]
    return brain, spacing


def end_to_end(image: Path, bundle: Path, rounds: int, threads: int) -> tuple[dict[str, float], bool]:
    """Median seconds of the bundle's whole ``inference.json`` run on ``image``, the opening on the whole
    array and on the bounding box, and whether their label maps are byte-identical."""
    import functools
    import tempfile

    from monai.bundle import run

    import medmamba.transforms.brain_mask as brain_mask

    shipped = brain_mask.detach_brain
    whole = functools.partial(shipped, crop=False)
    work = Path(tempfile.mkdtemp(prefix="bench_brain_mask_"))
    (work / "in").mkdir()
    (work / "in" / image.name).symlink_to(image.resolve())
    outputs: dict[str, Path] = {}

    def call(label: str, detach: Callable[..., np.ndarray]) -> Callable[[], None]:
        def go() -> None:
            brain_mask.detach_brain = detach
            try:
                outputs[label] = work / label.split()[0]
                run(config_file=str(bundle / "configs" / "inference.json"), bundle_root=str(bundle),
                    input_path=str(work / "in"), output_dir=str(outputs[label]), num_threads=threads)
            finally:
                brain_mask.detach_brain = shipped
        return go

    try:
        medians = alternating_medians({"whole array (0.6.13)": call("whole array (0.6.13)", whole),
                                       "bounding box (0.6.14)": call("bounding box (0.6.14)", shipped)}, rounds)
        segs = [sorted(outputs[label].rglob("*_seg.nii.gz")) for label in medians]
        equal = bool(segs[0]) and len(segs[0]) == len(segs[1]) and all(
            a.read_bytes() == b.read_bytes() for a, b in zip(*segs))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return medians, equal


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--labels", type=Path, default=None, help="label map or probabilities (NIfTI)")
    parser.add_argument("--zoom", type=int, default=1, help="make the grid this many times finer (nearest neighbour)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--radius-mm", type=float, default=6.0, help="the opening's radius (the bundles' 6 mm)")
    parser.add_argument("--image", type=Path, default=None, help="also time the segmentation bundle on this scan")
    parser.add_argument("--bundle", type=Path, default=ROOT / "bundles" / "mobilemamba_segmentation")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.zoom < 1:
        parser.error(f"--rounds and --zoom must be at least 1, got {args.rounds} and {args.zoom}")
    from medmamba.transforms import detach_brain
    from medmamba.transforms.brain_mask import _bounding_box

    path = args.labels or default_labels()
    brain, spacing = load_brain(path, args.zoom)
    if not brain.any():
        parser.error(f"--labels {path}: no voxel labelled 1-3 (brain)")
    box = int(np.prod([s.stop - s.start for s in _bounding_box(brain, margin=1)]))  # what detach_brain works on
    settings = {
        "whole array (0.6.13)": lambda: detach_brain(brain, spacing, args.radius_mm, crop=False),
        "bounding box (0.6.14)": lambda: detach_brain(brain, spacing, args.radius_mm),
    }
    equal = bool(np.array_equal(settings["whole array (0.6.13)"](), settings["bounding box (0.6.14)"]()))
    medians = alternating_medians(settings, args.rounds)
    print(machine_line())
    print(f"input {path} x{args.zoom}: grid {brain.shape} at {spacing} mm, brain {int(brain.sum())} voxels, "
          f"box + 1 voxel {box / brain.size:.2f} of the grid; opening {args.radius_mm} mm; {args.rounds} rounds")
    base = medians["whole array (0.6.13)"]
    print("| detach_brain | median s | speed-up |")
    print("|---|---|---|")
    for label, seconds in medians.items():
        print(f"| {label} | {seconds:.3f} | {base / seconds:.2f}x |")
    print(f"masks equal: {equal}")
    if args.image is not None:
        runs, same = end_to_end(args.image, args.bundle, args.rounds, args.threads)
        base = runs["whole array (0.6.13)"]
        print(f"\nsegmentation bundle inference.json on {args.image} ({args.threads} threads), whole run:")
        print("| detach_brain | median s | speed-up |")
        print("|---|---|---|")
        for label, seconds in runs.items():
            print(f"| {label} | {seconds:.2f} | {base / seconds:.2f}x |")
        print(f"label maps byte-identical: {same}")
        equal = equal and same
    return 0 if equal else 1


if __name__ == "__main__":
    raise SystemExit(main())
