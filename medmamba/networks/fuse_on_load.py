"""Networks that fold their BatchNorms when their unfused weights are loaded (the deployable form).

The bundles train an unfused network and deploy it with its BatchNorms folded into the
convolutions. :class:`FuseOnLoad` folds them as soon as the unfused weights are loaded, so that
``python -m monai.bundle ckpt_export network_def`` (which loads the checkpoint into ``network_def``
and scripts it) writes TorchScript of the *fused* network. :class:`FusedMobileMamba`,
:class:`FusedMobileMambaSeg` and :class:`FusedLesionMapClassifier` wrap the package's architectures
and take their own arguments, so bundle overrides such as ``--network_def#variant s6`` work in the
inference configs as in the training ones.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any, ClassVar

import torch
from torch import nn

from medmamba.networks.checkpoint_file import find_state_dict
from medmamba.networks.fusion import fuse_norms
from medmamba.networks.nets import MobileMamba
from medmamba.networks.nets.ensemble import MeanEnsemble
from medmamba.networks.nets.lesion_map import LesionMapClassifier, declared_in_channels
from medmamba.networks.nets.segmentation import MobileMambaSeg

__all__ = ["FuseOnLoad", "FusedLesionMapClassifier", "FusedMobileMamba", "FusedMobileMambaSeg", "has_batchnorm"]


def has_batchnorm(network: nn.Module) -> bool:
    """Whether ``network`` holds a BatchNorm layer (of any dimension)."""
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in network.modules())


class FuseOnLoad(nn.Module):
    """A network that folds its BatchNorms when its unfused weights are loaded.

    ``load_state_dict`` takes the *unfused* network's state dict (flat, a ``CheckpointSaver`` dict
    with ``"model"``, an EMA or DDP one; see :func:`medmamba.networks.checkpoint_file.find_state_dict`), loads it
    into a fresh copy of the unfused network and replaces :attr:`network` by its fused version
    (:func:`medmamba.networks.fuse_norms`). Before any load, :attr:`network` is the unfused network
    in eval mode. Scripting the wrapper after loading gives TorchScript of the fused network; that is
    what ``ckpt_export network_def`` does when ``network_def`` is a ``FuseOnLoad``.

    The wrapper stays in eval mode (a fused network has no BatchNorm statistics to update) and
    returns one tensor: the wrapped network's output, or its first element for networks returning
    several outputs.

    Args:
        network: the unfused network (kept as the template of every load).
        strict: ``strict`` of ``fuse_norms`` (``False`` for networks with BatchNorms outside
            fusable units, e.g. MONAI's DenseNet121); networks without BatchNorm are used as they are.

    Attributes:
        in_channels: the wrapped network's ``in_channels`` (``-1`` if unknown), read by
            :class:`medmamba.inferers.SliceStackInferer`'s channel check.
        fuse_strict: the ``strict`` argument.
        is_fused: whether weights were loaded and fused.
    """

    __jit_unused_properties__: ClassVar[list[str]] = ["template"]

    def __init__(self, network: nn.Module, strict: bool = True) -> None:
        super().__init__()
        if not isinstance(network, nn.Module):
            raise TypeError(f"network must be an nn.Module, got {type(network).__name__}.")
        # the template is not a registered sub-module: it stays out of state_dict() and TorchScript
        self.__dict__["_template"] = copy.deepcopy(network).cpu()
        self.network = network.eval()
        self.fuse_strict = bool(strict)
        self.is_fused = False
        self.in_channels = declared_in_channels(network)

    @property
    def template(self) -> nn.Module:
        """The unfused architecture (untrained copy)."""
        return self.__dict__["_template"]

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False) -> Any:
        """Load unfused weights into a copy of the template and fuse it (see the class doc)."""
        if not isinstance(state_dict, Mapping):
            raise TypeError(f"state_dict must be a mapping, got {type(state_dict).__name__}.")
        state = find_state_dict(state_dict)
        device = next(iter(self.network.parameters()), torch.empty(0)).device
        unfused = copy.deepcopy(self.template)
        result = unfused.load_state_dict(state, strict=strict)
        has_bn = has_batchnorm(unfused)
        fused = fuse_norms(unfused, inplace=True, strict=self.fuse_strict) if has_bn else unfused.eval()
        self.network = fused.to(device)
        self.is_fused = has_bn
        return result

    def train(self, mode: bool = True) -> FuseOnLoad:
        """Stay in eval mode: a fused network has no BatchNorm statistics to update."""
        return super().train(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The wrapped network's output (the first one, for networks returning several)."""
        out = self.network(x)
        if isinstance(out, torch.Tensor):
            return out
        return out[0]


class FusedMobileMamba(FuseOnLoad):
    """:class:`FuseOnLoad` around ``MobileMamba(variant, **kwargs)``.

    Takes ``MobileMamba``'s own arguments, so ``--network_def#variant s6`` works in
    ``inference.json`` / ``evaluate.json`` as in ``train.json``.
    """

    def __init__(self, variant: str = "t2", strict: bool = True, **kwargs: Any) -> None:
        super().__init__(MobileMamba(variant, **kwargs), strict=strict)


class FusedMobileMambaSeg(FuseOnLoad):
    """:class:`FuseOnLoad` around ``MobileMambaSeg(variant, **kwargs)``.

    Takes ``MobileMambaSeg``'s own arguments, so a bundle override such as ``--network_def#variant s6``
    works in ``inference.json`` as in ``train.json``.
    """

    def __init__(self, variant: str | None = "t2", strict: bool = True, **kwargs: Any) -> None:
        super().__init__(MobileMambaSeg(variant, **kwargs), strict=strict)


class FusedLesionMapClassifier(FuseOnLoad):
    """:class:`FuseOnLoad` around ``LesionMapClassifier(MobileMambaSeg(variant, **kwargs))``.

    The deployable form of the bundle's lesion-map classifier: it takes ``MobileMambaSeg``'s own
    arguments (so ``--network_def#variant t4`` works in ``inference.json`` / ``evaluate.json`` as in
    ``train.json``) plus the pooling of :class:`medmamba.networks.LesionMapClassifier`, loads the
    unfused checkpoint the training saves (the classifier's state dict) and folds every BatchNorm.
    With ``ensemble_size`` > 1 it is a :class:`medmamba.networks.MeanEnsemble` of that many such
    classifiers (a seed ensemble: the mean of their pooled lesion log-odds), loaded from the
    checkpoint :func:`medmamba.training.save_ensemble_checkpoint` writes.

    Args:
        variant: MobileMamba variant of the encoder.
        lesion_channel: index of the lesion class in the segmentation output.
        pooling: ``"max"``, ``"topk"`` or ``"mean"`` (see ``LesionMapClassifier``).
        top_k: pixels averaged by ``"topk"``.
        readout: ``"image"`` or ``"brain"``, where the lesion map is pooled (see ``LesionMapClassifier``).
        background_channel: index of the background class, for ``readout="brain"``.
        strict: ``strict`` of ``fuse_norms``.
        ensemble_size: number of ensemble members (1: a single classifier).
        kwargs: the other ``MobileMambaSeg`` arguments (``in_channels``, ``out_channels``, ...).

    Raises:
        ValueError: ``ensemble_size`` is not a positive integer.
    """

    def __init__(
        self,
        variant: str = "t2",
        lesion_channel: int = -1,
        pooling: str = "max",
        top_k: int = 16,
        strict: bool = True,
        ensemble_size: int = 1,
        readout: str = "image",
        background_channel: int = 0,
        **kwargs: Any,
    ) -> None:
        if isinstance(ensemble_size, bool) or not isinstance(ensemble_size, int) or ensemble_size < 1:
            raise ValueError(f"ensemble_size must be a positive integer, got {ensemble_size!r}.")
        members = [
            LesionMapClassifier(
                MobileMambaSeg(variant, **kwargs), lesion_channel, pooling, top_k, readout, background_channel
            )
            for _ in range(ensemble_size)
        ]
        super().__init__(members[0] if ensemble_size == 1 else MeanEnsemble(members), strict=strict)
