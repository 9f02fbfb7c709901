"""Small helpers shared by the notebooks in this folder: where the data and the figures are, and
which test case to look at. Not part of the medmamba package.

Environment variables:

* ``MEDMAMBA_DATA_DIR`` - the default data set (``data/default`` of the repository by default;
  build it with ``python -m medmamba.data make-default``).
* ``MEDMAMBA_NOTEBOOK_OUT`` - where the figures are saved as PNG (``notebooks/outputs`` by default).
* ``MEDMAMBA_BUNDLES_DIR`` - the MONAI bundles (``bundles`` of the repository by default).
* ``MEDMAMBA_NOTEBOOK_QUICK=1`` - small sizes and few iterations (the test suite sets it).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "ROOT",
    "Bundle",
    "Notebook",
    "brain_slices",
    "bundle_part",
    "bundle_preprocessing",
    "load_bundle",
    "load_case",
    "pick_test_case",
    "strip_outputs",
    "train_fallback",
    "try_load_bundle",
]


def _find_root() -> Path:
    here = Path(__file__).resolve().parent
    for p in (here, *here.parents):
        if (p / "pyproject.toml").is_file() and (p / "medmamba").is_dir():
            return p
    return here.parent


#: The repository root.
ROOT = _find_root()


class Notebook:
    """Paths of one notebook: ``data`` (the default data set), ``out`` (PNG folder), ``bundles``;
    :meth:`save` writes a figure as ``<prefix>_<name>.png`` and returns it (shown inline when it is
    the cell's last expression)."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.quick = os.environ.get("MEDMAMBA_NOTEBOOK_QUICK", "0") == "1"
        self.data = Path(os.environ.get("MEDMAMBA_DATA_DIR", ROOT / "data" / "default")).resolve()
        self.out = Path(os.environ.get("MEDMAMBA_NOTEBOOK_OUT", ROOT / "notebooks" / "outputs")).resolve()
        self.bundles = Path(os.environ.get("MEDMAMBA_BUNDLES_DIR", ROOT / "bundles")).resolve()
        if not (self.data / "datalist_segmentation.json").is_file():
            raise FileNotFoundError(
                f"no default data set in {self.data}: build it with `python -m medmamba.data make-default` "
                "(or point MEDMAMBA_DATA_DIR to one)"
            )
        self.out.mkdir(parents=True, exist_ok=True)
        self.saved: list[Path] = []

    def datalist(self, kind: str = "segmentation") -> dict[str, Any]:
        """A datalist of the default data set with absolute paths (``segmentation``,
        ``classification_volume`` or ``classification_slice``)."""
        data = json.loads((self.data / f"datalist_{kind}.json").read_text())
        for split in ("training", "validation", "test"):
            for item in data.get(split, []):
                for key in ("image", "label", "lesion", "dicom"):
                    if isinstance(item.get(key), str):
                        item[key] = str(self.data / item[key])
        return data

    def save(self, fig: Any, name: str, dpi: int = 100) -> Any:
        """Save ``fig`` as ``<out>/<prefix>_<name>.png`` and return it."""
        path = self.out / f"{self.prefix}_{name}.png"
        fig.savefig(path, dpi=dpi, bbox_inches="tight", facecolor="white")
        self.saved.append(path)
        return fig


def pick_test_case(nb: Notebook) -> dict[str, Any]:
    """The first test subject that has a DICOM series and a lesion (else the first with DICOM, else
    the first test subject), from the segmentation datalist."""
    test = nb.datalist("segmentation")["test"]
    if not test:
        raise ValueError(f"the data set in {nb.data} has no test subjects")
    labels = {d["id"]: d["label"] for d in nb.datalist("classification_volume")["test"]}
    for cond in (lambda d: "dicom" in d and labels.get(d["id"]) == 1, lambda d: "dicom" in d, lambda d: True):
        for item in test:
            if cond(item):
                return {**item, "has_lesion": labels.get(item["id"]) == 1}
    raise AssertionError("unreachable")


def brain_slices(
    nb: Notebook, n: int, size: int, *, split: str = "test", context: int = 0, seed: int = 0, min_brain: float = 0.3
) -> Any:
    """``n`` random axial slices with brain from the ``split`` subjects, as a float tensor
    ``(n, 2*context+1, size, size)``: each volume standardised (mean 0, std 1 inside the brain),
    each slice (with ``context`` neighbours on each side as channels) padded to a square and resized.

    Slices whose brain area is below ``min_brain`` of the subject's largest are not used.
    """
    import numpy as np
    import torch
    import torch.nn.functional as F

    from medmamba.data import load_scan

    items = nb.datalist("segmentation")[split] or nb.datalist("segmentation")["training"]
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(items))
    per_subject = -(-n // len(items))
    out = []
    for i in order:
        vol = load_scan(items[i]["image"])[0].numpy()
        brain = load_scan(items[i]["label"])[0].numpy() > 0
        vol = (vol - vol[brain].mean()) / (vol[brain].std() + 1e-6)
        area = brain.sum(axis=(0, 1))
        zs = np.nonzero(area >= min_brain * area.max())[0]
        for z in rng.choice(zs, size=min(per_subject, len(zs)), replace=False):
            idx = np.clip(np.arange(z - context, z + context + 1), 0, vol.shape[2] - 1)
            sl = torch.from_numpy(np.ascontiguousarray(np.moveaxis(vol[:, :, idx], -1, 0))).float()
            h, w = sl.shape[1:]
            m = max(h, w)
            sl = F.pad(
                sl, ((m - w) // 2, m - w - (m - w) // 2, (m - h) // 2, m - h - (m - h) // 2), value=float(sl.min())
            )
            out.append(F.interpolate(sl[None], size=(size, size), mode="bilinear", align_corners=False)[0])
            if len(out) == n:
                return torch.stack(out)
    return torch.stack(out)


@dataclass
class Bundle:
    """A trained MONAI bundle: its folder, the network with the trained weights (eval mode), the
    parsed inference configuration and the weights file."""

    root: Path
    network: Any
    config: Any
    weights: Path


def load_bundle(nb: Notebook, name: str) -> Bundle | None:
    """The trained network of ``bundles/<name>``, or ``None`` when its weights are missing.

    The weights are the ones the bundle deploys: the ``ckpt_file`` (or ``ckpt_path``) of its
    inference config (the classification bundle's ``models/model_ema.pt``, the segmentation bundle's
    ``models/model.pt``).

    The configuration is the bundle's ``train`` config with its ``inference`` config on top (as
    ``monai.bundle run --config_file "['train.json', 'inference.json']"`` merges them), so that both
    the inference network and the validation preprocessing/inferer are available. The network is
    the bundle's own ``network_def`` with the saved weights (a state dict, possibly inside a
    checkpoint dict), in eval mode on the CPU.
    """
    from monai.bundle import ConfigParser

    from medmamba.training.checkpoint import extract_state_dict

    root = nb.bundles / name
    files = []
    for stem in ("train", "inference"):
        found = [root / "configs" / f"{stem}.{ext}" for ext in ("json", "yaml", "yml")]
        files += [str(f) for f in found if f.is_file()][:1]
    if not files:
        if (root / "models" / "model.pt").is_file():
            raise FileNotFoundError(f"{root} has weights but no configs/train|inference.json")
        return None
    parser = ConfigParser()
    parser.read_config(files)
    parser["bundle_root"] = str(root)
    # the weights the bundle deploys: its inference config's checkpoint (ckpt_file / ckpt_path)
    key = next((k for k in ("ckpt_file", "ckpt_path") if k in parser), None)
    weights = Path(parser.get_parsed_content(key)) if key else root / "models" / "model.pt"
    if not weights.is_file():
        return None
    if "device" in parser:
        parser["device"] = "$torch.device('cpu')"
    network = parser.get_parsed_content("network_def", instantiate=True)
    network.load_state_dict(extract_state_dict(weights))
    return Bundle(root, network.eval(), parser, weights)


# ------------------------------------------------------------------------------------------------
# Fallback when no trained bundle exists: a tiny MobileMamba trained for a few steps, here and now.

#: Encoder of the tiny fallback networks (about 0.2 M parameters; the bundles use MobileMamba-T2).
TINY_ENCODER: dict[str, Any] = {
    "embed_dim": (32, 48, 64),
    "depth": (1, 1, 1),
    "global_ratio": (0.8, 0.7, 0.6),
    "local_ratio": (0.2, 0.2, 0.3),
    "kernels": (7, 5, 3),
    "ssm_ratio": 2.0,
    "drop_path": 0.0,
}
#: Neighbouring slices on each side fed as channels to the fallback networks (2.5D).
FALLBACK_CONTEXT = 1


_CASES: dict[str, dict[str, Any]] = {}


def load_case(item: dict[str, Any]) -> dict[str, Any]:
    """A subject as tensors in RAS: ``image`` (MR-normalised, ``(1, H, W, D)`` MetaTensor),
    ``tissue`` and ``lesion`` (int arrays ``(H, W, D)``); cached per image path (do not modify)."""
    if item["image"] not in _CASES:
        _CASES[item["image"]] = _load_case(item)
    return _CASES[item["image"]]


def _load_case(item: dict[str, Any]) -> dict[str, Any]:
    from monai.transforms import Orientation

    from medmamba.data import load_scan
    from medmamba.transforms import MRNormalize

    ras = Orientation(axcodes="RAS", labels=(("L", "R"), ("P", "A"), ("I", "S")))
    image = MRNormalize()(ras(load_scan(item["image"])))
    out = {"id": item.get("id", ""), "image": image}
    for key, src in (("tissue", "label"), ("lesion", "lesion")):
        if src in item:
            out[key] = ras(load_scan(item[src]))[0].numpy().round().astype("int64")
    return out


def _stacks(image: Any, zs: Any, context: int) -> Any:
    import numpy as np
    import torch

    vol = image[0].as_tensor() if hasattr(image[0], "as_tensor") else image[0]
    d = vol.shape[-1]
    idx = [np.clip(np.arange(z - context, z + context + 1), 0, d - 1) for z in zs]
    return torch.stack([vol[:, :, torch.as_tensor(i)].permute(2, 0, 1) for i in idx]).float()


def train_fallback(
    nb: Notebook, task: str, steps: int, *, batch: int = 8, lr: float = 3e-3, seed: int = 0
) -> tuple[Any, dict[str, Any]]:
    """Train a tiny 2.5D MobileMamba for ``steps`` steps on the training subjects' axial slices.

    Args:
        nb: The notebook (data set).
        task: ``"segmentation"`` (tissue, 4 classes, ``MobileMambaSeg``) or ``"classification"``
            (lesion present on the slice, 2 classes, ``MobileMamba``; positives over-sampled to half).
        steps: Optimiser steps.
        batch: Slices per step.
        lr: Peak learning rate (AdamW, cosine decay).
        seed: Random seed.

    Returns:
        ``(network in eval mode, {"train_loss": (steps, losses)})``.
    """
    import numpy as np
    import torch
    from monai.losses import DiceCELoss

    from medmamba.networks import MobileMamba, MobileMambaSeg

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    train = nb.datalist("segmentation")["training"][: 3 if nb.quick else None]
    cases = [load_case(item) for item in train]
    k = FALLBACK_CONTEXT
    if task == "segmentation":
        net = MobileMambaSeg(None, in_channels=2 * k + 1, out_channels=4, decoder_channels=16, **TINY_ENCODER)
        loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)
        pools = [[(c, z) for z in np.nonzero((c["tissue"] > 0).sum(axis=(0, 1)) > 0)[0]] for c in cases]
        pool = [p for ps in pools for p in ps]
    elif task == "classification":
        net = MobileMamba(None, in_channels=2 * k + 1, num_classes=2, **TINY_ENCODER)
        loss_fn = torch.nn.CrossEntropyLoss()
        pos = [(c, z) for c in cases for z in np.nonzero((c["lesion"] > 0).sum(axis=(0, 1)) >= 5)[0]]
        neg = [
            (c, z)
            for c in cases
            for z in np.nonzero((c["lesion"] > 0).sum(axis=(0, 1)) == 0)[0]
            if (c["tissue"][:, :, z] > 0).mean() > 0.05
        ]
    else:
        raise ValueError(f"task must be 'segmentation' or 'classification', got {task!r}")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a tiny network gains nothing from more threads, and a busy CPU makes them wait
    try:
        return _train(net, loss_fn, task, steps, batch, lr, rng, pool if task == "segmentation" else (pos, neg))
    finally:
        torch.set_num_threads(threads)


def _train(net: Any, loss_fn: Any, task: str, steps: int, batch: int, lr: float, rng: Any, pool: Any) -> Any:
    import numpy as np
    import torch

    k = FALLBACK_CONTEXT
    if task == "classification":
        pos, neg = pool
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
    losses = []
    net.train()
    for _ in range(steps):
        if task == "segmentation":
            picks = [pool[i] for i in rng.integers(0, len(pool), batch)]
            x = torch.cat([_stacks(c["image"], [z], k) for c, z in picks])
            y = torch.stack([torch.from_numpy(c["tissue"][None, :, :, z]) for c, z in picks])
        else:
            n_pos = batch // 2 if pos else 0
            picks = [pos[i] for i in rng.integers(0, len(pos), n_pos)] if n_pos else []
            picks += [neg[i] for i in rng.integers(0, len(neg), batch - n_pos)]
            x = torch.cat([_stacks(c["image"], [z], k) for c, z in picks])
            y = torch.tensor([1] * n_pos + [0] * (batch - n_pos))
        loss = loss_fn(net(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        losses.append(float(loss.detach()))
    return net.eval(), {"train_loss": (np.arange(1, steps + 1), np.asarray(losses))}


def try_load_bundle(nb: Notebook, name: str) -> Bundle | None:
    """:func:`load_bundle`, but a bundle whose weights cannot be loaded (e.g. trained with other
    network settings, or being written right now) is reported and treated as missing."""
    try:
        return load_bundle(nb, name)
    except Exception as err:  # noqa: BLE001 - any failure means: no usable trained model
        print(f"{name}: the trained weights could not be loaded ({type(err).__name__}: {str(err)[:300]})")
        return None


def bundle_part(bundle: Bundle, *ids: str) -> Any:
    """The first of the config ids present in the bundle's configuration, instantiated
    (e.g. ``bundle_part(b, "validate#inferer", "inferer")``); ``None`` if none is."""
    for i in ids:
        if i in bundle.config:
            return bundle.config.get_parsed_content(i, instantiate=True)
    return None


def bundle_preprocessing(bundle: Bundle) -> Any:
    """The bundle's deterministic preprocessing (loading, orientation, crop, normalisation, padding)
    as one callable on a dict of file paths: its ``preprocessing_transforms`` or
    ``validate#volume_transforms`` list (the volume steps alone, which keep the label maps as
    volumes), else its validation or inference ``preprocessing``."""
    from monai.transforms import Compose

    for key in ("preprocessing_transforms", "validate#volume_transforms"):
        if key in bundle.config:
            return Compose(bundle.config.get_parsed_content(key, instantiate=True))
    part = bundle_part(bundle, "validate#preprocessing", "preprocessing")
    if part is None:
        raise KeyError(
            f"{bundle.root}: no preprocessing_transforms, validate#preprocessing or preprocessing in the configs"
        )
    return part


def strip_outputs(paths: list[str]) -> list[str]:
    """Remove outputs, execution counts and execution timing from notebooks, in place; returns the
    paths that changed (``python notebooks/nbhelpers.py strip notebooks/*.ipynb``)."""
    import nbformat

    changed = []
    for p in paths:
        nb = nbformat.read(p, as_version=4)
        before = nbformat.writes(nb)
        for cell in nb.cells:
            cell.metadata.pop("execution", None)
            if cell.cell_type == "code":
                cell.outputs = []
                cell.execution_count = None
        nb.metadata.pop("widgets", None)
        if nbformat.writes(nb) != before:
            nbformat.write(nb, p)
            changed.append(p)
    return changed


if __name__ == "__main__":
    import sys

    if len(sys.argv) < 3 or sys.argv[1] != "strip":
        sys.exit("usage: python notebooks/nbhelpers.py strip NOTEBOOK.ipynb ...")
    for path in strip_outputs(sys.argv[2:]):
        print("stripped", path)
