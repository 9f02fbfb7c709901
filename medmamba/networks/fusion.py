"""Normalisation-layer fusion: fold every BatchNorm into its neighbouring convolution or linear layer."""

from __future__ import annotations

import copy

import torch
from torch import nn

__all__ = ["fuse_norms"]


def _fuse_children(module: nn.Module) -> None:
    for name, child in list(module.named_children()):
        fuse = getattr(child, "fuse", None)
        if callable(fuse):
            setattr(module, name, fuse())
        else:
            _fuse_children(child)


@torch.no_grad()
def fuse_norms(model: nn.Module, inplace: bool = False, strict: bool = True) -> nn.Module:
    """Fold every BatchNorm of a MobileMamba-style network for inference.

    Every sub-module with a ``fuse()`` method (``ConvBN`` → ``Conv2d`` with bias, ``BNLinear`` →
    ``Linear``, including both conv-BN pairs of MK-DeConv and any decoder built from them) is
    replaced by what that method returns. The result is in eval mode and gives the same outputs as
    the eval-mode input model (within float32 rounding), with fewer layers to run.

    Args:
        model: the network (any mode; fusion uses the BatchNorm running statistics).
        inplace: modify ``model`` itself instead of a deep copy.
        strict: raise when a BatchNorm is left unfolded (set False for networks, such as some MONAI
            ones, whose BatchNorms are not in fusable units).

    Returns:
        The fused network, in eval mode.

    Raises:
        ValueError: a BatchNorm is left that no ``fuse()`` covers (the network holds a BatchNorm
            outside the fusable units).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}.")
    fused = model if inplace else copy.deepcopy(model)
    fused.eval()
    fuse = getattr(fused, "fuse", None)
    if callable(fuse):
        fused = fuse()
    else:
        _fuse_children(fused)
    left = [n for n, m in fused.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if left and strict:
        raise ValueError(f"fuse_norms left BatchNorm layers it cannot fold: {left}.")
    return fused.eval()
