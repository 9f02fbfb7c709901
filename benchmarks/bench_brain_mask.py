"""What the brain mask's opening costs: :func:`medmamba.transforms.detach_brain` on the mask's bounding
box (since segmentation 0.6.14) against the whole array (up to 0.6.13), in one run.

The segmentation bundle detaches face and neck from the network's brain (a 6 mm opening: two
Euclidean distance transforms) on the input's own grid, twice per case since 0.6.13 (before its
brain gaps are closed, and in the clean-up of the final label map), and once more per pass on its
2 mm network grid; the classification bundle once per volume. On a whole head the brain's bounding
box is a fraction of the grid (face, neck and air around it), and the distance transforms need no
more than that box grown by one voxel: the result is the same array (``tests/test_brain_detach.py``).

Input: a label map or class probabilities (``--labels``: a NIfTI such as a segmentation bundle's
``<case>_seg.nii.gz`` or ``<case>_prob.nii.gz``; brain = labels 1-3, or the arg-max of the
probabilities); by default the tissue labels of the default data's first validation subject (2 mm, a
generated head's grid; ``--zoom 2`` gives it on a 1 mm grid by nearest neighbour). Prints the median
seconds of both settings side by side, their ratio, whether the masks are equal, and the CPU.

Usage::

    python benchmarks/bench_brain_mask.py [--labels case_seg.nii.gz] [--zoom 1] [--rounds 5] [--radius-mm 6]
"""

from __future__ import annotations

import argparse
import json
import sys
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--labels", type=Path, default=None, help="label map or probabilities (NIfTI)")
    parser.add_argument("--zoom", type=int, default=1, help="make the grid this many times finer (nearest neighbour)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--radius-mm", type=float, default=6.0, help="the opening's radius (the bundles' 6 mm)")
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.zoom < 1:
        parser.error(f"--rounds and --zoom must be at least 1, got {args.rounds} and {args.zoom}")
    from medmamba.transforms import detach_brain

    path = args.labels or default_labels()
    brain, spacing = load_brain(path, args.zoom)
    if not brain.any():
        parser.error(f"--labels {path}: no voxel labelled 1-3 (brain)")
    nonzero = [np.flatnonzero(brain.any(axis=tuple(a for a in range(3) if a != axis))) for axis in range(3)]
    box = int(np.prod([int(n[-1]) - int(n[0]) + 3 for n in nonzero]))
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
    return 0 if equal else 1


if __name__ == "__main__":
    raise SystemExit(main())
