"""Conversion of the reference implementation's checkpoints to medmamba's parameter names.

The released MobileMamba ImageNet checkpoints use the reference implementation's module names
(``patch_embed``, ``blocks1``…``blocks3``, ``mixer.m.attn.global_op.global_atten`` …). Following
timm's ``checkpoint_filter_fn`` pattern, those quirks live here and nowhere else. Everything here
works on state dicts and needs no network class: the networks' ``from_official_checkpoint``
(:func:`~medmamba.networks.nets.mobilemamba.load_official_checkpoint`) build the network and use
these functions, so the dependency runs one way, from the networks to the converter.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from typing import Any

import torch

from .blocks.selective_scan_2d import SelectiveScan2D
from .checkpoint_file import find_state_dict

__all__ = [
    "STEM_WEIGHT",
    "adapt_input_channels",
    "adapt_stem_channels",
    "convert_official_state_dict",
    "emulate_reference_cpu_merge",
    "fit_classifier_heads",
    "official_state_dict",
]

logger = logging.getLogger(__name__)

#: medmamba's name of the first convolution's weight, the one adapted to other input channels.
STEM_WEIGHT = "stem.0.conv.weight"

# Ordered (pattern, replacement) rules applied to the part of a key after its stage prefix,
# written with a leading dot so that every rule matches whole dot-delimited names.
_BLOCK_RULES: list[tuple[str, str]] = [
    (r"^\.dw0\.m\.", ".dw_conv0.branch."),
    (r"^\.dw1\.m\.", ".dw_conv1.branch."),
    (r"^\.ffn0\.m\.", ".ffn0.branch."),
    (r"^\.ffn1\.m\.", ".ffn1.branch."),
    (r"^\.mixer\.m\.attn\.", ".mixer.branch."),
]
_MODULE_RULES: list[tuple[str, str]] = [
    (r"\.pw1\.", ".fc1."),
    (r"\.pw2\.", ".fc2."),
    (r"global_op\.global_atten\.", "global_branch.ssm."),
    (r"global_op\.base_scale\.weight$", "global_branch.ssm_scale"),
    (r"global_op\.wavelet_convs\.0\.", "global_branch.wavelet_conv."),
    (r"global_op\.wavelet_scale\.0\.weight$", "global_branch.wavelet_scale"),
    (r"global_op\.", "global_branch."),
    (r"local_op\.dwconv3x3\.", "local_branch.spatial.conv."),
    (r"local_op\.bn1\.", "local_branch.spatial.bn."),
    (r"local_op\.dwconv1x1\.", "local_branch.pointwise.conv."),
    (r"local_op\.bn2\.", "local_branch.pointwise.bn."),
    (r"proj\.1\.", "proj."),
    (r"\.conv2d\.", ".dw_conv."),
    (r"\.dt_projs_weight$", ".dt_proj_weight"),
    (r"\.dt_projs_bias$", ".dt_proj_bias"),
    (r"\.A_logs$", ".A_log"),
    (r"\.Ds$", ".D"),
    (r"\.c\.(weight|bias)$", r".conv.\1"),
    (r"^\.conv1\.", ".expand."),
    (r"^\.conv2\.", ".dw_conv."),
    (r"^\.conv3\.", ".project."),
]
_DOWNSAMPLE_PARTS = {
    "0.0.m.": "dw_conv_pre.branch.",
    "0.1.m.": "ffn_pre.branch.",
    "2.0.m.": "dw_conv_post.branch.",
    "2.1.m.": "ffn_post.branch.",
}


def _rename(key: str) -> str:
    if key.startswith("patch_embed."):
        rest = key[len("patch_embed.") :]
        return "stem." + re.sub(r"\.c\.", ".conv.", rest)
    m = re.match(r"^(head|head_dist)\.(bn|l)\.(.*)$", key)
    if m:
        return f"{m.group(1)}.{'bn' if m.group(2) == 'bn' else 'linear'}.{m.group(3)}"
    m = re.match(r"^blocks([123])\.(\d+)\.(.*)$", key)
    if not m:
        return key
    stage, index, rest = int(m.group(1)), int(m.group(2)), m.group(3)
    if stage == 1:
        prefix = f"stages.0.blocks.{index}."
    elif index >= 3:
        prefix = f"stages.{stage - 1}.blocks.{index - 3}."
    elif index == 1:
        prefix = f"stages.{stage - 1}.downsample.patch_merging."
    else:
        full = f"{index}.{rest}"
        for old, new in _DOWNSAMPLE_PARTS.items():
            if full.startswith(old):
                prefix = f"stages.{stage - 1}.downsample.{new}"
                rest = full[len(old) :]
                break
        else:
            return key
    rest = "." + rest  # rules match on dot-delimited names
    for pattern, repl in _BLOCK_RULES + _MODULE_RULES:
        rest = re.sub(pattern, repl, rest)
    return prefix + rest[1:]


def convert_official_state_dict(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Map a reference-implementation MobileMamba state dict to :class:`MobileMamba` names.

    Keys already in medmamba's naming pass through unchanged, so converting twice is harmless.
    A ``module.`` prefix (DataParallel / DDP checkpoints) is stripped.

    Args:
        state_dict: the reference implementation's ``state_dict()`` (the ``"net"`` / ``"net_E"`` entry
            of a released checkpoint).

    Returns:
        A new dict with medmamba's keys and the same tensors.

    Raises:
        TypeError: ``state_dict`` is not a mapping of names to tensors.
    """
    if not isinstance(state_dict, Mapping):
        raise TypeError(f"state_dict must be a mapping of parameter names to tensors, got {type(state_dict).__name__}.")
    out: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        if not isinstance(key, str):
            raise TypeError(f"state_dict keys must be strings, got {key!r}.")
        name = key[len("module.") :] if key.startswith("module.") else key
        out[_rename(name)] = value
    return out


def adapt_input_channels(weight: torch.Tensor, in_channels: int) -> torch.Tensor:
    """Adapt the first convolution's weight ``(out, c, k, k)`` to ``in_channels`` input channels.

    One channel: the filters summed over the input channels (a grey image equals an RGB image with
    three equal channels). More channels: the filters repeated cyclically and rescaled by
    ``c / in_channels`` so that the response to a constant image is preserved.

    Args:
        weight: the pretrained stem weight.
        in_channels: the new number of input channels.

    Returns:
        The adapted weight ``(out, in_channels, k, k)``.
    """
    c = weight.shape[1]
    if in_channels == c:
        return weight
    if in_channels == 1:
        return weight.sum(dim=1, keepdim=True)
    reps = -(-in_channels // c)
    return weight.repeat(1, reps, 1, 1)[:, :in_channels] * (c / in_channels)


def official_state_dict(obj: Any, ema: bool, path: str) -> dict[str, torch.Tensor]:
    """The network weights inside a released checkpoint (the reference's layout).

    Args:
        obj: the loaded checkpoint: a bare state dict, or a dict with ``"net"`` / ``"net_E"`` (EMA)
            or ``"state_dict"`` / ``"model"`` entries.
        ema: prefer ``"net_E"`` when both are present.
        path: the file, for the error message.

    Returns:
        The state dict, reference names unchanged (see
        :func:`~medmamba.networks.checkpoint_file.find_state_dict`).

    Raises:
        ValueError: if no state dict is found.
    """
    entries = ("net_E", "net", "state_dict", "model") if ema else ("net", "net_E", "state_dict", "model")
    return find_state_dict(obj, entries, source=f"checkpoint {str(path)!r}")


def adapt_stem_channels(state_dict: Mapping[str, torch.Tensor], in_channels: int) -> dict[str, torch.Tensor]:
    """A state dict (medmamba's names) whose stem takes ``in_channels`` input channels.

    Args:
        state_dict: the weights; without a stem weight they are returned as they are.
        in_channels: input channels of the receiving network.

    Returns:
        A new dict with :data:`STEM_WEIGHT` adapted by :func:`adapt_input_channels` (logged).
    """
    out = dict(state_dict)
    if STEM_WEIGHT in out and out[STEM_WEIGHT].shape[1] != in_channels:
        logger.info("adapting the stem from %d to %d input channels", out[STEM_WEIGHT].shape[1], in_channels)
        out[STEM_WEIGHT] = adapt_input_channels(out[STEM_WEIGHT], in_channels)
    return out


def fit_classifier_heads(
    state_dict: Mapping[str, torch.Tensor],
    target: Mapping[str, torch.Tensor],
    *,
    num_classes: int,
    distillation: bool,
) -> dict[str, torch.Tensor]:
    """Fit a checkpoint's classifier head(s) to a network of ``num_classes`` classes.

    A head trained for another number of classes is replaced by the receiving network's own
    (freshly initialised) head; without ``distillation`` the checkpoint's ``head_dist`` is dropped;
    with it and a checkpoint that has none, ``head_dist`` starts from the head's weights. Each
    change is logged.

    Args:
        state_dict: the checkpoint's weights (medmamba's names).
        target: the receiving network's ``state_dict()``.
        num_classes: classes of the receiving network.
        distillation: whether the receiving network has a distillation head.

    Returns:
        A new dict.
    """
    sd = dict(state_dict)
    for head in ("head", "head_dist"):
        keys = [k for k in sd if k.startswith(head + ".")]
        ckpt_classes = sd[f"{head}.linear.weight"].shape[0] if f"{head}.linear.weight" in sd else None
        if head == "head_dist" and not distillation:
            for k in keys:
                sd.pop(k)
            continue
        if ckpt_classes is not None and ckpt_classes != num_classes:
            logger.info("re-creating %s for %d classes (checkpoint has %d)", head, num_classes, ckpt_classes)
            for k in keys:
                sd.pop(k)
            sd.update({k: v for k, v in target.items() if k.startswith(head + ".")})
        elif head == "head_dist" and not keys and distillation:
            logger.info("checkpoint has no distillation head; head_dist starts from the head's weights")
            sd.update({k.replace("head.", "head_dist.", 1): v for k, v in sd.items() if k.startswith("head.")})
    return sd


def emulate_reference_cpu_merge(model: torch.nn.Module, enable: bool = True) -> torch.nn.Module:
    """Reproduce (or undo) the reference implementation's batch-coupled SS2D merge on CPU.

    On the CPU, the reference implementation merges the two scan directions of its SS2D with a
    broadcast over the batch (VMamba's ``cross_merge_fwd`` for two directions), so that image ``i``
    receives ``Σ_j y0_j + B·reverse(y1_i)`` instead of ``y0_i + reverse(y1_i)``: its output depends
    on which other images share its batch. The fixtures written by that code (batch 2) carry this
    coupling. medmamba merges per image; this switch exists only to check number-for-number
    agreement with such fixtures. For a batch of one image both merges are identical.

    Args:
        model: a network holding :class:`~medmamba.networks.blocks.SelectiveScan2D` modules.
        enable: ``True`` to emulate the reference CPU merge, ``False`` to restore the per-image merge.

    Returns:
        ``model`` (modified in place).
    """
    found = 0
    for module in model.modules():
        if isinstance(module, SelectiveScan2D):
            module.batch_coupled_merge = bool(enable)
            found += 1
    if not found:
        raise ValueError(f"model {type(model).__name__} holds no SelectiveScan2D module to switch.")
    return model
