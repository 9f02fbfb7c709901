"""AdamW of the MobileMamba recipe with weight decay only where it belongs.

The paper trains with AdamW (lr 1.5e-3 at batch 1024, betas 0.9/0.999, weight decay 0.05).
Weight decay is *not* applied to:

- every parameter of a normalisation layer (BatchNorm, LayerNorm, GroupNorm, InstanceNorm);
- every bias and every other parameter with at most one dimension (e.g. per-channel scales);
- the selective scan's ``A_log`` (log of the state matrix), ``D`` (skip) and ``dt_proj_bias``
  (the Δ bias): decaying them would pull the scan's dynamics towards ``A = −1``, ``D = 0`` and a
  zero time step. Matched on the last component of the parameter name; the reference
  implementation's names ``A_logs``, ``Ds``, ``dt_projs_bias`` are matched as well;
- any name returned by a model's ``no_weight_decay()`` method (timm convention).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from torch import nn

__all__ = ["NO_DECAY_NAMES", "NORM_TYPES", "param_groups", "create_optimizer", "scale_lr"]

#: Last name components of the selective-scan parameters that get no weight decay.
NO_DECAY_NAMES: tuple[str, ...] = ("A_log", "D", "dt_proj_bias", "A_logs", "Ds", "dt_projs_bias")

#: Module types whose parameters get no weight decay.
NORM_TYPES: tuple[type[nn.Module], ...] = (
    nn.modules.batchnorm._BatchNorm,
    nn.LayerNorm,
    nn.GroupNorm,
    nn.modules.instancenorm._InstanceNorm,
    nn.LocalResponseNorm,
)


def param_groups(
    model: nn.Module,
    weight_decay: float = 0.05,
    no_decay_names: Sequence[str] = NO_DECAY_NAMES,
    skip: Iterable[str] = (),
) -> list[dict]:
    """Split ``model``'s trainable parameters into a decayed and a non-decayed group.

    Args:
        model: the network.
        weight_decay: decay of the first group.
        no_decay_names: last name components that are never decayed (the scan's parameters).
        skip: further full parameter names that are never decayed.

    Returns:
        ``[{"params": [...], "weight_decay": weight_decay, "param_names": [...]},
        {"params": [...], "weight_decay": 0.0, "param_names": [...]}]``; parameters with
        ``requires_grad=False`` are left out. ``param_names`` is for inspection (torch
        optimisers keep extra group keys).
    """
    if float(weight_decay) < 0:
        raise ValueError(f"weight_decay must be >= 0, got {weight_decay}.")
    no_decay_full = set(skip)
    hook = getattr(model, "no_weight_decay", None)
    if callable(hook):
        no_decay_full |= set(hook())
    no_decay_last = set(no_decay_names)
    norm_params: set[int] = set()
    for module in model.modules():
        if isinstance(module, NORM_TYPES):
            norm_params.update(id(p) for p in module.parameters(recurse=False))
    decay, no_decay = ([], []), ([], [])
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        last = name.rsplit(".", 1)[-1]
        exempt = (
            id(p) in norm_params
            or p.ndim <= 1
            or last == "bias"
            or last in no_decay_last
            or name in no_decay_full
        )
        target = no_decay if exempt else decay
        target[0].append(p)
        target[1].append(name)
    return [
        {"params": decay[0], "weight_decay": float(weight_decay), "param_names": decay[1]},
        {"params": no_decay[0], "weight_decay": 0.0, "param_names": no_decay[1]},
    ]


def create_optimizer(
    model: nn.Module,
    lr: float = 1.5e-3,
    weight_decay: float = 0.05,
    betas: Sequence[float] = (0.9, 0.999),
    eps: float = 1e-8,
    no_decay_names: Sequence[str] = NO_DECAY_NAMES,
    fused: bool | None = None,
) -> torch.optim.AdamW:
    """AdamW over :func:`param_groups` (the paper: lr 1.5e-3 at batch 1024, wd 0.05).

    Args:
        model: the network.
        lr: peak learning rate (see :func:`scale_lr` for other batch sizes).
        weight_decay: decoupled weight decay of the decayed group.
        betas: Adam betas.
        eps: Adam epsilon.
        no_decay_names: see :func:`param_groups`.
        fused: use PyTorch's fused AdamW kernel (one kernel over all parameters; on a CPU several
            times faster than the per-tensor loop for the many small tensors of MobileMamba).
            ``None`` (default) uses it when every parameter is a floating-point tensor on the CPU
            or on CUDA.

    Returns:
        The optimiser.
    """
    if not float(lr) > 0:
        raise ValueError(f"lr must be > 0, got {lr}.")
    if len(betas) != 2:
        raise ValueError(f"betas must be a pair, got {betas!r}.")
    if fused is not None and not isinstance(fused, bool):
        raise TypeError(f"fused must be a bool or None, got {type(fused).__name__}.")
    groups = param_groups(model, weight_decay, no_decay_names)
    if fused is None:
        params = [p for g in groups for p in g["params"]]
        fused = bool(params) and all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in params)
    return torch.optim.AdamW(
        groups, lr=float(lr), betas=(float(betas[0]), float(betas[1])), eps=float(eps), fused=fused
    )


def scale_lr(base_lr: float, batch_size: int, base_batch_size: int = 1024) -> float:
    """Linear learning-rate scaling: ``base_lr · batch_size / base_batch_size``."""
    if int(batch_size) < 1 or int(base_batch_size) < 1:
        raise ValueError(f"batch sizes must be >= 1, got {batch_size} and {base_batch_size}.")
    return float(base_lr) * int(batch_size) / int(base_batch_size)
