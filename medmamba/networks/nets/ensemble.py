"""Seed ensembles: networks of one architecture trained from different seeds, outputs averaged.

A network trained on a small data set makes confident mistakes that depend on its seed (the order
of the batches, the augmentation draws, the initial weights), while what it has really learnt is
shared by the seeds. Averaging the outputs of a few such networks (a "deep ensemble",
Lakshminarayanan et al., NeurIPS 2017) keeps the shared part and dilutes the rest. The lesion
classification bundle deploys a two-seed ensemble of its lesion-map classifier this way.

:func:`medmamba.training.save_ensemble_checkpoint` stacks the members' checkpoints into the state
dict of a :class:`MeanEnsemble` (member ``i`` under ``networks.i.``), so that the ensemble is one
checkpoint file, loaded, fused and exported like a single network.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .lesion_map import declared_in_channels

__all__ = ["MeanEnsemble"]


class MeanEnsemble(nn.Module):
    """The mean of the outputs of several networks that take the same input.

    Each member must return one tensor of the same shape (logits: the mean of logits, i.e. of the
    lesion log-odds for :class:`~medmamba.networks.LesionMapClassifier`). TorchScript scripts it.

    Args:
        networks: the members (at least one); usually one architecture trained with different seeds.

    Attributes:
        in_channels: the first member's ``in_channels`` (``-1`` if it has none), read by
            :class:`medmamba.inferers.SliceStackInferer`'s channel check.

    Raises:
        ValueError: ``networks`` is empty.
        TypeError: a member is not an ``nn.Module``.
    """

    def __init__(self, networks: Sequence[nn.Module]) -> None:
        super().__init__()
        members = list(networks)
        if not members:
            raise ValueError("networks must hold at least one network, got an empty sequence.")
        for i, net in enumerate(members):
            if not isinstance(net, nn.Module):
                raise TypeError(f"networks[{i}] must be an nn.Module, got {type(net).__name__}.")
        self.networks = nn.ModuleList(members)
        self.in_channels = declared_in_channels(members[0])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The mean over the members of ``member(x)``."""
        outputs: list[torch.Tensor] = []
        for net in self.networks:
            outputs.append(net(x))
        return torch.stack(outputs).mean(0)
