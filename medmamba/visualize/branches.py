"""What the three branches of MobileMamba's MRFFI token mixer contribute.

MRFFI splits its input channels into a global part (WTE-Mamba), a local part (MK-DeConv) and an
identity part, concatenates the three results, applies a ReLU and a 1×1 conv-BN projection ``P``.
In eval mode ``P`` is affine, so its output splits exactly into one term per branch::

    P(h) = P(0) + Σ_b (P(h_b) - P(0))      with h_b = h with every channel outside branch b zeroed

* :func:`mrffi_branch_contributions` - per MRFFI block: the RMS of each branch's (post-ReLU) output
  and of its term of the projected output, relative to the RMS of the block's input (the residual
  stream the mixer adds to), measured with forward hooks.
* :func:`zero_mrffi_branch`, :func:`mrffi_branch_ablation` - switch a branch off (its channels zeroed
  after the ReLU) and measure how much the network output changes.
* :func:`plot_branch_contributions`, :func:`plot_branch_ablation` - the two as grouped bar charts.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from torch import nn

from medmamba.networks.blocks.mrffi import MRFFI
from medmamba.visualize._common import axes_or_new, new_figure

__all__ = [
    "BRANCHES",
    "BRANCH_COLORS",
    "BranchStats",
    "mrffi_blocks",
    "mrffi_branch_ablation",
    "mrffi_branch_contributions",
    "mrffi_stage_groups",
    "plot_branch_ablation",
    "plot_branch_contributions",
    "zero_mrffi_branch",
]

#: The MRFFI branches, in channel order.
BRANCHES: tuple[str, str, str] = ("WTE-Mamba", "MK-DeConv", "identity")
#: Bar colours of the branches.
BRANCH_COLORS: dict[str, str] = {"WTE-Mamba": "tab:purple", "MK-DeConv": "tab:orange", "identity": "tab:gray"}

_STAGE_BLOCK = re.compile(r"stages\.(\d+)\.blocks\.(\d+)")


def _label(name: str) -> str:
    m = _STAGE_BLOCK.search(name)
    if m:
        return f"stage {int(m.group(1)) + 1} block {int(m.group(2)) + 1}"
    return name or "MRFFI"


def mrffi_blocks(model: nn.Module) -> list[tuple[str, MRFFI]]:
    """The MRFFI modules of a network, in forward order, with readable labels.

    Args:
        model: A :class:`~medmamba.networks.MobileMamba`, :class:`~medmamba.networks.MobileMambaSeg`
            or any module containing MRFFI blocks (an MRFFI itself included).

    Returns:
        ``[(label, module), ...]``; labels are ``"stage s block b"`` (1-based) where the module path
        shows them, else the module path.

    Raises:
        ValueError: If the model holds no MRFFI.
    """
    found = [(_label(n), m) for n, m in model.named_modules() if isinstance(m, MRFFI)]
    if not found:
        raise ValueError(f"{type(model).__name__} holds no MRFFI block (expected a MobileMamba network)")
    return found


def mrffi_stage_groups(model: nn.Module) -> dict[str, list[str]]:
    """MRFFI block labels grouped by stage (``{"stage 1": [...], ...}``), for :func:`mrffi_branch_ablation`."""
    groups: dict[str, list[str]] = {}
    for label, _ in mrffi_blocks(model):
        key = label.rsplit(" block ", 1)[0] if " block " in label else label
        groups.setdefault(key, []).append(label)
    return groups


def _slices(m: MRFFI) -> dict[str, slice]:
    cg, cl, ci = m.global_channels, m.local_channels, m.identity_channels
    return {"WTE-Mamba": slice(0, cg), "MK-DeConv": slice(cg, cg + cl), "identity": slice(cg + cl, cg + cl + ci)}


def _channels(m: MRFFI) -> dict[str, int]:
    return {"WTE-Mamba": m.global_channels, "MK-DeConv": m.local_channels, "identity": m.identity_channels}


@dataclass(frozen=True)
class BranchStats:
    """Branch statistics of one MRFFI block, over all images, positions and channels.

    Attributes:
        block: The block's label (``"stage s block b"``).
        channels: Channels of each branch.
        feature_rms: RMS of each branch's output after the ReLU (what the projection receives);
            NaN for a branch without channels.
        output_rms: RMS of each branch's term of the projected output (over all ``C`` channels).
        input_rms: RMS of the block's input, the residual stream that the mixer output is added to.
    """

    block: str
    channels: dict[str, int]
    feature_rms: dict[str, float]
    output_rms: dict[str, float]
    input_rms: float

    def relative_output(self) -> dict[str, float]:
        """``output_rms / input_rms`` per branch: how much each branch changes the residual stream."""
        scale = self.input_rms if self.input_rms > 0 else float("nan")
        return {b: v / scale for b, v in self.output_rms.items()}


def _batches(inputs: Any, batch_size: int) -> Iterator[torch.Tensor]:
    if isinstance(inputs, np.ndarray):
        inputs = torch.from_numpy(inputs)
    if isinstance(inputs, torch.Tensor):
        x = inputs.as_tensor() if hasattr(inputs, "as_tensor") else inputs
        if x.ndim < 3:
            raise ValueError(f"inputs must be a batch (N, C, *spatial), got shape {tuple(x.shape)}")
        for i in range(0, x.shape[0], batch_size):
            yield x[i : i + batch_size]
        return
    for b in inputs:
        t = b if isinstance(b, torch.Tensor) else torch.as_tensor(np.asarray(b))
        yield t.as_tensor() if hasattr(t, "as_tensor") else t


@contextlib.contextmanager
def _eval(model: nn.Module) -> Iterator[None]:
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        model.train(was)


def _device_dtype(model: nn.Module) -> tuple[torch.device, torch.dtype]:
    p = next((p for p in model.parameters() if p.is_floating_point()), None)
    return (p.device, p.dtype) if p is not None else (torch.device("cpu"), torch.float32)


def mrffi_branch_contributions(
    model: nn.Module,
    inputs: torch.Tensor | np.ndarray | Iterable[torch.Tensor],
    *,
    forward: Callable[[torch.Tensor], Any] | None = None,
    batch_size: int = 8,
) -> list[BranchStats]:
    """Measure each MRFFI branch's output and its share of the block output with forward hooks.

    The model runs in eval mode without gradients (its mode is restored). For every MRFFI block and
    every batch the hook on the block's ReLU takes ``h`` (the concatenated, activated branch
    outputs) and evaluates the projection on ``h`` restricted to each branch, minus the projection of
    zero: these three terms add up exactly to the block's output minus a constant (the projection's
    bias). RMS values are pooled over images, positions and channels.

    Args:
        model: A network with MRFFI blocks.
        inputs: ``(N, C, H, W)`` images (tensor or array) or an iterable of batches.
        forward: What to run per batch (``model`` by default), e.g. ``model.forward_features``.
        batch_size: Images per forward pass (tensor inputs).

    Returns:
        One :class:`BranchStats` per MRFFI block, in forward order.

    Raises:
        ValueError: For a model without MRFFI, a bad ``batch_size`` or no input images.
    """
    if int(batch_size) < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    blocks = mrffi_blocks(model)
    run = forward if forward is not None else model
    device, dtype = _device_dtype(model)
    # per block: sums of squares and element counts
    sq: list[dict[str, float]] = [{} for _ in blocks]
    n_el: list[dict[str, int]] = [{} for _ in blocks]
    in_sq = [0.0] * len(blocks)
    in_n = [0] * len(blocks)

    def add(k: int, key: str, t: torch.Tensor) -> None:
        sq[k][key] = sq[k].get(key, 0.0) + float(t.double().pow(2).sum())
        n_el[k][key] = n_el[k].get(key, 0) + t.numel()

    def make_hooks(k: int, m: MRFFI) -> list[Any]:
        slices = _slices(m)

        def on_input(_mod: nn.Module, args: tuple[Any, ...]) -> None:
            x = args[0]
            in_sq[k] += float(x.double().pow(2).sum())
            in_n[k] += x.numel()

        def on_act(_mod: nn.Module, _args: tuple[Any, ...], h: torch.Tensor) -> None:
            base = m.proj(torch.zeros_like(h))
            for b, s in slices.items():
                if s.stop == s.start:
                    continue
                add(k, "feature:" + b, h[:, s])
                hb = torch.zeros_like(h)
                hb[:, s] = h[:, s]
                add(k, "output:" + b, m.proj(hb) - base)

        return [m.register_forward_pre_hook(on_input), m.act.register_forward_hook(on_act)]

    handles: list[Any] = []
    n_images = 0
    try:
        for k, (_, m) in enumerate(blocks):
            handles += make_hooks(k, m)
        with _eval(model):
            for batch in _batches(inputs, int(batch_size)):
                run(batch.to(device=device, dtype=dtype))
                n_images += batch.shape[0]
    finally:
        for h in handles:
            h.remove()
    if n_images == 0:
        raise ValueError("no input images were given (inputs is empty)")

    def rms(k: int, key: str) -> float:
        n = n_el[k].get(key, 0)
        return float(np.sqrt(sq[k][key] / n)) if n else float("nan")

    out = []
    for k, (label, m) in enumerate(blocks):
        out.append(
            BranchStats(
                block=label,
                channels=_channels(m),
                feature_rms={b: rms(k, "feature:" + b) for b in BRANCHES},
                output_rms={b: rms(k, "output:" + b) for b in BRANCHES},
                input_rms=float(np.sqrt(in_sq[k] / in_n[k])) if in_n[k] else float("nan"),
            )
        )
    return out


@contextlib.contextmanager
def zero_mrffi_branch(model: nn.Module, branch: str, blocks: Sequence[str] | None = None) -> Iterator[int]:
    """Switch one MRFFI branch off while the context is active: its channels are zeroed after the
    ReLU, so the projection receives nothing from it.

    Args:
        model: A network with MRFFI blocks (changed only through hooks, removed on exit).
        branch: One of :data:`BRANCHES`.
        blocks: Labels of the blocks to change (see :func:`mrffi_blocks`); all by default.

    Yields:
        The number of blocks changed (blocks where the branch has no channels are not counted).

    Raises:
        ValueError: For an unknown branch or block label.
    """
    if branch not in BRANCHES:
        raise ValueError(f"branch={branch!r} is not known; expected one of {BRANCHES}")
    found = mrffi_blocks(model)
    if blocks is not None:
        known = {label for label, _ in found}
        unknown = [b for b in blocks if b not in known]
        if unknown:
            raise ValueError(f"blocks {unknown} are not MRFFI blocks of the model; known: {sorted(known)}")
        found = [(label, m) for label, m in found if label in set(blocks)]
    handles = []
    for _, m in found:
        s = _slices(m)[branch]
        if s.stop == s.start:
            continue

        def hook(_mod: nn.Module, _args: tuple[Any, ...], h: torch.Tensor, s: slice = s) -> torch.Tensor:
            h = h.clone()
            h[:, s] = 0
            return h

        handles.append(m.act.register_forward_hook(hook))
    try:
        yield len(handles)
    finally:
        for h in handles:
            h.remove()


def _as_tensor(out: Any) -> torch.Tensor:
    if isinstance(out, (list, tuple)):
        out = out[-1] if isinstance(out[-1], torch.Tensor) else out[0]
    if not isinstance(out, torch.Tensor):
        raise TypeError(f"the forward output must be a tensor (or a list of tensors), got {type(out).__name__}")
    return out.as_tensor() if hasattr(out, "as_tensor") else out


def mrffi_branch_ablation(
    model: nn.Module,
    inputs: torch.Tensor | np.ndarray,
    *,
    forward: Callable[[torch.Tensor], Any] | None = None,
    branches: Sequence[str] = BRANCHES,
    groups: Mapping[str, Sequence[str]] | None = None,
    batch_size: int = 8,
) -> dict[str, dict[str, float]]:
    """How much the network output changes when a branch is switched off.

    For each branch and each group of blocks, the branch is zeroed in those blocks
    (:func:`zero_mrffi_branch`) and the relative change of the output over all images,
    ``‖f_off(x) - f(x)‖ / ‖f(x)‖`` (Frobenius norms), is recorded. The model runs in eval mode
    without gradients.

    Args:
        model: A network with MRFFI blocks.
        inputs: ``(N, C, H, W)`` images.
        forward: What to compare (``model`` by default: logits); a list output uses its last tensor.
        branches: The branches to switch off.
        groups: ``{group name: block labels}``; ``{"all blocks": every block}`` by default (see
            :func:`mrffi_stage_groups` for one group per stage).
        batch_size: Images per forward pass.

    Returns:
        ``{branch: {group: relative change}}``; NaN where the branch has no channels in the group.

    Raises:
        ValueError: For an unknown branch or block label, or a bad ``batch_size``.
    """
    if int(batch_size) < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    for b in branches:
        if b not in BRANCHES:
            raise ValueError(f"branch={b!r} is not known; expected one of {BRANCHES}")
    if groups is None:
        groups = {"all blocks": [label for label, _ in mrffi_blocks(model)]}
    run = forward if forward is not None else model
    device, dtype = _device_dtype(model)

    def outputs() -> torch.Tensor:
        return torch.cat(
            [
                _as_tensor(run(b.to(device=device, dtype=dtype))).double().cpu()
                for b in _batches(inputs, int(batch_size))
            ]
        )

    result: dict[str, dict[str, float]] = {}
    with _eval(model):
        ref = outputs()
        denom = float(ref.norm())
        denom = denom if denom > 0 else float("nan")
        for b in branches:
            result[b] = {}
            for g, labels in groups.items():
                with zero_mrffi_branch(model, b, list(labels)) as n:
                    result[b][g] = float((outputs() - ref).norm()) / denom if n else float("nan")
    return result


def _grouped_bars(
    ax: Axes, categories: Sequence[str], values: Mapping[str, Sequence[float]], *, fmt: str | None = None
) -> None:
    n = max(1, len(values))
    width = 0.8 / n
    x = np.arange(len(categories))
    for i, (b, vals) in enumerate(values.items()):
        bars = ax.bar(x + (i - (n - 1) / 2) * width, vals, width, label=b, color=BRANCH_COLORS.get(b))
        if fmt is not None:
            ax.bar_label(bars, labels=[("" if not np.isfinite(v) else format(v, fmt)) for v in vals], fontsize=7)
    ax.set_xticks(x, categories, fontsize=8)
    ax.grid(axis="y", alpha=0.3)


def plot_branch_contributions(
    stats: Sequence[BranchStats], *, title: str | None = None, fig: Figure | None = None
) -> Figure:
    """Branch outputs and contributions per MRFFI block as grouped bars (one colour per branch).

    Left: RMS of each branch's activated output (what the projection receives). Right: RMS of each
    branch's term of the block output, relative to the RMS of the block's input (the residual
    stream): how strongly each branch changes the features at that block. Tick labels give the
    block and its channel split ``Cg/Cl/Ci``.

    Args:
        stats: From :func:`mrffi_branch_contributions`.
        title: Figure title.
        fig: Figure to draw into.

    Returns:
        The figure with two axes of ``3 × len(stats)`` bars (NaN for a branch without channels).

    Raises:
        ValueError: For empty ``stats``.
    """
    if not stats:
        raise ValueError("stats is empty; expected mrffi_branch_contributions(...) results")
    cats = [
        f"{s.block}\n{s.channels['WTE-Mamba']}/{s.channels['MK-DeConv']}/{s.channels['identity']} ch" for s in stats
    ]
    fig = new_figure(fig, figsize=(max(9.0, 2.6 * len(stats) + 2.0), 4.2))
    ax1, ax2 = fig.subplots(1, 2)
    _grouped_bars(ax1, cats, {b: [s.feature_rms[b] for s in stats] for b in BRANCHES})
    ax1.set_ylabel("RMS of the branch output")
    ax1.set_title("branch outputs (after ReLU, before the projection)", fontsize=10)
    _grouped_bars(ax2, cats, {b: [s.relative_output()[b] for s in stats] for b in BRANCHES}, fmt=".2g")
    ax2.set_ylabel("RMS of the projected term / RMS of the block input")
    ax2.set_title("contribution to the block output (relative to its input)", fontsize=10)
    ax2.legend(fontsize="small", title="branch (channels Cg/Cl/Ci)", title_fontsize="small")
    if title is not None:
        fig.suptitle(title, fontsize=11)
    return fig


def plot_branch_ablation(
    result: Mapping[str, Mapping[str, float]],
    *,
    ylabel: str = "relative change of the output",
    title: str | None = None,
    ax: Axes | None = None,
) -> Figure:
    """Output change when each branch is switched off, grouped by block group, as bars.

    Args:
        result: From :func:`mrffi_branch_ablation` (``{branch: {group: value}}``).
        ylabel: Y axis label.
        title: Axes title.
        ax: Axes to draw into.

    Returns:
        The figure; one bar per (branch, group), labelled with its value.

    Raises:
        ValueError: For an empty result.
    """
    if not result:
        raise ValueError("result is empty; expected mrffi_branch_ablation(...) output")
    groups: list[str] = []
    for per in result.values():
        for g in per:
            if g not in groups:
                groups.append(g)
    fig, ax = axes_or_new(ax, figsize=(max(5.5, 2.2 * len(groups)), 4))
    _grouped_bars(ax, groups, {b: [per.get(g, float("nan")) for g in groups] for b, per in result.items()}, fmt=".2g")
    ax.set_ylabel(ylabel)
    ax.legend(fontsize="small", title="branch switched off", title_fontsize="small")
    ax.set_title(title if title is not None else "output change when one MRFFI branch is switched off", fontsize=10)
    return fig
