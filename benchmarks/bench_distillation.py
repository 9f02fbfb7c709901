"""Does knowledge distillation help a MobileMamba-T2 on the embedded default classification task?

The paper's "†" models gain 2-5 top-1 points on ImageNet from distillation. This benchmark checks
the claim on the embedded default data (``python -m medmamba.data make-default``): slice-level
lesion classification (``datalist_classification_slice.json``: "does this axial slice hold a
lesion?"), as 2.5D input (the slice and its ``--context`` neighbours as channels).

1. A larger teacher (default MobileMamba-B1; ``--teacher densenet121`` for MONAI's DenseNet121) is
   trained once (seed 0, ``--teacher-epochs``) with the recipe, or loaded from
   ``--teacher-checkpoint``.
2. For every seed (default 0, 1, 2), a MobileMamba-T2 student is trained for ``--epochs`` epochs
   twice, with the same recipe (AdamW with the recipe's no-decay groups, warm-up + cosine per
   iteration, gradient clipping 5, label smoothing, EMA, flips/intensity augmentation, optional
   mixup/cutmix): *baseline* (one head, cross-entropy) and *distilled* (two heads, ``CE + λ·KD``
   from the teacher on the same augmented batch).
3. The raw and the EMA weights are evaluated on the validation split (ROC AUC of the "lesion"
   probability, accuracy at the arg-max); the script reports mean ± std over seeds as a Markdown
   table and writes everything to ``--out`` (``results.json``, ``results.md``, checkpoints).

Everything runs through the MONAI components of :mod:`medmamba.training` (``SupervisedTrainer``
with :class:`~medmamba.training.DistillationIteration`, :class:`~medmamba.training.EMAHandler`,
:class:`~medmamba.training.WarmupCosineLR` via ``LrScheduleHandler``), as a bundle would.

Usage::

    python -m medmamba.data make-default
    python benchmarks/bench_distillation.py                 # about an hour on 2 CPU cores
    python benchmarks/bench_distillation.py --tau 2 --kd-weight 1 --kd hard --mixup
    python benchmarks/bench_distillation.py --quick         # smoke run: 1 epoch, 1 seed, few slices
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["BatchAugment", "SliceData", "load_slices", "roc_auc", "evaluate", "train_model", "main"]

logger = logging.getLogger("bench_distillation")

REPO = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------- data


@dataclasses.dataclass
class SliceData:
    """2.5D slices of one split held in memory.

    Attributes:
        images: ``(N, 2k+1, S, S)`` float16 (normalised per volume).
        labels: ``(N,)`` int64, 1 = lesion present.
        ids: ``"<subject>:<slice>"`` per sample.
    """

    images: torch.Tensor
    labels: torch.Tensor
    ids: list[str]

    def __len__(self) -> int:
        return len(self.ids)

    def as_dicts(self) -> list[dict[str, Any]]:
        """Samples as MONAI-style dicts (``image``, ``label``, ``id``)."""
        return [{"image": self.images[i], "label": self.labels[i], "id": self.ids[i]} for i in range(len(self))]


def _normalise_volume(volume: np.ndarray) -> np.ndarray:
    """Clip to the 0.5-99.5 percentiles of the head and z-score over it."""
    fg = volume[volume > 0.1 * np.percentile(volume, 99)]
    if fg.size == 0:
        return np.zeros_like(volume, dtype=np.float32)
    lo, hi = np.percentile(fg, [0.5, 99.5])
    v = np.clip(volume, lo, hi)
    fg = np.clip(fg, lo, hi)
    return ((v - fg.mean()) / max(float(fg.std()), 1e-6)).astype(np.float32)


def _to_square(slices: torch.Tensor, size: int) -> torch.Tensor:
    """Pad ``(C, H, W)`` to a square (centred), then resize to ``size × size`` (bilinear)."""
    c, h, w = slices.shape
    m = max(h, w)
    pad = ((m - w) // 2, m - w - (m - w) // 2, (m - h) // 2, m - h - (m - h) // 2)
    x = F.pad(slices[None], pad, value=float(slices.min()))
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)[0]


def load_slices(
    data_dir: str | os.PathLike, split: str, size: int = 128, context: int = 1, max_samples: int | None = None
) -> SliceData:
    """Read the slice-level classification datalist's ``split`` into memory.

    Args:
        data_dir: the default data set folder (``data/default``).
        split: ``"training"``, ``"validation"`` or ``"test"``.
        size: output slice size (square).
        context: neighbouring slices on each side (channels = ``2·context + 1``).
        max_samples: keep an evenly spaced subset of at most this many samples (smoke runs).
    """
    import nibabel as nib

    data_dir = Path(data_dir)
    datalist = data_dir / "datalist_classification_slice.json"
    if not datalist.is_file():
        raise FileNotFoundError(
            f"{datalist} not found: build the default data set with `python -m medmamba.data make-default`."
        )
    entries = json.loads(datalist.read_text())[split]
    if not entries:
        raise ValueError(f"split {split!r} of {datalist} is empty.")
    if max_samples is not None and len(entries) > max_samples:
        keep = np.linspace(0, len(entries) - 1, max_samples).round().astype(int)
        entries = [entries[i] for i in sorted(set(keep.tolist()))]
    volumes: dict[str, np.ndarray] = {}
    images, labels, ids = [], [], []
    for e in entries:
        path = str(data_dir / e["image"])
        if path not in volumes:
            volumes[path] = _normalise_volume(np.asarray(nib.load(path).get_fdata(dtype=np.float32)))
        vol = volumes[path]
        idx = np.clip(np.arange(e["slice"] - context, e["slice"] + context + 1), 0, vol.shape[-1] - 1)
        stack = torch.from_numpy(np.ascontiguousarray(np.moveaxis(vol[..., idx], -1, 0)))
        images.append(_to_square(stack, size).half())
        labels.append(int(e["label"]))
        ids.append(f"{e.get('id', Path(path).parent.name)}:{e['slice']}")
    return SliceData(torch.stack(images), torch.tensor(labels, dtype=torch.long), ids)


class BatchAugment:
    """Batch-level augmentation run inside the iteration (the teacher sees the same batch).

    Random left-right flip per sample, random intensity scale/shift per sample, then the optional
    :class:`~medmamba.training.MixupCutmix`.
    """

    def __init__(self, flip: bool = True, intensity: float = 0.1, mixup: Any = None, seed: int = 0) -> None:
        self.flip = flip
        self.intensity = float(intensity)
        self.mixup = mixup
        self.generator = torch.Generator().manual_seed(int(seed))

    def __call__(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        images = images.float()
        b = images.shape[0]
        if self.flip:
            mask = torch.rand(b, generator=self.generator) < 0.5
            images = torch.where(mask.view(b, 1, 1, 1).to(images.device), images.flip(-1), images)
        if self.intensity > 0:
            scale = 1 + self.intensity * (2 * torch.rand(b, 1, 1, 1, generator=self.generator) - 1)
            shift = self.intensity * (2 * torch.rand(b, 1, 1, 1, generator=self.generator) - 1)
            images = images * scale.to(images.device) + shift.to(images.device)
        if self.mixup is not None:
            return self.mixup(images, labels)
        return images, labels


# ----------------------------------------------------------------------------- metrics


def roc_auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """ROC AUC (Mann-Whitney, ties counted half); NaN when one class is absent."""
    from scipy.stats import rankdata

    labels = np.asarray(labels).astype(bool)
    n_pos, n_neg = int(labels.sum()), int((~labels).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = rankdata(scores)
    return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


@torch.no_grad()
def evaluate(model: nn.Module, data: SliceData, batch_size: int = 64) -> dict[str, float]:
    """AUC of P(lesion) and accuracy of ``model`` (eval mode) on ``data``."""
    model.eval()
    probs = []
    for i in range(0, len(data), batch_size):
        out = model(data.images[i : i + batch_size].float())
        if isinstance(out, (tuple, list)):
            out = (out[0] + out[1]) / 2
        probs.append(out.float().softmax(1))
    p = torch.cat(probs)
    y = data.labels
    return {"auc": roc_auc(p[:, 1].numpy(), y.numpy()), "accuracy": float((p.argmax(1) == y).float().mean())}


# ----------------------------------------------------------------------------- training


def build_network(name: str, in_channels: int, distillation: bool = False) -> nn.Module:
    """``t2``/``t4``/``s6``/``b1``... (MobileMamba variants) or ``densenet121`` (MONAI)."""
    if name == "densenet121":
        from monai.networks.nets import DenseNet121

        return DenseNet121(spatial_dims=2, in_channels=in_channels, out_channels=2)
    from medmamba.networks import MobileMamba

    return MobileMamba(name, in_channels=in_channels, num_classes=2, distillation=distillation)


def train_model(
    network: nn.Module,
    train: SliceData,
    args: argparse.Namespace,
    seed: int,
    teacher: nn.Module | None = None,
    epochs: int | None = None,
) -> tuple[nn.Module, nn.Module, float]:
    """Train ``network`` with the recipe; return ``(network, ema, seconds)``."""
    from ignite.engine import Events
    from monai.engines import SupervisedTrainer
    from monai.handlers import LrScheduleHandler
    from monai.utils import set_determinism

    from medmamba.training import (
        DistillationIteration,
        EMAHandler,
        MixupCutmix,
        ModelEMA,
        Teacher,
        WarmupCosineLR,
        create_optimizer,
    )

    epochs = int(epochs if epochs is not None else args.epochs)
    set_determinism(seed)
    generator = torch.Generator().manual_seed(seed)
    loader = torch.utils.data.DataLoader(
        train.as_dicts(), batch_size=args.batch_size, shuffle=True, drop_last=True, generator=generator
    )
    steps = epochs * len(loader)
    optimizer = create_optimizer(network, lr=args.lr, weight_decay=args.weight_decay)
    schedule = WarmupCosineLR(optimizer, warmup_steps=min(len(loader) * args.warmup_epochs, steps - 1), total_steps=steps)
    ema = ModelEMA(network, decay=args.ema_decay)
    mixup = None
    if args.mixup:
        mixup = MixupCutmix(num_classes=2, label_smoothing=args.label_smoothing, seed=seed)
    iteration = DistillationIteration(
        teacher=Teacher(teacher) if teacher is not None else None,
        kind=args.kd,
        tau=args.tau,
        weight=args.kd_weight,
        mixup=BatchAugment(flip=not args.no_augment, intensity=0.0 if args.no_augment else 0.1, mixup=mixup, seed=seed),
        grad_clip_norm=args.clip,
        amp=args.amp,
    )
    trainer = SupervisedTrainer(
        device=torch.device("cpu"),
        max_epochs=epochs,
        train_data_loader=loader,
        network=network,
        optimizer=optimizer,
        loss_function=nn.CrossEntropyLoss(label_smoothing=0.0 if args.mixup else args.label_smoothing),
        iteration_update=iteration,
        decollate=False,
        train_handlers=[LrScheduleHandler(schedule, epoch_level=False, print_lr=False), EMAHandler(ema=ema)],
    )
    totals: dict[str, float] = {"loss": 0.0, "kd": 0.0, "n": 0}

    @trainer.on(Events.ITERATION_COMPLETED)
    def _accumulate(engine):
        totals["loss"] += engine.state.output["loss"].item()
        totals["kd"] += engine.state.output["loss_kd"].item()
        totals["n"] += 1

    @trainer.on(Events.EPOCH_COMPLETED)
    def _log(engine):
        n = max(totals["n"], 1)
        logger.info(
            "  epoch %d/%d  loss %.4f  kd %.4f  lr %.2e",
            engine.state.epoch, epochs, totals["loss"] / n, totals["kd"] / n, optimizer.param_groups[0]["lr"],
        )
        totals.update(loss=0.0, kd=0.0, n=0)

    start = time.time()
    trainer.run()
    return network, ema, time.time() - start


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    v = np.asarray(values, dtype=float)
    return float(np.nanmean(v)), float(np.nanstd(v, ddof=1)) if len(v) > 1 else 0.0


def summarise(runs: list[dict[str, Any]], teacher_metrics: dict[str, float], args: argparse.Namespace) -> str:
    """Markdown table: mean ± std over seeds per condition and weights (raw / EMA)."""
    lines = [
        f"Validation, slice-level lesion classification, {len(args.seeds)} seeds "
        f"({', '.join(map(str, args.seeds))}), {args.epochs} epochs, input {args.context * 2 + 1}×{args.size}², "
        f"KD {args.kd} τ={args.tau} λ={args.kd_weight}, teacher {args.teacher} "
        f"(AUC {teacher_metrics['auc']:.3f}, accuracy {teacher_metrics['accuracy']:.3f}).",
        "",
        "| student (T2) | weights | AUC | accuracy | train time / run |",
        "|---|---|---|---|---|",
    ]
    for condition in ("baseline", "distilled"):
        rows = [r for r in runs if r["condition"] == condition]
        if not rows:
            continue
        t = np.mean([r["seconds"] for r in rows])
        for weights in ("raw", "ema"):
            auc = _mean_std([r[weights]["auc"] for r in rows])
            acc = _mean_std([r[weights]["accuracy"] for r in rows])
            lines.append(
                f"| {condition} | {weights} | {auc[0]:.3f} ± {auc[1]:.3f} | {acc[0]:.3f} ± {acc[1]:.3f} | {t:.0f} s |"
            )
    return "\n".join(lines)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", default=str(REPO / "data" / "default"))
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "distillation"))
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--epochs", type=int, default=15, help="student epochs (both conditions)")
    p.add_argument("--teacher", default="b1", help="MobileMamba variant (t4, s6, b1...) or densenet121")
    p.add_argument("--teacher-epochs", type=int, default=None, help="default: 2 × --epochs")
    p.add_argument("--teacher-checkpoint", default=None, help="reuse a trained teacher (state dict)")
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--context", type=int, default=1, help="neighbouring slices per side (2.5D)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-3, help="peak lr at --batch-size (paper: 1.5e-3 at 1024)")
    p.add_argument("--weight-decay", type=float, default=0.05)
    p.add_argument("--warmup-epochs", type=int, default=1)
    p.add_argument("--clip", type=float, default=5.0)
    p.add_argument("--label-smoothing", type=float, default=0.1)
    p.add_argument("--ema-decay", type=float, default=0.9998)
    p.add_argument("--kd", choices=("soft", "hard"), default="soft")
    p.add_argument("--tau", type=float, default=1.0)
    p.add_argument("--kd-weight", type=float, default=5.0)
    p.add_argument("--mixup", action="store_true", help="mixup 0.8 / cutmix 1.0 (the paper's)")
    p.add_argument("--no-augment", action="store_true", help="no flips / intensity augmentation")
    p.add_argument("--amp", action="store_true", help="bf16 autocast")
    p.add_argument("--max-train", type=int, default=None, help="subsample the training slices")
    p.add_argument("--max-val", type=int, default=None, help="subsample the validation slices")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    p.add_argument("--quick", action="store_true", help="smoke run: 1 epoch, seed 0, 64 slices at 64²")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark; returns the exit status."""
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    if args.quick:
        args.epochs, args.seeds, args.size = 1, [0], 64
        args.max_train, args.max_val = args.max_train or 64, args.max_val or 64
        args.teacher_epochs = args.teacher_epochs or 1
        args.batch_size = min(args.batch_size, 16)
    if args.teacher_epochs is None:
        args.teacher_epochs = 2 * args.epochs
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    in_channels = 2 * args.context + 1

    t0 = time.time()
    train = load_slices(args.data_dir, "training", args.size, args.context, args.max_train)
    val = load_slices(args.data_dir, "validation", args.size, args.context, args.max_val)
    logger.info(
        "data: %d training slices (%d with lesion), %d validation slices (%d with lesion), %.0f s",
        len(train), int(train.labels.sum()), len(val), int(val.labels.sum()), time.time() - t0,
    )

    torch.manual_seed(0)
    teacher = build_network(args.teacher, in_channels)
    if args.teacher_checkpoint:
        from medmamba.training import load_weights

        load_weights(teacher, args.teacher_checkpoint)
        logger.info("teacher %s loaded from %s", args.teacher, args.teacher_checkpoint)
    else:
        logger.info("training teacher %s for %d epochs", args.teacher, args.teacher_epochs)
        teacher, teacher_ema, seconds = train_model(teacher, train, args, seed=0, epochs=args.teacher_epochs)
        # the better of raw and EMA weights on validation teaches (the EMA usually)
        if evaluate(teacher_ema.module, val)["auc"] >= evaluate(teacher, val)["auc"]:
            teacher = teacher_ema.module
        torch.save(teacher.state_dict(), out / f"teacher_{args.teacher}.pt")
        logger.info("teacher trained in %.0f s", seconds)
    teacher_metrics = evaluate(teacher, val)
    logger.info("teacher: AUC %.3f accuracy %.3f", teacher_metrics["auc"], teacher_metrics["accuracy"])

    runs: list[dict[str, Any]] = []
    for seed in args.seeds:
        for condition in ("baseline", "distilled"):
            logger.info("seed %d, %s student", seed, condition)
            torch.manual_seed(seed)
            student = build_network("t2", in_channels, distillation=condition == "distilled")
            student, ema, seconds = train_model(
                student, train, args, seed=seed, teacher=teacher if condition == "distilled" else None
            )
            run = {
                "seed": seed,
                "condition": condition,
                "seconds": seconds,
                "raw": evaluate(student, val),
                "ema": evaluate(ema.module, val),
            }
            logger.info("  raw %s  ema %s  (%.0f s)", run["raw"], run["ema"], seconds)
            runs.append(run)

    table = summarise(runs, teacher_metrics, args)
    (out / "results.md").write_text(table + "\n")
    (out / "results.json").write_text(
        json.dumps({"args": vars(args), "teacher": teacher_metrics, "runs": runs}, indent=1, default=str)
    )
    logger.info("\n%s\nwritten to %s (total %.0f s)", table, out, time.time() - t0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
