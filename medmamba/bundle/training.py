"""Values a bundle's training config derives from its settings: the warm-up length, the class
weights of the dense loss, and the dense teacher a lesion-map student distils from."""

from __future__ import annotations

import os

import torch
from torch import nn

from medmamba.training import Autocast, Precision, Teacher

__all__ = ["class_weights", "dense_teacher", "warmup_steps"]


def warmup_steps(warmup_epochs: float, max_epochs: int, steps_per_epoch: int) -> int:
    """The iterations of a learning-rate warm-up of ``warmup_epochs`` epochs, at least one short of the run.

    The warm-up is cut so that it ends before the last iteration (a cosine schedule needs at least
    one step after it), which matters only for runs shorter than the warm-up (tests, smoke runs).

    Args:
        warmup_epochs: length of the warm-up in epochs (may be fractional).
        max_epochs: epochs of the run.
        steps_per_epoch: iterations per epoch (``len`` of the training data loader).

    Returns:
        ``min(int(warmup_epochs * steps_per_epoch), max_epochs * steps_per_epoch - 1)``.

    Raises:
        ValueError: If ``warmup_epochs`` is negative, or ``max_epochs`` or ``steps_per_epoch`` is not
            a positive integer.
    """
    if not warmup_epochs >= 0:
        raise ValueError(f"warmup_epochs must be >= 0, got {warmup_epochs!r}.")
    for name, value in (("max_epochs", max_epochs), ("steps_per_epoch", steps_per_epoch)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}.")
    return min(int(warmup_epochs * steps_per_epoch), max_epochs * steps_per_epoch - 1)


def class_weights(
    num_classes: int, weighted_class: int, weight: float, device: torch.device | str | None = None
) -> torch.Tensor:
    """Per-class loss weights: ``weight`` for one class, 1 for every other.

    Args:
        num_classes: number of classes (the loss's channels).
        weighted_class: index of the class that gets ``weight``.
        weight: its weight.
        device: device of the returned tensor.

    Returns:
        A float32 tensor of shape ``(num_classes,)``, e.g. ``[1, 1, 1, 1, 10]`` for 5 classes, class 4
        weighted 10.

    Raises:
        ValueError: If ``num_classes`` is not a positive integer or ``weighted_class`` is not one of
            ``range(num_classes)``.
    """
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}.")
    if isinstance(weighted_class, bool) or weighted_class not in range(num_classes):
        raise ValueError(f"weighted_class must be one of range({num_classes}), got {weighted_class!r}.")
    return torch.tensor([weight if c == weighted_class else 1.0 for c in range(num_classes)], device=device)


def dense_teacher(
    network: nn.Module,
    checkpoint: str | os.PathLike,
    device: torch.device | str,
    amp: bool | str | torch.dtype | Precision | None = None,
) -> Autocast:
    """The dense network of a trained lesion-map teacher, frozen and in its own precision.

    ``network`` (a :class:`~medmamba.networks.LesionMapClassifier` around a segmentation network)
    is moved to ``device`` and loaded from ``checkpoint`` as a frozen, eval-mode
    :class:`~medmamba.training.Teacher`; the segmentation network inside it is returned wrapped in
    :class:`~medmamba.training.Autocast`, so a pixel-wise distillation reads its dense logits.

    Args:
        network: the teacher's architecture, with a ``network`` attribute (its dense network).
        checkpoint: the teacher's weights (as ``train_teacher.json`` saves them).
        device: the device to run the teacher on.
        amp: the teacher's precision (see :class:`~medmamba.training.Autocast`).

    Returns:
        The frozen dense network in an :class:`~medmamba.training.Autocast`.

    Raises:
        TypeError: If ``network`` is not an ``nn.Module`` or has no ``network`` sub-module.
    """
    if not isinstance(network, nn.Module):
        raise TypeError(f"network must be an nn.Module, got {type(network).__name__}.")
    if not isinstance(getattr(network, "network", None), nn.Module):
        raise TypeError(f"network must wrap a dense network in its 'network' attribute, got {type(network).__name__}.")
    teacher = Teacher(network.to(device), checkpoint=checkpoint)
    return Autocast(teacher.network.network, amp=amp)
