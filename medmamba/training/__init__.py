"""The MobileMamba training recipe as MONAI / ignite components.

One concept per module:

- :mod:`~medmamba.training.distillation`: knowledge-distillation losses (classification with a
  distillation head, pixel-wise for segmentation) and the soft-target cross-entropy;
- :mod:`~medmamba.training.teacher`: the frozen teacher and the teacher-logit cache;
- :mod:`~medmamba.training.iteration`: the ``SupervisedTrainer`` ``iteration_update`` that ties
  teacher, loss, mixup, mixed precision and gradient clipping together;
- :mod:`~medmamba.training.ema`: EMA of the weights and its ignite handler;
- :mod:`~medmamba.training.mixup`: Mixup / CutMix with label smoothing, segmentation CutMix;
- :mod:`~medmamba.training.optim`: AdamW with the recipe's weight-decay exemptions;
- :mod:`~medmamba.training.schedule`: per-iteration warm-up + cosine-to-floor schedule;
- :mod:`~medmamba.training.amp`: the precision by hardware (``amp: "auto"``), autocast, the
  :class:`Autocast` wrapper of a teacher, grad scaler;
- :mod:`~medmamba.training.export`: norm fusion, TorchScript / ONNX export and verification;
- :mod:`~medmamba.training.distributed`: the end of a multi-process (DDP) run;
- :mod:`~medmamba.training.thread_grant`: cores a launcher grants a running training process
  (:class:`ThreadGrantHandler`);
- :mod:`~medmamba.training.checkpoint`: loading weights from the checkpoints all of these write, and
  stacking several seeds' checkpoints into one ensemble checkpoint.

Every class takes plain constructor arguments, so a MONAI bundle config can build it with
``"_target_": "medmamba.training.<Name>"``.
"""

from __future__ import annotations

from .amp import (
    AMP_CHOICES,
    Autocast,
    Precision,
    autocast,
    check_amp,
    create_grad_scaler,
    resolve_amp_dtype,
    resolve_precision,
)
from .checkpoint import ensemble_state_dict, extract_state_dict, load_weights, save_ensemble_checkpoint
from .distillation import (
    DistillationLoss,
    SegmentationDistillationLoss,
    SoftTargetCrossEntropy,
    hard_distillation,
    pixelwise_distillation,
    soft_distillation,
    split_student_output,
)
from .distributed import end_distributed_run
from .ema import EMAHandler, ModelEMA, ema_decay
from .export import DYNAMIC_CHECK_BATCHES, ExportMismatchError, ExportResult, FusedExportHandler, export_fused, verify_export
from .iteration import DistillationIteration
from .mixup import MixupCutmix, SegmentationCutMix, rand_box, smooth_one_hot
from .optim import NO_DECAY_NAMES, create_optimizer, param_groups, scale_lr
from .schedule import WarmupCosineLR, warmup_cosine_factor
from .teacher import Teacher, TeacherLogitCache, batch_ids
from .thread_grant import ThreadGrantHandler, grant_threads, read_thread_grant

__all__ = [
    "DYNAMIC_CHECK_BATCHES",
    "AMP_CHOICES",
    "Autocast",
    "DistillationIteration",
    "DistillationLoss",
    "EMAHandler",
    "ExportMismatchError",
    "ExportResult",
    "FusedExportHandler",
    "MixupCutmix",
    "ModelEMA",
    "NO_DECAY_NAMES",
    "Precision",
    "SegmentationCutMix",
    "SegmentationDistillationLoss",
    "SoftTargetCrossEntropy",
    "Teacher",
    "TeacherLogitCache",
    "ThreadGrantHandler",
    "WarmupCosineLR",
    "autocast",
    "batch_ids",
    "check_amp",
    "create_grad_scaler",
    "create_optimizer",
    "ema_decay",
    "end_distributed_run",
    "ensemble_state_dict",
    "export_fused",
    "extract_state_dict",
    "grant_threads",
    "hard_distillation",
    "load_weights",
    "param_groups",
    "pixelwise_distillation",
    "rand_box",
    "read_thread_grant",
    "resolve_amp_dtype",
    "resolve_precision",
    "save_ensemble_checkpoint",
    "scale_lr",
    "smooth_one_hot",
    "soft_distillation",
    "split_student_output",
    "verify_export",
    "warmup_cosine_factor",
]
