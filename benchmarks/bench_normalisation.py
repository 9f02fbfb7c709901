"""MR normalisation: ``torch.quantile`` (full sort) vs selection (:func:`medmamba.transforms.quantiles`).

``MRNormalize`` needs three order statistics of a volume (the 99th percentile for the foreground
threshold, then the clipping percentiles of the foreground). ``torch.quantile`` sorts the whole
tensor for each; :func:`medmamba.transforms.quantiles` finds the same values by selection
(``numpy.percentile``, introselect). In the classification bundle's training the transform runs on
two volumes per iteration, in the training process, so its cost adds to every step.

The script times, on the embedded data's volumes (cropped as the bundles crop them), side by side in
one run: the quantiles of ``MRNormalize``'s defaults computed both ways, and checks they are equal.

Usage::

    python -m medmamba.data make-default
    python benchmarks/bench_normalisation.py [--dataset-dir data/default] [--subjects 4]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine_line, time_call  # noqa: E402

from medmamba.transforms import ForegroundSelector, LoadScan, foreground_mask, quantiles  # noqa: E402


def _torch_quantiles(x: torch.Tensor, fraction: float = 0.1) -> list[float]:
    """The baseline: what ``MRNormalize`` computed with ``torch.quantile`` (one full sort each)."""
    threshold = float(torch.quantile(x.flatten(), 0.99)) * fraction
    fg = x[x > threshold]
    return [threshold / fraction, float(torch.quantile(fg, 0.005)), float(torch.quantile(fg, 0.995))]


def _selection_quantiles(x: torch.Tensor, fraction: float = 0.1) -> list[float]:
    p99 = quantiles(x, [0.99])[0]
    fg = x[foreground_mask(x, fraction)]
    return [p99, *quantiles(fg, [0.005, 0.995])]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset-dir", default="data/default")
    parser.add_argument("--subjects", type=int, default=4)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (the training uses 1-2)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    images = sorted(Path(args.dataset_dir, "subjects").glob("sub-*/image.nii.gz"))[: args.subjects]
    if not images:
        raise SystemExit(f"no subjects under {args.dataset_dir}/subjects; run `python -m medmamba.data make-default`")
    load, crop = LoadScan(), ForegroundSelector(fraction=0.1)
    print(machine_line())
    print("| volume | voxels | torch.quantile (ms) | selection (ms) | speed-up | same values |")
    print("|---|---|---|---|---|---|")
    for path in images:
        vol = torch.as_tensor(load(str(path)), dtype=torch.float32)[0]
        idx = torch.nonzero(crop(vol))
        lo, hi = idx.min(0).values, idx.max(0).values + 1
        x = vol[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]].contiguous()  # as CropForegroundd leaves it
        base, ours = _torch_quantiles(x), _selection_quantiles(x)
        same = all(abs(a - b) <= 1e-5 * max(1.0, abs(a)) for a, b in zip(base, ours))
        t_base = time_call(lambda: _torch_quantiles(x), repeats=7)
        t_ours = time_call(lambda: _selection_quantiles(x), repeats=7)
        name = path.parent.name
        print(f"| {name} | {x.numel()} | {t_base * 1e3:.1f} | {t_ours * 1e3:.1f} | {t_base / t_ours:.1f}x | {same} |")


if __name__ == "__main__":
    main()
