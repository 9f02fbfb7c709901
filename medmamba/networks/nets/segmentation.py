"""MobileMambaSeg: semantic segmentation on the MobileMamba encoder with a lightweight FPN decoder.

The encoder is :class:`~medmamba.networks.MobileMamba` itself (held as ``self.encoder``, without
its classifier head), so released ImageNet checkpoints load into it through
:func:`~medmamba.networks.convert_official_state_dict`. Its stages run at strides 16/32/64, too
coarse alone for thin structures, so the decoder also takes the stem's stride-2/4/8 activations as
skips, merged top-down as in a feature pyramid network (the paper pairs MobileMamba with Semantic
FPN), each merge smoothed by a depthwise-separable convolution. By default (``output_stride=1``) a
seventh, full-resolution level takes the input image itself through a 3×3 conv-BN, so the logits
are predicted at the input's own resolution: structures one or two pixels wide (sulcal CSF in a
2 mm brain MR) survive, which logits at stride 2 upsampled cannot represent (the ground truth
itself, pooled to stride 2 and upsampled, loses 40 % of the Dice of the CSF of the default data).
``output_stride=2`` gives the six-level decoder with logits upsampled from stride 2.

Any input size works: the input is padded (bottom/right) to a multiple of 64 inside and the logits
are cropped back, so odd and rectangular images give logits of their own size.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, List, Optional, Union

import torch
import torch.nn.functional as F
from torch import nn

from ..blocks import ConvBN
from ..checkpoint_file import check_state_dict_keys, read_checkpoint
from ..convert import adapt_stem_channels, convert_official_state_dict, official_state_dict
from .mobilemamba import MobileMamba

__all__ = ["DepthwiseSeparableConv", "FPNDecoder", "FPNLevel", "MobileMambaSeg"]

#: Total stride of the encoder: inputs are padded to a multiple of it.
ENCODER_STRIDE = 64
_PAD_MODES = ("constant", "replicate", "reflect")
_UPSAMPLE_MODES = ("bilinear", "nearest")
_OUTPUT_STRIDES = (1, 2)
#: Decoder widths at strides 1, 2, 4, 8, 16, 32, 64 (the last six for ``output_stride=2``).
_DEFAULT_DECODER_CHANNELS = (16, 16, 32, 64, 96, 128, 128)


class DepthwiseSeparableConv(nn.Sequential):
    """Depthwise 3×3 conv-BN, ReLU, pointwise 1×1 conv-BN, ReLU (both conv-BN units fusable).

    Args:
        in_channels: input channels.
        out_channels: output channels (default: ``in_channels``).
        kernel_size: depthwise kernel size.
    """

    def __init__(self, in_channels: int, out_channels: int | None = None, kernel_size: int = 3) -> None:
        out_channels = in_channels if out_channels is None else out_channels
        super().__init__(
            ConvBN(in_channels, out_channels=in_channels, kernel_size=kernel_size, groups=in_channels),
            nn.ReLU(inplace=True),
            ConvBN(in_channels, out_channels=out_channels, kernel_size=1),
            nn.ReLU(inplace=True),
        )


class FPNLevel(nn.Module):
    """One decoder level: lateral 1×1 conv-BN of the encoder feature, plus the upsampled coarser
    decoder output (projected to this width), smoothed by a depthwise-separable convolution.

    Args:
        in_channels: width of the encoder feature at this level.
        channels: decoder width at this level.
        coarser_channels: decoder width of the next coarser level, ``None`` for the coarsest.
        upsample_mode: ``"bilinear"`` or ``"nearest"`` upsampling of the coarser output.
        lateral_kernel_size: kernel of the lateral conv-BN (1; 3 for the full-resolution level,
            whose "feature" is the raw image).
    """

    def __init__(
        self,
        in_channels: int,
        channels: int,
        coarser_channels: int | None,
        upsample_mode: str = "bilinear",
        lateral_kernel_size: int = 1,
    ) -> None:
        super().__init__()
        self.lateral = ConvBN(in_channels, out_channels=channels, kernel_size=lateral_kernel_size)
        if coarser_channels is None or coarser_channels == channels:
            self.project: nn.Module = nn.Identity()
        else:
            self.project = ConvBN(coarser_channels, out_channels=channels, kernel_size=1)
        self.smooth = DepthwiseSeparableConv(channels)
        self.upsample_mode = upsample_mode
        self.align_corners: Optional[bool] = False if upsample_mode == "bilinear" else None

    def forward(self, feature: torch.Tensor, coarser: Optional[torch.Tensor]) -> torch.Tensor:
        x = self.lateral(feature)
        if coarser is not None:
            up = F.interpolate(
                self.project(coarser),
                size=[x.shape[-2], x.shape[-1]],
                mode=self.upsample_mode,
                align_corners=self.align_corners,
            )
            x = x + up
        return self.smooth(x)


class FPNDecoder(nn.Module):
    """Top-down feature-pyramid decoder over encoder features ordered fine to coarse.

    Args:
        in_channels: widths of the encoder features, finest first.
        channels: decoder widths, one per level, finest first.
        upsample_mode: ``"bilinear"`` or ``"nearest"``.
        lateral_kernel_sizes: kernel of each level's lateral conv-BN, finest first (default all 1).
    """

    def __init__(
        self,
        in_channels: Sequence[int],
        channels: Sequence[int],
        upsample_mode: str = "bilinear",
        lateral_kernel_sizes: Sequence[int] | None = None,
    ) -> None:
        super().__init__()
        if len(in_channels) != len(channels):
            raise ValueError(
                f"channels={tuple(channels)} must give one width per encoder level ({len(in_channels)} levels)."
            )
        n = len(in_channels)
        kernels = (1,) * n if lateral_kernel_sizes is None else tuple(lateral_kernel_sizes)
        if len(kernels) != n:
            raise ValueError(
                f"lateral_kernel_sizes={kernels} must give one kernel size per encoder level ({n} levels)."
            )
        # stored coarse to fine, the order in which they run
        self.levels = nn.ModuleList(
            FPNLevel(in_channels[i], channels[i], channels[i + 1] if i + 1 < n else None, upsample_mode, kernels[i])
            for i in reversed(range(n))
        )

    def forward(self, features: List[torch.Tensor]) -> List[torch.Tensor]:
        """Decode; returns the level outputs fine to coarse (the same order as ``features``)."""
        n = len(features)
        outputs: List[torch.Tensor] = []
        coarser: Optional[torch.Tensor] = None
        i = 0
        for level in self.levels:
            coarser = level(features[n - 1 - i], coarser)
            outputs.append(coarser)
            i += 1
        outputs.reverse()
        return outputs


def _widths(name: str, value: Any, count: int) -> tuple[int, ...]:
    if isinstance(value, int) and not isinstance(value, bool):
        value = (value,) * count
    if (
        not isinstance(value, Sequence)
        or len(value) != count
        or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value)
    ):
        raise ValueError(f"{name}={value!r} is not valid; expected a positive int or {count} positive ints.")
    return tuple(value)


class MobileMambaSeg(nn.Module):
    """MobileMamba encoder with a lightweight FPN decoder for 2D semantic segmentation.

    Encoder levels (for input ``H×W``, padded to a multiple of 64): with ``output_stride=1`` the
    padded image itself (stride 1, lateral 3×3 conv-BN), then the stem's ReLU activations at
    strides 2, 4, 8 (widths ``E0/8, E0/4, E0/2``) and the three stage outputs at strides 16, 32, 64
    (widths ``embed_dim``). The decoder merges them coarse to fine (lateral conv-BN, upsampled
    coarser level, depthwise-separable 3×3 smoothing) and predicts logits at ``output_stride`` with a
    1×1 convolution; with ``output_stride=2`` they are upsampled bilinearly to the input size.

    With ``deep_supervision=True`` and in training mode the network returns a list: the full-size
    logits first, then auxiliary logits from the next three coarser decoder levels (strides 2, 4, 8
    with ``output_stride=1``; 4, 8, 16 with 2), each upsampled to the input size (the order and
    shapes :class:`monai.losses.DeepSupervisionLoss` takes, which weights the first output most). In
    eval mode it returns the logits tensor only.

    Every conv-BN is a :class:`~medmamba.networks.blocks.ConvBN`, so
    :func:`~medmamba.networks.fuse_norms` folds the decoder's BatchNorms too; the network scripts
    with TorchScript and exports to ONNX.

    Args:
        variant: MobileMamba variant of the encoder (``t2, t4, s6, b1, b2, b4``), or ``None`` with
            every configuration argument given in ``encoder_kwargs``.
        spatial_dims: 2 only (run volumes through :class:`medmamba.inferers.SliceStackInferer`).
        in_channels: input channels (``modalities × (2k + 1)`` for 2.5D stacks).
        out_channels: number of classes (logit channels).
        deep_supervision: return auxiliary outputs in training (see above).
        decoder_channels: decoder widths, finest first: at strides 1, 2, 4, 8, 16, 32, 64 with
            ``output_stride=1`` (7 widths), at strides 2 … 64 with ``output_stride=2`` (6 widths); one
            int for all. ``None`` (default) gives ``(16, 16, 32, 64, 96, 128, 128)`` resp.
            ``(16, 32, 64, 96, 128, 128)``: the high-resolution levels stay narrow, they carry
            boundary detail, not semantics, and dominate the decoder's memory traffic on the CPU.
        output_stride: stride of the predicted logits: 1 (default, full resolution) or 2 (the
            six-level decoder of the segmentation bundle up to version 0.5 and of the
            classification bundle's lesion-map network; logits upsampled bilinearly).
        pad_mode: how the input is padded to a multiple of 64: ``"replicate"`` (default),
            ``"constant"`` (zeros) or ``"reflect"`` (needs the padding to be smaller than the input).
        upsample_mode: top-down upsampling in the decoder, ``"bilinear"`` or ``"nearest"``.
        encoder_kwargs: further :class:`~medmamba.networks.MobileMamba` arguments (``embed_dim``,
            ``depth``, ``global_ratio``, ``local_ratio``, ``kernels``, ``ssm_ratio``, ``drop_path``,
            ``scan_backend``).

    Raises:
        ValueError: invalid arguments (the encoder's own checks included).

    Example::

        net = MobileMambaSeg("t2", in_channels=3, out_channels=4)   # 2.5D, k=1, 4 classes
        net.load_encoder_state_dict(official_state_dict)            # ImageNet weights, stem adapted
        logits = net(torch.randn(2, 3, 97, 131))                    # (2, 4, 97, 131)
    """

    def __init__(
        self,
        variant: str | None = "t2",
        *,
        spatial_dims: int = 2,
        in_channels: int = 1,
        out_channels: int = 2,
        deep_supervision: bool = False,
        decoder_channels: int | Sequence[int] | None = None,
        output_stride: int = 1,
        pad_mode: str = "replicate",
        upsample_mode: str = "bilinear",
        **encoder_kwargs: Any,
    ) -> None:
        super().__init__()
        if spatial_dims != 2:
            raise ValueError(
                f"spatial_dims={spatial_dims!r} is not supported; MobileMambaSeg is a 2D network (spatial_dims=2). "
                "Run it on volumes slice by slice or as 2.5D with medmamba.inferers.SliceStackInferer."
            )
        if not isinstance(out_channels, int) or isinstance(out_channels, bool) or out_channels < 1:
            raise ValueError(f"out_channels={out_channels!r} is not valid; expected a positive integer.")
        if pad_mode not in _PAD_MODES:
            raise ValueError(f"pad_mode={pad_mode!r} is not valid; expected one of {_PAD_MODES}.")
        if output_stride not in _OUTPUT_STRIDES or isinstance(output_stride, bool):
            raise ValueError(f"output_stride={output_stride!r} is not valid; expected one of {_OUTPUT_STRIDES}.")
        if upsample_mode not in _UPSAMPLE_MODES:
            raise ValueError(f"upsample_mode={upsample_mode!r} is not valid; expected one of {_UPSAMPLE_MODES}.")
        for key in ("num_classes", "distillation"):
            if key in encoder_kwargs:
                raise ValueError(f"{key} is not an argument of MobileMambaSeg (the encoder has no classifier head).")
        self.encoder = MobileMamba(
            variant, spatial_dims=spatial_dims, in_channels=in_channels, num_classes=0, **encoder_kwargs
        )
        e0, e1, e2 = self.encoder.embed_dim
        encoder_widths: tuple[int, ...] = (e0 // 8, e0 // 4, e0 // 2, e0, e1, e2)
        kernels: tuple[int, ...] = (1,) * len(encoder_widths)
        if output_stride == 1:
            encoder_widths = (in_channels, *encoder_widths)
            kernels = (3, *kernels)
        if decoder_channels is None:
            decoder_channels = _DEFAULT_DECODER_CHANNELS[-len(encoder_widths) :]
        widths = _widths("decoder_channels", decoder_channels, len(encoder_widths))
        self.decoder = FPNDecoder(encoder_widths, widths, upsample_mode, kernels)
        self.head = nn.Conv2d(widths[0], out_channels, kernel_size=1)
        self.aux_heads = nn.ModuleList(
            nn.Conv2d(widths[i], out_channels, kernel_size=1) for i in (1, 2, 3) if deep_supervision
        )
        self.variant = self.encoder.variant
        self.spatial_dims = spatial_dims
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.deep_supervision = bool(deep_supervision)
        self.decoder_channels = widths
        self.output_stride = int(output_stride)
        self.pad_mode = pad_mode
        self.pad_multiple: int = ENCODER_STRIDE

    def encode(self, x: torch.Tensor) -> List[torch.Tensor]:
        """The six encoder levels (strides 2, 4, 8, 16, 32, 64) of a padded input."""
        features: List[torch.Tensor] = []
        i = 0
        for module in self.encoder.stem:
            x = module(x)
            if i == 1 or i == 3 or i == 5:  # the ReLU outputs at strides 2, 4, 8
                features.append(x)
            i += 1
        for stage in self.encoder.stages:
            x = stage(x)
            features.append(x)
        return features

    def _upsample_crop(self, logits: torch.Tensor, size: List[int], height: int, width: int) -> torch.Tensor:
        if logits.shape[-2] != size[0] or logits.shape[-1] != size[1]:
            logits = F.interpolate(logits, size=size, mode="bilinear", align_corners=False)
        return logits[:, :, :height, :width]

    def forward(self, x: torch.Tensor) -> Union[torch.Tensor, List[torch.Tensor]]:
        """Segmentation logits ``(B, out_channels, H, W)`` for an input ``(B, in_channels, H, W)``.

        In training mode with ``deep_supervision`` a list ``[logits, aux_s4, aux_s8, aux_s16]``, all
        ``(B, out_channels, H, W)``.
        """
        if x.dim() != 4:
            raise ValueError(
                f"MobileMambaSeg expects a 4D input (batch, channels, height, width), got a {x.dim()}D tensor; "
                "for volumes use medmamba.inferers.SliceStackInferer."
            )
        if x.shape[1] != self.in_channels:
            raise ValueError(
                f"input has {x.shape[1]} channels but the network was built with in_channels={self.in_channels}."
            )
        height, width = x.shape[-2], x.shape[-1]
        multiple = self.pad_multiple
        pad_h = (multiple - height % multiple) % multiple
        pad_w = (multiple - width % multiple) % multiple
        if pad_h > 0 or pad_w > 0:
            x = F.pad(x, [0, pad_w, 0, pad_h], mode=self.pad_mode)
        size = [x.shape[-2], x.shape[-1]]
        features = self.encode(x)
        if self.output_stride == 1:
            features.insert(0, x)  # the full-resolution level: the image itself
        levels = self.decoder(features)
        logits = self._upsample_crop(self.head(levels[0]), size, height, width)
        if self.training and self.deep_supervision:
            outputs: List[torch.Tensor] = [logits]
            i = 1
            for head in self.aux_heads:
                outputs.append(self._upsample_crop(head(levels[i]), size, height, width))
                i += 1
            return outputs
        return logits

    def load_encoder_state_dict(
        self, state_dict: Mapping[str, torch.Tensor], strict: bool = True, adapt_stem: bool = True
    ) -> list[str]:
        """Load MobileMamba weights into the encoder.

        Accepts the reference implementation's names (released checkpoints) or medmamba's (a
        :class:`MobileMamba` ``state_dict()``); ``module.`` / ``encoder.`` prefixes are stripped and
        classifier-head keys dropped. A stem trained on another number of input channels (e.g. RGB
        ImageNet weights for a 1-channel CT or a ``2k+1``-slice stack) is adapted with
        :func:`~medmamba.networks.adapt_input_channels` when ``adapt_stem``.

        Args:
            state_dict: the weights.
            strict: raise on missing or unexpected encoder keys.
            adapt_stem: adapt the first convolution to ``in_channels`` when it differs.

        Returns:
            The names of the classifier-head keys that were dropped.

        Raises:
            ValueError: keys missing / unexpected (with ``strict``) or shapes that do not fit.
        """
        if not isinstance(state_dict, Mapping):
            raise TypeError(f"state_dict must be a mapping of names to tensors, got {type(state_dict).__name__}.")
        stripped = {k.removeprefix("encoder."): v for k, v in state_dict.items()}
        sd = convert_official_state_dict(stripped)
        dropped = sorted(k for k in sd if k.startswith(("head.", "head_dist.")))
        for key in dropped:
            sd.pop(key)
        if adapt_stem:
            sd = adapt_stem_channels(sd, self.in_channels)
        check_state_dict_keys(
            sd,
            self.encoder.state_dict(),
            source="state_dict",
            target=f"the MobileMambaSeg encoder (variant={self.variant!r}, embed_dim={self.encoder.embed_dim})",
            strict=strict,
            labels=("given", "encoder"),
        )
        self.encoder.load_state_dict(sd, strict=False)
        return dropped

    @classmethod
    def from_official_checkpoint(
        cls, path: str, variant: str, *, ema: bool = False, **kwargs: Any
    ) -> MobileMambaSeg:
        """Build a MobileMambaSeg whose encoder starts from a released MobileMamba checkpoint.

        The file is read with ``torch.load(weights_only=True)``. The decoder starts fresh.

        Args:
            path: the checkpoint (a bare state dict or a dict with ``"net"`` / ``"net_E"``).
            variant: the variant the checkpoint was trained as.
            ema: prefer the EMA weights (``"net_E"``) when present.
            kwargs: further :class:`MobileMambaSeg` arguments (``in_channels``, ``out_channels``, ...).

        Returns:
            The network (in training mode, ready for fine-tuning).

        Raises:
            ValueError: the file holds no state dict or it does not fit the variant.
        """
        state_dict = official_state_dict(read_checkpoint(path), ema, str(path))
        model = cls(variant, **kwargs)
        model.load_encoder_state_dict(state_dict)
        return model
