"""Does a trained lesion classifier see lesions, or anatomy? A synthetic-lesion probe.

A slice AUC on a few validation subjects can be high for the wrong reason: on the embedded data the
lesions sit in white matter, so slices with much white matter are more often positive, and a
network that scores "how much white matter" gets a fair AUC without looking at any lesion. This
probe asks the question directly, on anatomy the network was not trained on:

1. for every subject of ``--split`` (default: validation, never test), ``--slices`` axial slices
   with at least 300 white-matter voxels and no real lesion within one slice are picked, evenly;
2. each 2.5D stack is scored as it is and with one synthetic lesion inserted by the bundle's own
   :class:`~medmamba.transforms.RandStackLesionInsertd` (fixed seed; once hypointense,
   once hyperintense);
3. it reports, per lesion kind, the ROC AUC of "with lesion" against "without" over all stacks and
   the *paired win rate* (how often the same stack scores higher with the lesion than without);
   a classifier that sees lesions has both near 1, one that sees anatomy has an AUC near 0.5;
4. and, for reference, the real subjects' volume scores (the bundle's ``aggregation`` of the slice
   log-odds, by default the mean of the two highest) and their volume AUC.

Usage::

    python benchmarks/lesion_probe.py --ckpt bundles/mobilemamba_classification/models/model_ema.pt
    python benchmarks/lesion_probe.py --ckpt .../teacher.pt --variant s6 --json probe.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
BUNDLE = REPO / "bundles" / "mobilemamba_classification"


def _log_odds(net: torch.nn.Module, stacks: torch.Tensor, batch: int = 32) -> torch.Tensor:
    """Lesion log-odds of ``(N, 2k + 1, H, W)`` stacks, ``batch`` at a time."""
    from medmamba.inferers import lesion_log_odds

    with torch.no_grad():
        out = torch.cat([net(stacks[i : i + batch]) for i in range(0, len(stacks), batch)])
    return lesion_log_odds(out)


def _auc(labels: list[int], scores: list[float]) -> float | None:
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(labels, scores)) if 0 < sum(labels) < len(labels) else None


def is_lesion_map(state: dict[str, torch.Tensor]) -> bool:
    """Whether a state dict is the lesion-map classifier's (``train.json``) rather than a slice-label
    MobileMamba's (``train_slice_labels.json``)."""
    return "network.head.weight" in state


def load_classifier(state: dict[str, torch.Tensor], variant: str, in_channels: int) -> torch.nn.Module:
    """The classifier of a bundle checkpoint's state dict (``extract_state_dict``): the lesion-map
    classifier (``LesionMapClassifier`` around ``MobileMambaSeg``, ``train.json``) or a slice-label
    MobileMamba (``train_slice_labels.json``, with or without the distillation head)."""
    from medmamba.networks import LesionMapClassifier, MobileMamba, MobileMambaSeg

    if is_lesion_map(state):
        seg = MobileMambaSeg(variant, in_channels=in_channels, out_channels=int(state["network.head.weight"].shape[0]))
        net = LesionMapClassifier(seg)
        net.load_state_dict(state)
        return net.eval()
    distillation = any(k.startswith("head_dist.") for k in state)
    net = MobileMamba(variant, spatial_dims=2, in_channels=in_channels, num_classes=2, distillation=distillation)
    net.load_state_dict(state)
    return net.eval()


def probe(
    ckpt: str,
    variant: str = "t2",
    split: str = "validation",
    n_slices: int = 16,
    seed: int = 1234,
    bundle: Path = BUNDLE,
) -> dict[str, Any]:
    """Run the probe; returns the figures as a dict (see the module docstring)."""
    import monai
    from monai.bundle import ConfigParser

    from medmamba.inferers import volume_log_odds
    from medmamba.training.checkpoint import extract_state_dict
    from medmamba.transforms import RandStackLesionInsertd, stack_slices

    if split == "test":
        raise ValueError("split='test': the probe is a diagnostic for model development; run it on training or validation.")
    state = extract_state_dict(ckpt)
    # the recipe the checkpoint was trained with: its preprocessing and its lesion insertion
    parser = ConfigParser()
    recipe = ("train.json",) if is_lesion_map(state) else ("train.json", "train_slice_labels.json")  # an overlay
    parser.read_config([str(bundle / "configs" / name) for name in recipe])
    parser["bundle_root"] = str(bundle)
    parser.parse()
    context = int(parser.get_parsed_content("context"))
    aggregation, top_k = parser.get_parsed_content("aggregation"), parser.get_parsed_content("top_k")
    # the training volume steps (they keep the tissue labels) + the normalisation, without the random bias field
    steps = list(parser.get_parsed_content("train#volume_transforms"))
    steps += [t for t in parser.get_parsed_content("train#random_transforms") if type(t).__name__ == "MRNormalized"]
    preprocess = monai.transforms.Compose(steps)
    dataset_dir = parser.get_parsed_content("dataset_dir")
    items = monai.data.load_decathlon_datalist(parser.get_parsed_content("datalist"), True, split, base_dir=dataset_dir)
    net = load_classifier(state, variant, 2 * context + 1)
    image_key, mask_key, tissue_key = (parser.get_parsed_content(k) for k in ("image_key", "mask_key", "tissue_key"))
    clip = bool(parser.get_parsed_content("lesion_insertion#clip", default=True))
    pairs: dict[str, tuple[list[float], list[float]]] = {"hypointense": ([], []), "hyperintense": ([], [])}
    real = []
    for item in items:
        d = preprocess(dict(item))
        x = torch.as_tensor(d[image_key])[0]
        lesion = torch.as_tensor(d[mask_key])[0] > 0
        tissue = torch.as_tensor(d[tissue_key])[0]
        depth = x.shape[-1]
        stacks = stack_slices(x[None, None], range(depth), spatial_axis=2, context=context)[0]  # (S, 2k+1, H, W)
        z = _log_odds(net, stacks)
        score = float(volume_log_odds(z, aggregation, top_k))
        real.append({"id": item.get("id", ""), "label": int(lesion.any()), "volume_log_odds": score})
        wm = (tissue == 3).sum((0, 1))
        near = torch.nn.functional.max_pool1d(lesion.sum((0, 1)).float()[None, None], 2 * context + 1, 1, context)[0, 0]
        candidates = [s for s in range(context, depth - context) if wm[s] >= 300 and near[s] == 0]
        if not candidates:
            continue
        chosen = [candidates[i] for i in np.linspace(0, len(candidates) - 1, min(n_slices, len(candidates))).astype(int)]
        base = stacks[chosen]
        plain = _log_odds(net, base)
        for kind, dark_prob in (("hypointense", 1.0), ("hyperintense", 0.0)):
            insert = RandStackLesionInsertd(
                image_key, mask_key=mask_key, tissue_key=tissue_key, prob=1.0, dark_prob=dark_prob, clip=clip
            )
            insert.set_random_state(seed)
            with_lesion = torch.stack(
                [
                    torch.as_tensor(
                        insert({image_key: base[i], mask_key: torch.zeros(1, *x.shape[:2]), tissue_key: tissue[None, ..., s]})[
                            image_key
                        ]
                    )
                    for i, s in enumerate(chosen)
                ]
            )
            pairs[kind][0].extend(plain.tolist())
            pairs[kind][1].extend(_log_odds(net, with_lesion.float()).tolist())
    result: dict[str, Any] = {"checkpoint": str(ckpt), "variant": variant, "split": split, "stacks_per_kind": len(pairs["hypointense"][0])}
    for kind, (without, with_) in pairs.items():
        result[f"{kind}_auc"] = _auc([0] * len(without) + [1] * len(with_), without + with_)
        result[f"{kind}_paired_win_rate"] = float(np.mean(np.asarray(with_) > np.asarray(without))) if without else None
    result["real_volume_auc"] = _auc([r["label"] for r in real], [r["volume_log_odds"] for r in real])
    result["real_volumes"] = real
    return result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--ckpt", required=True, help="classifier checkpoint (a bundle's models/*.pt)")
    ap.add_argument("--variant", default="t2", help="MobileMamba variant of the checkpoint")
    ap.add_argument("--split", default="validation", choices=["training", "validation"])
    ap.add_argument("--slices", type=int, default=16, help="stacks per subject")
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", default=None, help="also write the result here")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    r = probe(args.ckpt, args.variant, args.split, args.slices, args.seed)
    print("| checkpoint | split | stacks | hypointense AUC / paired win | hyperintense AUC / paired win | real volume AUC |")
    print("|---|---|---|---|---|---|")
    fmt = lambda v: "n/a" if v is None else f"{v:.3f}"
    print(
        f"| {os.path.basename(args.ckpt)} | {args.split} | {r['stacks_per_kind']} | {fmt(r['hypointense_auc'])} / "
        f"{fmt(r['hypointense_paired_win_rate'])} | {fmt(r['hyperintense_auc'])} / {fmt(r['hyperintense_paired_win_rate'])} | "
        f"{fmt(r['real_volume_auc'])} |"
    )
    if args.json:
        Path(args.json).write_text(json.dumps(r, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
