"""The bundles' training data pipelines as they are and as they were (MONAI's ``RandFlipd``, scipy's dilation), side by side.

Each bundle's ``train.json`` data set (the default data's training split, the deterministic volume
transforms cached) is read batch by batch twice per round from the same seed: once as the code and
config are (:class:`medmamba.transforms.RandStackFlipd` on plain tensors; the white-matter rim of the
lesion insertion, :func:`medmamba.data.synthetic.white_matter_rim`, by shifted ORs) and once as they
were (MONAI's ``RandFlipd`` in its place, whose flips turned every slice stack into a ``MetaTensor``;
``scipy.ndimage.binary_dilation`` for the rim). The script checks that both give the same batches,
value for value, and prints the
seconds per batch of each, the order alternated from round to round (medians; each round's figures follow the table row), with one training step's network time
(forward, backward, optimizer; the config's network and loss, random input of the batch's shape) for
scale.

Usage::

    python benchmarks/bench_training_data.py --dataset-dir data/default [--batches 16] [--rounds 4]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine_line  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def _parser(bundle: str, dataset_dir: Path) -> Any:
    from monai.bundle import ConfigParser

    root = REPO / "bundles" / f"mobilemamba_{bundle}"
    parser = ConfigParser()
    parser.read_config(str(root / "configs" / "train.json"))
    parser["bundle_root"] = str(root)
    parser["dataset_dir"] = str(dataset_dir)
    parser["real_heads_datalist"] = None
    parser["num_threads"] = 1
    return parser


def _with_monai_flips(transforms: list) -> list:
    """``transforms`` with every :class:`RandStackFlipd` replaced by MONAI's ``RandFlipd`` (same arguments)."""
    from monai.transforms import RandFlipd

    from medmamba.transforms import RandStackFlipd

    return [RandFlipd(t.keys, prob=t.prob, spatial_axis=t.flipper.spatial_axis) if isinstance(t, RandStackFlipd) else t for t in transforms]


def _batches(dataset: Any, parser: Any, count: int, before: bool = False) -> tuple[list[dict], float]:
    """The first ``count`` batches of a fixed seed and the seconds per batch (``before``: with scipy's dilation)."""
    from monai.data import DataLoader
    from scipy import ndimage

    from medmamba.data import synthetic

    fast = synthetic._dilate_by_one_voxel
    if before:
        synthetic._dilate_by_one_voxel = lambda mask: ndimage.binary_dilation(mask, iterations=1)

    dataset.transform.set_random_state(seed=0)
    loader_args = parser["train#dataloader"]
    collate = {"collate_fn": parser.get_parsed_content("train#dataloader#collate_fn")} if "collate_fn" in loader_args else {}
    loader = DataLoader(dataset, batch_size=parser["volumes_per_batch"], shuffle=True, drop_last=True, num_workers=0,
                        generator=torch.Generator().manual_seed(0), **collate)
    out: list[dict] = []
    try:
        start = time.perf_counter()
        for batch in loader:
            out.append(batch)
            if len(out) == count:
                break
        return out, (time.perf_counter() - start) / len(out)
    finally:
        synthetic._dilate_by_one_voxel = fast


def _step_seconds(parser: Any, batch: dict, repeats: int = 3) -> float:
    """Median seconds of one training step of the config's network on a random input of the batch's shape."""
    network = parser.get_parsed_content("train#trainer#network")
    loss = parser.get_parsed_content("loss")
    optimizer = parser.get_parsed_content("optimizer")
    x = torch.randn(batch["image"].shape).contiguous(memory_format=torch.channels_last)
    network.train()
    with torch.no_grad():
        classes = network(x[:1]).shape[1]
    y = torch.randint(0, classes, batch["label"].shape).float()
    times = []
    for _ in range(repeats + 1):
        start = time.perf_counter()
        optimizer.zero_grad()
        loss(network(x), y).backward()
        optimizer.step()
        times.append(time.perf_counter() - start)
    return statistics.median(times[1:])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset-dir", type=Path, default=REPO / "data" / "default")
    parser.add_argument("--bundles", nargs="*", default=["classification", "segmentation"])
    parser.add_argument("--batches", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)

    from monai.data import CacheDataset
    from monai.transforms import Compose

    from medmamba.resources import configure_threads

    configure_threads(args.threads)
    print(machine_line())
    print(f"{args.batches} batches per reading, {args.rounds} rounds alternated, {args.threads} thread(s)\n")
    print("| bundle | batch | data before: RandFlipd, scipy dilation (s/batch) | data now (s/batch) | ratio | network step (s) | same batches |")
    print("|---|---|---|---|---|---|---|")
    for bundle in args.bundles:
        config = _parser(bundle, args.dataset_dir)
        now = config.get_parsed_content("train#dataset")
        before = CacheDataset(
            now.data, Compose(config.get_parsed_content("train#volume_transforms") + _with_monai_flips(
                _parser(bundle, args.dataset_dir).get_parsed_content("train#random_transforms"))),
            cache_rate=1.0, copy_cache=False, num_workers=2, progress=False,
        )
        times: dict[str, list[float]] = {"before": [], "now": []}
        same = True
        for r in range(args.rounds):  # the order alternates from round to round
            if r % 2 == 0:
                a, ta = _batches(before, config, args.batches, before=True)
                b, tb = _batches(now, config, args.batches)
            else:
                b, tb = _batches(now, config, args.batches)
                a, ta = _batches(before, config, args.batches, before=True)
            times["before"].append(ta)
            times["now"].append(tb)
            same &= all(torch.equal(torch.as_tensor(x[k]), y[k]) for x, y in zip(a, b) for k in ("image", "label"))
        before_s, now_s = statistics.median(times["before"]), statistics.median(times["now"])
        step = _step_seconds(config, b[0])
        shape = "×".join(str(n) for n in b[0]["image"].shape)
        print(f"| {bundle} | {shape} | {before_s:.3f} | {now_s:.3f} | {now_s / before_s:.2f} | {step:.3f} | {'yes' if same else 'NO'} |")
        print(f"<!-- rounds, s/batch: before {[round(t, 3) for t in times['before']]}, now {[round(t, 3) for t in times['now']]} -->")
        if not same:
            return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
