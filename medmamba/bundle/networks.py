"""Placing a bundle's network on its device, and the names a bundle's reports give it."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

__all__ = ["network_description", "network_label", "network_variant", "to_device"]


def to_device(network: nn.Module, device: torch.device | str, channels_last: bool = False) -> nn.Module:
    """Move ``network`` to ``device``, in the channels-last memory format when asked.

    Args:
        network: the network to move (moved in place, as ``nn.Module.to`` does).
        device: the device to move it to.
        channels_last: whether to store 4D parameters and buffers channels-last
            (``torch.channels_last``), which convolutions on CUDA and on recent CPUs run faster on.

    Returns:
        ``network`` itself, on ``device``.

    Raises:
        TypeError: If ``network`` is not an ``nn.Module`` or ``channels_last`` is not a bool.
    """
    if not isinstance(network, nn.Module):
        raise TypeError(f"network must be an nn.Module, got {type(network).__name__}.")
    if not isinstance(channels_last, bool):
        raise TypeError(f"channels_last must be a bool, got {channels_last!r} ({type(channels_last).__name__}).")
    if channels_last:
        return network.to(device, memory_format=torch.channels_last)
    return network.to(device)


def _unwrapped(network: Any) -> Any:
    """The architecture a :class:`~medmamba.networks.FuseOnLoad` wraps (its ``template``), else ``network``."""
    return getattr(network, "template", network)


def network_variant(network: Any) -> str | None:
    """The variant name of a network or of the network it wraps, for a report.

    A :class:`~medmamba.networks.FuseOnLoad` is read through its unfused ``template``; the variant
    is that network's ``variant`` attribute, else the ``variant`` of its ``network`` attribute (a
    wrapper such as :class:`~medmamba.networks.LesionMapClassifier` around a MobileMamba).

    Args:
        network: the network (any object: one without a variant gives ``None``).

    Returns:
        The variant (e.g. ``"t2"``), or ``None`` when neither has one.
    """
    network = _unwrapped(network)
    return getattr(network, "variant", None) or getattr(getattr(network, "network", None), "variant", None)


def network_description(network: Any) -> str:
    """The class name of a network, and of the network it wraps, for a report.

    A :class:`~medmamba.networks.FuseOnLoad` is read through its unfused ``template``; a network
    with a ``network`` attribute is described as ``"Outer:Inner"``.

    Args:
        network: the network.

    Returns:
        e.g. ``"LesionMapClassifier:MobileMambaSeg"`` or ``"MobileMamba"``.
    """
    network = _unwrapped(network)
    inner = getattr(network, "network", None)
    return type(network).__name__ + ("" if inner is None else ":" + type(inner).__name__)


def network_label(network: Any) -> str:
    """The class name of a network and its variant, for a report.

    Unlike :func:`network_description`, the class is the network's own (a
    :class:`~medmamba.networks.FuseOnLoad` keeps its name); the variant is read from the network
    or the network it wraps (its ``network`` attribute), not from a ``template``.

    Args:
        network: the network.

    Returns:
        ``"<class>:<variant>"`` (e.g. ``"FusedMobileMambaSeg:t2"``), or the class name alone when
        there is no variant (e.g. ``"UNet"``).
    """
    variant = getattr(network, "variant", None) or getattr(getattr(network, "network", None), "variant", None)
    return type(network).__name__ + (f":{variant}" if variant else "")
