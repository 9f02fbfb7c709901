"""Per-iteration learning-rate schedule of the recipe: linear warm-up, then cosine to a floor.

MONAI's ``monai.optimizers.WarmupCosineSchedule`` is close but not this schedule: its ``end_lr``
*clamps* a cosine that decays to zero (so the floor is reached before the end and the curve has a
kink there) and is one absolute value for every parameter group. Here the cosine runs from the
peak to the floor (``min_lr_ratio`` of each group's peak, or an absolute ``min_lr``), as timm's
``CosineLRScheduler`` used by the reference (warm-up from ``lr/1e3``, floor ``lr/1e2``).

Step ``s`` (0-based iteration index; the scheduler is stepped once per iteration, e.g. by MONAI's
``LrScheduleHandler(epoch_level=False)``) has the factor

- ``s < W``:  ``f0 + (1 − f0) · s / W``  (``f0 = warmup_start_factor``, ``W = warmup_steps``);
- ``s ≥ W``:  ``r + (1 − r) · ½ (1 + cos(π · min(1, (s − W) / (T − 1 − W))))``,

so the factor is 1 at the end of the warm-up (``s = W``) and exactly the floor ``r`` at the last
iteration ``s = T − 1`` (``T = total_steps``), and stays there afterwards.
"""

from __future__ import annotations

import math

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR

__all__ = ["WarmupCosineLR", "warmup_cosine_factor"]


def warmup_cosine_factor(
    step: int, warmup_steps: int, total_steps: int, warmup_start_factor: float = 1e-3, min_factor: float = 0.0
) -> float:
    """The multiplicative LR factor at 0-based iteration ``step`` (see the module doc)."""
    if step < warmup_steps:
        return warmup_start_factor + (1.0 - warmup_start_factor) * step / warmup_steps
    span = max(1, total_steps - 1 - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / span)
    return min_factor + (1.0 - min_factor) * 0.5 * (1.0 + math.cos(math.pi * progress))


class WarmupCosineLR(LambdaLR):
    """Linear warm-up then cosine decay to a floor, stepped every iteration.

    Args:
        optimizer: the optimiser (all groups follow the schedule relative to their initial lr).
        warmup_steps: warm-up iterations W (paper: 20 epochs of iterations).
        total_steps: total training iterations T (epochs × iterations per epoch).
        warmup_start_factor: factor of the first iteration (reference: 1e-3).
        min_lr_ratio: floor as a fraction of each group's peak lr (reference: 1e-2).
        min_lr: absolute floor; when given it replaces ``min_lr_ratio`` (each group's floor
            factor is then ``min(1, min_lr / peak)``).
        last_epoch: index of the last step, for resuming (``LambdaLR`` convention).

    Example (bundle)::

        "lr_scheduler": {"_target_": "medmamba.training.WarmupCosineLR", "optimizer": "@optimizer",
                         "warmup_steps": 200, "total_steps": 3000},
        "handlers": [{"_target_": "LrScheduleHandler", "lr_scheduler": "@lr_scheduler",
                      "epoch_level": false, "print_lr": false}]
    """

    def __init__(
        self,
        optimizer: Optimizer,
        warmup_steps: int,
        total_steps: int,
        warmup_start_factor: float = 1e-3,
        min_lr_ratio: float = 1e-2,
        min_lr: float | None = None,
        last_epoch: int = -1,
    ) -> None:
        warmup_steps, total_steps = int(warmup_steps), int(total_steps)
        if total_steps < 1:
            raise ValueError(f"total_steps must be >= 1, got {total_steps}.")
        if not 0 <= warmup_steps < total_steps:
            raise ValueError(f"warmup_steps must be in [0, total_steps={total_steps}), got {warmup_steps}.")
        if not 0.0 <= float(warmup_start_factor) <= 1.0:
            raise ValueError(f"warmup_start_factor must be in [0, 1], got {warmup_start_factor}.")
        if not 0.0 <= float(min_lr_ratio) <= 1.0:
            raise ValueError(f"min_lr_ratio must be in [0, 1], got {min_lr_ratio}.")
        if min_lr is not None and float(min_lr) < 0:
            raise ValueError(f"min_lr must be >= 0, got {min_lr}.")
        self.warmup_steps = warmup_steps
        self.total_steps = total_steps
        self.warmup_start_factor = float(warmup_start_factor)
        self.min_lr_ratio = float(min_lr_ratio)
        self.min_lr = None if min_lr is None else float(min_lr)
        peaks = [g.get("initial_lr", g["lr"]) for g in optimizer.param_groups]
        if self.min_lr is not None:
            floors = [min(1.0, self.min_lr / p) if p > 0 else 0.0 for p in peaks]
        else:
            floors = [self.min_lr_ratio] * len(peaks)
        lambdas = [self._make_lambda(f) for f in floors]
        super().__init__(optimizer, lambdas, last_epoch)

    def _make_lambda(self, floor: float):
        def fn(step: int) -> float:
            return warmup_cosine_factor(step, self.warmup_steps, self.total_steps, self.warmup_start_factor, floor)

        return fn

    @classmethod
    def from_epochs(
        cls, optimizer: Optimizer, epochs: int, steps_per_epoch: int, warmup_epochs: float = 0, **kwargs
    ) -> WarmupCosineLR:
        """Build from epochs: ``T = epochs·steps_per_epoch``, ``W = round(warmup_epochs·steps_per_epoch)``."""
        return cls(
            optimizer,
            warmup_steps=int(round(warmup_epochs * steps_per_epoch)),
            total_steps=int(epochs) * int(steps_per_epoch),
            **kwargs,
        )
