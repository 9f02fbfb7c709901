"""MobileMamba: lightweight multi-receptive visual Mamba network (He et al., CVPR 2025).

The network is number-for-number the reference implementation's; only the module names differ
(``convert_official_state_dict`` maps the reference names, see :mod:`medmamba.networks.convert`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any, List, Optional, Tuple, Union

import torch
from torch import nn

from ..blocks import BNLinear, ConvBN, FeedForward, MRFFI, PatchMerging, Residual, SelectiveScan2D, drop_path_mask
from ..checkpoint_file import check_state_dict_keys, read_checkpoint
from ..convert import adapt_stem_channels, convert_official_state_dict, fit_classifier_heads, official_state_dict

__all__ = [
    "MOBILEMAMBA_VARIANTS",
    "Downsample",
    "MobileMamba",
    "MobileMambaBlock",
    "MobileMambaStage",
    "load_official_checkpoint",
]

logger = logging.getLogger(__name__)

_COMMON: dict[str, Any] = {
    "global_ratio": (0.8, 0.7, 0.6),
    "local_ratio": (0.2, 0.2, 0.3),
    "kernels": (7, 5, 3),
    "ssm_ratio": 2.0,
}

#: The paper's variants (ImageNet-1K); ``img_size`` is the resolution each was trained at.
MOBILEMAMBA_VARIANTS: dict[str, dict[str, Any]] = {
    "t2": {"embed_dim": (144, 272, 368), "depth": (1, 2, 2), "drop_path": 0.0, "img_size": 192, **_COMMON},
    "t4": {"embed_dim": (176, 368, 448), "depth": (1, 2, 2), "drop_path": 0.0, "img_size": 192, **_COMMON},
    "s6": {"embed_dim": (192, 384, 448), "depth": (1, 2, 2), "drop_path": 0.0, "img_size": 224, **_COMMON},
    "b1": {"embed_dim": (200, 376, 448), "depth": (2, 3, 2), "drop_path": 0.03, "img_size": 256, **_COMMON},
    "b2": {"embed_dim": (200, 376, 448), "depth": (2, 3, 2), "drop_path": 0.03, "img_size": 384, **_COMMON},
    "b4": {"embed_dim": (200, 376, 448), "depth": (2, 3, 2), "drop_path": 0.03, "img_size": 512, **_COMMON},
}


class MobileMambaBlock(nn.Module):
    """One MobileMamba block of width ``E``.

    ``y = FFN1(DW1(MRFFI(FFN0(DW0(x)))))`` with every unit residual, and ``out = x + DropPath(y)``.

    Args:
        channels: block width ``E``.
        global_ratio: MRFFI share of global (WTE-Mamba) channels.
        local_ratio: MRFFI share of local (MK-DeConv) channels.
        kernel_size: MRFFI kernel size.
        ssm_ratio: SS2D expansion ratio.
        drop_path: stochastic-depth rate of the whole block.
        scan_backend: selective-scan backend.
    """

    def __init__(
        self,
        channels: int,
        global_ratio: float,
        local_ratio: float,
        kernel_size: int,
        ssm_ratio: float = 2.0,
        drop_path: float = 0.0,
        scan_backend: str = "auto",
    ) -> None:
        super().__init__()
        self.dw_conv0 = Residual(ConvBN(channels, channels, 3, groups=channels, bn_weight_init=0.0))
        self.ffn0 = Residual(FeedForward(channels, 2 * channels))
        self.mixer = Residual(MRFFI(channels, global_ratio, local_ratio, kernel_size, ssm_ratio, scan_backend))
        self.dw_conv1 = Residual(ConvBN(channels, channels, 3, groups=channels, bn_weight_init=0.0))
        self.ffn1 = Residual(FeedForward(channels, 2 * channels))
        self.drop_path = float(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.ffn1(self.dw_conv1(self.mixer(self.ffn0(self.dw_conv0(x)))))
        if self.training and self.drop_path > 0:
            return x + y * drop_path_mask(x, self.drop_path)
        return x + y


class Downsample(nn.Module):
    """Transition between stages: local refinement, PatchMerging (stride 2), local refinement.

    ``DW`` (residual depthwise conv-BN 3×3) and ``FFN`` (residual) at the input width, PatchMerging to
    the output width, then ``DW`` and ``FFN`` at the output width.

    Args:
        in_channels: width of the previous stage.
        out_channels: width of the next stage.
    """

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.dw_conv_pre = Residual(ConvBN(in_channels, in_channels, 3, groups=in_channels))
        self.ffn_pre = Residual(FeedForward(in_channels, 2 * in_channels))
        self.patch_merging = PatchMerging(in_channels, out_channels)
        self.dw_conv_post = Residual(ConvBN(out_channels, out_channels, 3, groups=out_channels))
        self.ffn_post = Residual(FeedForward(out_channels, 2 * out_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.ffn_pre(self.dw_conv_pre(x))
        x = self.patch_merging(x)
        return self.ffn_post(self.dw_conv_post(x))


class MobileMambaStage(nn.Module):
    """A stage: an optional :class:`Downsample` followed by MobileMamba blocks."""

    def __init__(self, downsample: nn.Module | None, blocks: Sequence[nn.Module]) -> None:
        super().__init__()
        self.downsample = downsample if downsample is not None else nn.Identity()
        self.blocks = nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(self.downsample(x))


#: Parameters of :class:`~medmamba.networks.blocks.SelectiveScan2D` that get no weight decay
#: (see :meth:`MobileMamba.no_weight_decay`).
_SCAN_NO_WEIGHT_DECAY = ("A_log", "D", "dt_proj_bias")


def _check_num_classes(num_classes: Any) -> None:
    if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 0:
        raise ValueError(f"num_classes={num_classes!r} is not valid; expected an integer ≥ 0.")


def _feature_take_indices(num_features: int, indices: Optional[Union[int, Sequence[int]]]) -> List[int]:
    """timm's ``feature_take_indices``: the last ``n`` for an int, all for ``None``, else the given
    indices (negative ones counted from the end), in ascending order."""
    if indices is None:
        indices = num_features
    if isinstance(indices, int) and not isinstance(indices, bool):
        if not 0 < indices <= num_features:
            raise ValueError(
                f"indices={indices!r} is out of range; an int takes the last n stages, expected 1 to {num_features}."
            )
        return list(range(num_features - indices, num_features))
    if not isinstance(indices, Sequence) or not all(isinstance(i, int) and not isinstance(i, bool) for i in indices):
        raise ValueError(f"indices={indices!r} is not valid; expected None, an int or a sequence of ints.")
    if len(indices) == 0:
        raise ValueError(f"indices={indices!r} is empty; expected at least one stage index.")
    take = set()
    for i in indices:
        if not -num_features <= i < num_features:
            raise ValueError(
                f"indices={list(indices)!r} holds {i}, out of range; expected stage indices from "
                f"{-num_features} to {num_features - 1}."
            )
        take.add(i % num_features)
    return sorted(take)


def _triple(name: str, value: Any, kind: type) -> tuple:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        value = (value,) * 3
    if not isinstance(value, Sequence) or len(value) != 3 or not all(isinstance(v, (int, float)) for v in value):
        raise ValueError(f"{name}={value!r} is not valid; expected a sequence of 3 numbers, one per stage.")
    return tuple(kind(v) for v in value)


class MobileMamba(nn.Module):
    """MobileMamba classification network (He et al., "MobileMamba: Lightweight Multi-Receptive Visual
    Mamba Network", CVPR 2025).

    A stride-16 convolutional stem and three stages (strides 16, 32, 64) of MobileMamba blocks, whose
    MRFFI token mixer combines a wavelet-enhanced selective scan (WTE-Mamba), multi-kernel depthwise
    convolutions (MK-DeConv) and identity channels; a BatchNorm-Linear head on the pooled features.

    Args:
        variant: one of ``t2, t4, s6, b1, b2, b4`` (any case) to fill the configuration, or ``None``
            to give every configuration argument explicitly.
        spatial_dims: number of spatial dimensions; only 2 is supported (use the 2.5D adapters in
            :mod:`medmamba.inferers` for volumes).
        in_channels: input channels (1 for CT/MR, 3 for RGB, ``2k+1`` for 2.5D stacks).
        num_classes: classes of the head; 0 makes a feature extractor returning pooled features.
        distillation: add the distillation head ``head_dist`` (training returns ``(cls, dist)``,
            eval returns their mean).
        embed_dim: widths ``(E0, E1, E2)`` of the three stages.
        depth: number of blocks per stage.
        global_ratio: per-stage MRFFI share of global channels.
        local_ratio: per-stage MRFFI share of local channels.
        kernels: per-stage MRFFI kernel sizes.
        ssm_ratio: SS2D expansion ratio.
        drop_path: maximum stochastic-depth rate (linearly increasing over blocks).
        scan_backend: selective-scan backend (``"auto"``, ``"parallel"``, ``"reference"``, ``"cuda"``).
        channels_last_stem: in eval mode on the CPU, run the convolutional stem on a channels-last
            copy of an NCHW input and hand the stages an NCHW map again. oneDNN ran the stem's
            strided 3x3 convolutions, which have few channels on large maps, 1.0-1.6x faster in that
            layout with AVX-512 kernels and 0.9-1.3x with AVX2 kernels on a Zen 4 CPU
            (``benchmarks/bench_networks.py --stem-layout``; the whole network within a few per
            cent); the outputs are the same within float32 rounding. Training, CUDA and
            channels-last inputs are left as they are; ``False`` runs the stem as given.

    Raises:
        ValueError: unknown variant, ``spatial_dims != 2``, a missing or malformed configuration.
    """

    def __init__(
        self,
        variant: str | None = None,
        *,
        spatial_dims: int = 2,
        in_channels: int = 3,
        num_classes: int = 1000,
        distillation: bool = False,
        embed_dim: Sequence[int] | None = None,
        depth: Sequence[int] | None = None,
        global_ratio: Sequence[float] | None = None,
        local_ratio: Sequence[float] | None = None,
        kernels: Sequence[int] | None = None,
        ssm_ratio: float | None = None,
        drop_path: float | None = None,
        scan_backend: str = "auto",
        channels_last_stem: bool = True,
    ) -> None:
        super().__init__()
        if not isinstance(channels_last_stem, bool):
            raise TypeError(
                f"channels_last_stem must be a bool, got {channels_last_stem!r} ({type(channels_last_stem).__name__})."
            )
        self.channels_last_stem = channels_last_stem
        if spatial_dims != 2:
            raise ValueError(
                f"spatial_dims={spatial_dims!r} is not supported; MobileMamba is a 2D network (spatial_dims=2). "
                "Run it on volumes slice by slice or as 2.5D with medmamba.inferers.SliceStackInferer."
            )
        if not isinstance(in_channels, int) or isinstance(in_channels, bool) or in_channels < 1:
            raise ValueError(f"in_channels={in_channels!r} is not valid; expected a positive integer.")
        _check_num_classes(num_classes)
        config: dict[str, Any] = {}
        if variant is not None:
            key = str(variant).lower()
            if key not in MOBILEMAMBA_VARIANTS:
                raise ValueError(
                    f"variant={variant!r} is unknown; expected one of {sorted(MOBILEMAMBA_VARIANTS)} (any case) or None."
                )
            config = dict(MOBILEMAMBA_VARIANTS[key])
        overrides = {
            "embed_dim": embed_dim,
            "depth": depth,
            "global_ratio": global_ratio,
            "local_ratio": local_ratio,
            "kernels": kernels,
            "ssm_ratio": ssm_ratio,
            "drop_path": drop_path,
        }
        config.update({k: v for k, v in overrides.items() if v is not None})
        missing = [k for k in overrides if k not in config]
        if missing:
            raise ValueError(
                f"variant=None requires every configuration argument; missing: {', '.join(missing)}. "
                f"Give a variant (one of {sorted(MOBILEMAMBA_VARIANTS)}) or all of them."
            )
        embed = _triple("embed_dim", config["embed_dim"], int)
        depths = _triple("depth", config["depth"], int)
        g_ratio = _triple("global_ratio", config["global_ratio"], float)
        l_ratio = _triple("local_ratio", config["local_ratio"], float)
        kernel = _triple("kernels", config["kernels"], int)
        if any(e < 8 or e % 8 for e in embed):
            raise ValueError(f"embed_dim={embed} is not valid; expected widths that are positive multiples of 8.")
        if any(d < 1 for d in depths):
            raise ValueError(f"depth={depths} is not valid; expected at least one block per stage.")

        self.variant = None if variant is None else str(variant).lower()
        self.spatial_dims = spatial_dims
        self.in_channels = in_channels
        self.num_classes = num_classes
        self.distillation = bool(distillation)
        self.embed_dim = embed
        self.config = {
            "embed_dim": embed,
            "depth": depths,
            "global_ratio": g_ratio,
            "local_ratio": l_ratio,
            "kernels": kernel,
            "ssm_ratio": float(config["ssm_ratio"]),
            "drop_path": float(config["drop_path"]),
        }

        e0 = embed[0]
        self.stem = nn.Sequential(
            ConvBN(in_channels, e0 // 8, 3, 2, 1),
            nn.ReLU(),
            ConvBN(e0 // 8, e0 // 4, 3, 2, 1),
            nn.ReLU(),
            ConvBN(e0 // 4, e0 // 2, 3, 2, 1),
            nn.ReLU(),
            ConvBN(e0 // 2, e0, 3, 2, 1),
        )
        rates = torch.linspace(0, float(config["drop_path"]), sum(depths)).tolist()
        stages = []
        start = 0
        for i in range(3):
            blocks = [
                MobileMambaBlock(
                    embed[i], g_ratio[i], l_ratio[i], kernel[i], float(config["ssm_ratio"]), rates[start + j], scan_backend
                )
                for j in range(depths[i])
            ]
            start += depths[i]
            down = Downsample(embed[i - 1], embed[i]) if i > 0 else None
            stages.append(MobileMambaStage(down, blocks))
        self.stages = nn.ModuleList(stages)
        self.head = BNLinear(embed[2], num_classes) if num_classes > 0 else nn.Identity()
        self.head_dist = (
            BNLinear(embed[2], num_classes) if (self.distillation and num_classes > 0) else nn.Identity()
        )

    def _check_input(self, x: torch.Tensor) -> None:
        if x.dim() != 4:
            raise ValueError(
                f"MobileMamba expects a 4D input (batch, channels, height, width), got a {x.dim()}D tensor of "
                f"shape {list(x.shape)}; for volumes use medmamba.inferers.SliceStackInferer."
            )
        if x.shape[1] != self.in_channels:
            raise ValueError(
                f"input has {x.shape[1]} channels but the network was built with in_channels={self.in_channels}."
            )

    def forward_stem(self, x: torch.Tensor) -> torch.Tensor:
        """The stride-16 convolutional stem (see ``channels_last_stem`` for the layout it runs in).

        Args:
            x: input ``(B, in_channels, H, W)``.

        Returns:
            The stem's map ``(B, E0, H/16, W/16)``, in the memory layout of ``x``.
        """
        nchw_input = x.is_contiguous() and (x.shape[1] == 1 or not x.is_contiguous(memory_format=torch.channels_last))
        if not (self.channels_last_stem and not self.training and x.device.type == "cpu" and nchw_input):
            return self.stem(x)
        # a one-channel input is channels-last already, so convert after the first convolution as well
        x = x.contiguous(memory_format=torch.channels_last)
        for layer in self.stem:
            x = layer(x).contiguous(memory_format=torch.channels_last)
        return x.contiguous()

    def forward_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The three stage outputs (strides 16, 32, 64; widths ``embed_dim``).

        Args:
            x: input ``(B, in_channels, H, W)``, any ``H``, ``W``.

        Returns:
            ``[stage1, stage2, stage3]`` feature maps.
        """
        self._check_input(x)
        x = self.forward_stem(x)
        features: list[torch.Tensor] = []
        for stage in self.stages:
            x = stage(x)
            features.append(x)
        return features

    def forward_head(self, features: torch.Tensor) -> Union[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """Classify the last stage's feature map (global average pool, BN-Linear head)."""
        x = torch.nn.functional.adaptive_avg_pool2d(features, 1).flatten(1)
        if self.distillation and self.num_classes > 0:
            cls, dist = self.head(x), self.head_dist(x)
            if self.training and not torch.jit.is_scripting():
                return cls, dist
            return (cls + dist) / 2
        return self.head(x)

    def forward(self, x: torch.Tensor) -> Union[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """Logits ``(B, num_classes)`` (pooled features when ``num_classes=0``); with the distillation
        head, ``(cls, dist)`` in training mode and their mean in eval mode."""
        return self.forward_head(self.forward_features(x)[-1])

    def forward_intermediates(
        self,
        x: torch.Tensor,
        indices: Optional[Union[int, Sequence[int]]] = None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ) -> Union[List[torch.Tensor], Tuple[torch.Tensor, List[torch.Tensor]]]:
        """The stage outputs, in timm's ``forward_intermediates`` convention.

        Args:
            x: input ``(B, in_channels, H, W)``.
            indices: the stages (0, 1, 2) to return: an int ``n`` takes the last ``n``, a sequence
                the stages it names (negative indices count from the end), ``None`` all three.
            norm: accepted for timm's signature; MobileMamba has no norm layer between the last stage
                and the head (the head's BatchNorm acts on the pooled features), so it changes nothing.
            stop_early: stop after the last stage requested instead of running all three.
            output_fmt: layout of the feature maps; only ``"NCHW"``.
            intermediates_only: return the list of stage outputs only.

        Returns:
            ``(final, intermediates)``: the output of the last stage run (the input of
            :meth:`forward_head` unless ``stop_early`` stopped before stage 3) and the requested
            stage outputs in stage order; with ``intermediates_only`` the list alone.

        Raises:
            ValueError: ``output_fmt`` is not ``"NCHW"``, ``indices`` is out of range or malformed,
                or the input does not fit the network.
        """
        if output_fmt != "NCHW":
            raise ValueError(f"output_fmt={output_fmt!r} is not supported; MobileMamba's features are 'NCHW'.")
        take = _feature_take_indices(len(self.stages), indices)
        last = take[-1] if stop_early else len(self.stages) - 1
        self._check_input(x)
        x = self.forward_stem(x)
        intermediates: List[torch.Tensor] = []
        for i, stage in enumerate(self.stages):
            if i > last:
                break
            x = stage(x)
            if i in take:
                intermediates.append(x)
        if intermediates_only:
            return intermediates
        return x, intermediates

    def get_classifier(self) -> nn.Module:
        """The classifier head (timm convention)."""
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None) -> None:
        """Replace the classifier head(s) by freshly initialised ones for ``num_classes`` classes.

        The stem and stages keep their weights; the distillation head, if the network has one, is
        re-created too. ``num_classes=0`` leaves a feature extractor returning pooled features.

        Args:
            num_classes: classes of the new head (0 for none).
            global_pool: timm's argument; only ``None`` or ``"avg"`` (the pooling MobileMamba has).

        Raises:
            ValueError: ``num_classes`` is not an integer ≥ 0, or ``global_pool`` is another pooling.
        """
        _check_num_classes(num_classes)
        if global_pool not in (None, "avg"):
            raise ValueError(f"global_pool={global_pool!r} is not supported; MobileMamba pools by average ('avg').")
        reference = self.stem[0].conv.weight
        width = self.embed_dim[2]
        self.num_classes = num_classes
        self.head = (BNLinear(width, num_classes) if num_classes > 0 else nn.Identity()).to(
            device=reference.device, dtype=reference.dtype
        )
        self.head_dist = (BNLinear(width, num_classes) if (self.distillation and num_classes > 0) else nn.Identity()).to(
            device=reference.device, dtype=reference.dtype
        )

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        """Names of the parameters that get no weight decay (timm convention): every selective scan's
        ``A_log``, ``D`` and ``dt_proj_bias``, whose decay would pull the scan's dynamics towards
        ``A = −1``, ``D = 0`` and a zero time step (:func:`medmamba.training.optim.param_groups`
        exempts the same parameters by name)."""
        names: set[str] = set()
        for prefix, module in self.named_modules():
            if isinstance(module, SelectiveScan2D):
                names.update(
                    f"{prefix}.{name}"
                    for name, _ in module.named_parameters(recurse=False)
                    if name in _SCAN_NO_WEIGHT_DECAY
                )
        return names

    @classmethod
    def from_official_checkpoint(
        cls,
        path: str,
        variant: str,
        *,
        in_channels: int = 3,
        num_classes: int = 1000,
        distillation: bool | None = None,
        ema: bool = False,
        **kwargs: Any,
    ) -> "MobileMamba":
        """Build a variant and load a released checkpoint of the reference implementation.

        See :func:`load_official_checkpoint` for the details (safe loading with
        ``weights_only=True``, stem adaptation to ``in_channels``, head re-creation).

        Args:
            path: the ``.pth`` file (a bare state dict, or a dict with ``"net"`` / ``"net_E"``).
            variant: the variant the checkpoint was trained as.
            in_channels: input channels of the new network; the stem is adapted if it differs.
            num_classes: classes of the new network; the head is re-created if it differs.
            distillation: keep a distillation head; ``None`` keeps it when the checkpoint has one.
            ema: prefer the EMA weights (``"net_E"``) when the checkpoint holds both.
            kwargs: further constructor arguments.

        Returns:
            The network with the checkpoint's weights.
        """
        return load_official_checkpoint(
            path, variant, in_channels=in_channels, num_classes=num_classes, distillation=distillation, ema=ema, **kwargs
        )


def load_official_checkpoint(
    path: str,
    variant: str,
    *,
    in_channels: int = 3,
    num_classes: int = 1000,
    distillation: bool | None = None,
    ema: bool = False,
    **kwargs: Any,
) -> MobileMamba:
    """Build a :class:`MobileMamba` variant and load a released reference checkpoint into it.

    The file is read with ``torch.load(weights_only=True)``, so an untrusted checkpoint cannot run
    code; the reference's names are converted (:func:`~medmamba.networks.convert_official_state_dict`).
    The stem is adapted to ``in_channels`` (:func:`~medmamba.networks.adapt_input_channels`) and the
    classifier head(s) re-created when ``num_classes`` differs from the checkpoint's; both are logged.

    Args:
        path: checkpoint file.
        variant: MobileMamba variant name.
        in_channels: input channels of the new network.
        num_classes: classes of the new network.
        distillation: keep a distillation head; ``None`` keeps it when the checkpoint has one.
        ema: prefer the EMA weights (``"net_E"``).
        kwargs: further :class:`MobileMamba` arguments.

    Returns:
        The network, in eval mode, with the checkpoint's weights.

    Raises:
        ValueError: the file holds no state dict, or keys are missing/unexpected or shapes differ
            (all of them listed).
    """
    state_dict = convert_official_state_dict(official_state_dict(read_checkpoint(path), ema, str(path)))
    if distillation is None:
        distillation = any(k.startswith("head_dist.") for k in state_dict)
    model = MobileMamba(variant, in_channels=in_channels, num_classes=num_classes, distillation=distillation, **kwargs)
    target = model.state_dict()
    state_dict = adapt_stem_channels(state_dict, in_channels)
    state_dict = fit_classifier_heads(state_dict, target, num_classes=num_classes, distillation=distillation)
    check_state_dict_keys(state_dict, target, source=f"checkpoint {str(path)!r}", target=f"MobileMamba variant={variant!r}")
    model.load_state_dict(state_dict, strict=True)
    return model.eval()
