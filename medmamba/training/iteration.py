"""One training iteration of the MobileMamba recipe, as a MONAI ``SupervisedTrainer`` update.

:class:`DistillationIteration` is an ``iteration_update`` callable for
``monai.engines.SupervisedTrainer``. Per batch it

1. prepares the batch as the trainer does (``engine.prepare_batch``), optionally applies the
   batch-level ``mixup`` (:class:`~medmamba.training.mixup.MixupCutmix` or
   :class:`~medmamba.training.mixup.SegmentationCutMix`);
2. runs the frozen teacher on the *same* (augmented) batch, or reads its cached logits;
3. runs the student through ``engine.inferer`` under autocast in the precision
   :func:`~medmamba.training.amp.resolve_precision` picks for ``amp`` on the trainer's device
   (``"auto"``: bf16 on CUDA where supported, else fp16; bf16 on CPUs with native bf16, else fp32);
4. computes the loss in float32: base loss + λ·KD (:class:`~medmamba.training.distillation.
   DistillationLoss` or :class:`~medmamba.training.distillation.SegmentationDistillationLoss`);
5. back-propagates (with a ``GradScaler`` for fp16), clips the gradient norm, steps the optimiser,
   honouring the trainer's ``accumulation_steps``.

It fills ``engine.state.output`` with MONAI's keys ``image``, ``label``, ``pred`` (what the network
returns in eval mode: for a two-head student the mean of the heads, for a deep-supervision list
its full-resolution logits), ``loss``, plus
``loss_base``, ``loss_kd``, ``teacher_pred`` and ``grad_norm``, and fires the trainer's
``IterationEvents`` (``FORWARD_COMPLETED``, ``LOSS_COMPLETED``, ``BACKWARD_COMPLETED``,
``MODEL_COMPLETED``). With ``teacher=None`` it is the recipe's plain iteration (mixup, AMP,
clipping) without distillation.

A bundle adds two entries and points the trainer's ``iteration_update`` at the second::

    "teacher": {"_target_": "medmamba.training.Teacher",
                "network": {"_target_": "medmamba.networks.MobileMamba", "variant": "b1", "num_classes": 2},
                "checkpoint": "$@bundle_root + '/models/teacher.pt'"},
    "distillation": {"_target_": "medmamba.training.DistillationIteration", "teacher": "@teacher",
                     "kind": "soft", "tau": 1.0, "weight": 5.0, "grad_clip_norm": 5.0},
    "train#trainer#iteration_update": "@distillation"
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from .amp import Precision, check_amp, create_grad_scaler, resolve_precision
from .distillation import DistillationLoss, SegmentationDistillationLoss
from .teacher import TeacherLogitCache, batch_ids

if TYPE_CHECKING:
    from ignite.engine import Engine

__all__ = ["DistillationIteration"]

logger = logging.getLogger(__name__)

_TASKS = ("classification", "segmentation")


def _fire(engine: Any, name: str) -> None:
    try:
        from monai.engines.utils import IterationEvents
    except ImportError:  # pragma: no cover - MONAI is a dependency
        return
    fire = getattr(engine, "fire_event", None)
    if fire is not None:
        fire(getattr(IterationEvents, name))


class DistillationIteration:
    """``iteration_update`` for ``SupervisedTrainer``: distillation, mixup, AMP, clipping.

    Args:
        teacher: the frozen teacher (a :class:`~medmamba.training.teacher.Teacher`, or any
            module, run under ``no_grad`` in eval mode); ``None`` for no distillation (unless
            ``teacher_cache`` is given).
        loss: the combined loss, called ``loss.compute(student_output, target, teacher_logits)``
            (a :class:`DistillationLoss` / :class:`SegmentationDistillationLoss` or any module
            with that ``forward``). When ``None`` one is built at the first iteration from
            ``task``, ``kind``, ``tau``, ``weight`` around the trainer's ``loss_function`` (so
            the bundle's loss stays the base loss).
        task: ``"classification"`` or ``"segmentation"`` (only used when ``loss`` is ``None``).
        kind: ``"soft"`` or ``"hard"`` (classification).
        tau: distillation temperature τ (paper: 1).
        weight: λ, the weight of the distillation term (paper: 5).
        mixup: batch-level callable ``(images, labels) -> (images, labels)``, e.g.
            :class:`~medmamba.training.mixup.MixupCutmix`.
        grad_clip_norm: max gradient norm (paper: 5); ``None`` or 0 disables clipping.
        amp: the precision, any :func:`~medmamba.training.amp.resolve_precision` setting
            (``"auto"``, ``True``, ``False``, ``"bf16"``, ``"fp16"``, ``"fp32"``) or a resolved
            :class:`~medmamba.training.amp.Precision`; ``None`` follows the trainer's ``amp`` flag
            (on: ``amp_dtype``, or ``True``'s choice). Resolved once per device type, at the first
            iteration. fp16 uses a ``GradScaler`` (the trainer's if it has one).
        amp_dtype: with ``amp`` ``True`` or ``None``: force ``"bf16"`` or ``"fp16"``.
        teacher_cache: precomputed teacher logits (:class:`TeacherLogitCache`); then the teacher
            is not run. Not valid with ``mixup`` (the cached logits are of un-mixed images).
        id_key: batch key of the sample ids looked up in ``teacher_cache``.
        mask_key: batch key of a distillation region mask for segmentation (not with ``mixup``).
        skip_nonfinite: skip the optimiser step (with a warning) when the loss is not finite (a
            half-precision overflow); non-finite *inputs* are an error, see ``check_inputs``.
        check_inputs: raise a ``ValueError`` when a floating-point input batch holds NaN or inf
            values. A bad input cannot be skipped like a bad loss: the forward pass has already
            folded it into the BatchNorm running statistics, which would poison every later
            evaluation.
    """

    def __init__(
        self,
        teacher: nn.Module | None = None,
        loss: nn.Module | None = None,
        task: str = "classification",
        kind: str = "soft",
        tau: float = 1.0,
        weight: float = 5.0,
        mixup: Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]] | None = None,
        grad_clip_norm: float | None = None,
        amp: bool | str | torch.dtype | Precision | None = None,
        amp_dtype: str | torch.dtype | None = None,
        teacher_cache: TeacherLogitCache | None = None,
        id_key: str = "id",
        mask_key: str | None = None,
        skip_nonfinite: bool = True,
        check_inputs: bool = True,
    ) -> None:
        if task not in _TASKS:
            raise ValueError(f"task must be one of {_TASKS}, got {task!r}.")
        if teacher is not None and not isinstance(teacher, nn.Module):
            raise TypeError(f"teacher must be an nn.Module or None, got {type(teacher).__name__}.")
        if teacher_cache is not None and not isinstance(teacher_cache, TeacherLogitCache):
            raise TypeError(f"teacher_cache must be a TeacherLogitCache, got {type(teacher_cache).__name__}.")
        if teacher_cache is not None and mixup is not None:
            raise ValueError("teacher_cache holds logits of un-mixed images: it cannot be used with mixup.")
        if mask_key is not None and mixup is not None:
            raise ValueError("mask_key masks are not mixed by mixup; use SegmentationDistillationLoss(region=...).")
        if grad_clip_norm is not None and float(grad_clip_norm) < 0:
            raise ValueError(f"grad_clip_norm must be >= 0 or None, got {grad_clip_norm}.")
        if mixup is not None and not callable(mixup):
            raise TypeError(f"mixup must be callable, got {type(mixup).__name__}.")
        if amp is not None:
            check_amp(amp)
        if amp_dtype is not None:
            check_amp(amp_dtype, "amp_dtype")
        self.teacher = teacher
        self.loss = loss
        self.task = task
        self.kind = kind
        self.tau = tau
        self.weight = weight
        self.mixup = mixup
        self.grad_clip_norm = float(grad_clip_norm) if grad_clip_norm else None
        self.amp = amp
        self.amp_dtype = amp_dtype
        self.teacher_cache = teacher_cache
        self.id_key = id_key
        self.mask_key = mask_key
        self.skip_nonfinite = bool(skip_nonfinite)
        self.check_inputs = bool(check_inputs)
        self._scaler: torch.amp.GradScaler | None = None
        self._precisions: dict[tuple[str, bool], Precision] = {}
        if loss is None:
            # validate kind/tau/weight now rather than at the first iteration
            self._build_loss(None)

    def _build_loss(self, base_loss: nn.Module | None) -> nn.Module:
        if self.task == "classification":
            return DistillationLoss(base_loss=base_loss, kind=self.kind, tau=self.tau, weight=self.weight)
        return SegmentationDistillationLoss(base_loss=base_loss, tau=self.tau, weight=self.weight)

    def precision(self, device: torch.device | str, engine: Any = None) -> Precision:
        """The student's precision on ``device`` (resolved once per device type, and logged then).

        Args:
            device: the training device.
            engine: the trainer, whose ``amp`` flag is followed when ``amp`` is ``None``.
        """
        device = torch.device(device)
        if self.amp is None:
            setting: Any = (self.amp_dtype or True) if bool(getattr(engine, "amp", False)) else False
        elif self.amp is True and self.amp_dtype is not None:
            setting = self.amp_dtype
        else:
            setting = self.amp
        key = (device.type, self.amp is None and setting is not False)
        if key not in self._precisions:
            self._precisions[key] = resolve_precision(setting, device)
        return self._precisions[key]

    def loss_for(self, engine: Any) -> nn.Module:
        """The combined loss, built around ``engine.loss_function`` on first use."""
        if self.loss is None:
            self.loss = self._build_loss(getattr(engine, "loss_function", None))
        return self.loss

    def teacher_logits(
        self, inputs: torch.Tensor, batchdata: Any, device: torch.device, precision: Precision
    ) -> torch.Tensor | None:
        """The teacher's logits for this batch (from the cache, or by running the teacher under the
        student's ``precision``; a teacher wrapped in :class:`~medmamba.training.amp.Autocast` runs
        in its own)."""
        if self.teacher_cache is not None:
            if not isinstance(batchdata, Mapping):
                raise TypeError("teacher_cache needs dict batches carrying the sample ids under id_key.")
            return self.teacher_cache.get(batch_ids(batchdata, self.id_key), device=device)
        if self.teacher is None:
            return None
        param = next(iter(self.teacher.parameters()), None)
        if param is not None and param.device != device:
            self.teacher.to(device)
        self.teacher.eval()
        with torch.no_grad(), precision.autocast():
            out = self.teacher(inputs)
        if isinstance(out, (tuple, list)):
            out = out[0]
        return out.detach().float()

    def __call__(self, engine: Engine, batchdata: Any) -> dict:
        """Run one iteration on ``engine`` (a ``SupervisedTrainer``) and return its output dict."""
        from monai.utils import CommonKeys as Keys

        if batchdata is None:
            raise ValueError("Must provide batch data for current iteration.")
        device = torch.device(engine.state.device) if engine.state.device is not None else torch.device("cpu")
        batch = engine.prepare_batch(batchdata, engine.state.device, engine.non_blocking, **engine.to_kwargs)
        if len(batch) == 2:
            inputs, targets = batch
            args: tuple = ()
            kwargs: dict = {}
        else:
            inputs, targets, args, kwargs = batch
        check = self.check_inputs and torch.is_tensor(inputs) and inputs.is_floating_point()
        if check and not bool(torch.isfinite(inputs).all()):  # one reduction per batch; count only on failure
            bad = int((~torch.isfinite(inputs)).sum())
            raise ValueError(
                f"inputs of iteration {engine.state.iteration} hold {bad} non-finite value(s) (NaN/inf) out of "
                f"{inputs.numel()}; expected finite images (check the preprocessing), or pass check_inputs=False."
            )
        mask = None
        if self.mask_key is not None:
            mask = torch.as_tensor(batchdata[self.mask_key]).to(device)
        if self.mixup is not None:
            inputs, targets = self.mixup(inputs, targets)

        precision = self.precision(device, engine)
        scaler = None
        if precision.grad_scaler:
            scaler = getattr(engine, "scaler", None) or self._scaler
            if scaler is None:
                scaler = self._scaler = create_grad_scaler(device, precision.dtype)

        acc = int(getattr(engine, "accumulation_steps", 1) or 1)
        if acc > 1:
            epoch_length = engine.state.epoch_length
            local_iter = engine.state.iteration - 1
            if epoch_length is not None:
                local_iter %= epoch_length
            should_zero_grad = local_iter % acc == 0
            should_step = (local_iter + 1) % acc == 0 or (epoch_length is not None and local_iter + 1 == epoch_length)
        else:
            should_zero_grad = should_step = True

        engine.state.output = {Keys.IMAGE: inputs, Keys.LABEL: targets}
        network = engine.network
        optimizer = engine.optimizer
        loss_fn = self.loss_for(engine)
        network.train()
        if should_zero_grad:
            optimizer.zero_grad(set_to_none=getattr(engine, "optim_set_to_none", True))

        teacher_out = self.teacher_logits(inputs, batchdata, device, precision)
        with precision.autocast():
            pred = engine.inferer(inputs, network, *args, **kwargs)
        engine.state.output[Keys.PRED] = self._primary_output(pred)
        _fire(engine, "FORWARD_COMPLETED")

        loss_kwargs = {"mask": mask} if mask is not None else {}
        compute = getattr(loss_fn, "compute", None)
        if compute is not None:
            terms = compute(pred, targets, teacher_out, **loss_kwargs)
        else:
            terms = {"loss": loss_fn(pred, targets, teacher_out, **loss_kwargs)}
        loss = terms["loss"].mean()
        engine.state.output[Keys.LOSS] = loss
        engine.state.output["loss_base"] = terms.get("loss_base", loss).detach()
        engine.state.output["loss_kd"] = terms.get("loss_kd", torch.zeros(())).detach()
        engine.state.output["teacher_pred"] = teacher_out
        _fire(engine, "LOSS_COMPLETED")

        finite = bool(torch.isfinite(loss).item())
        if not finite and self.skip_nonfinite:
            logger.warning("non-finite loss %s at iteration %d: step skipped", loss.item(), engine.state.iteration)
            optimizer.zero_grad(set_to_none=True)
            engine.state.output["grad_norm"] = None
            engine.state.output["skipped"] = True
            _fire(engine, "BACKWARD_COMPLETED")
            _fire(engine, "MODEL_COMPLETED")
            return engine.state.output

        scaled = loss / acc if acc > 1 else loss
        if scaler is not None:
            scaler.scale(scaled).backward()
        else:
            scaled.backward()
        _fire(engine, "BACKWARD_COMPLETED")
        grad_norm = None
        if should_step:
            if scaler is not None:
                scaler.unscale_(optimizer)
            if self.grad_clip_norm:
                params = [p for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
                grad_norm = torch.nn.utils.clip_grad_norm_(params, self.grad_clip_norm).detach()
            if scaler is not None:
                scaler.step(optimizer)
                scaler.update()
            else:
                optimizer.step()
        engine.state.output["grad_norm"] = grad_norm
        engine.state.output["skipped"] = False
        _fire(engine, "MODEL_COMPLETED")
        return engine.state.output

    def _primary_output(self, pred: Any) -> Any:
        """What the network returns in eval mode: the mean of the two classification heads, or
        the full-resolution logits of a deep-supervision list (segmentation)."""
        if not isinstance(pred, (tuple, list)) or not pred or not all(isinstance(p, torch.Tensor) for p in pred):
            return pred
        if self.task == "segmentation" or isinstance(self.loss, SegmentationDistillationLoss):
            return pred[0]
        if len(pred) == 2:
            return ((pred[0].detach().float() + pred[1].detach().float()) / 2).to(pred[0].dtype)
        return pred
