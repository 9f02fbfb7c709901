"""Building blocks of MobileMamba."""

from __future__ import annotations

from .conv_bn import BNLinear, ChannelAffine, ConvBN, Residual, drop_path_mask, fuse_bn_linear, fuse_conv_bn
from .depthwise_conv import DepthwiseConv2d, small_map_depthwise_conv2d
from .feed_forward import FeedForward
from .mk_deconv import MKDeConv
from .mrffi import MRFFI, split_channels
from .patch_merging import PatchMerging, SqueezeExcite, make_divisible
from .selective_scan_2d import SelectiveScan2D
from .wavelet import inverse_wavelet_transform, wavelet_filters, wavelet_transform
from .wte_mamba import WTEMamba

__all__ = [
    "BNLinear",
    "ChannelAffine",
    "ConvBN",
    "DepthwiseConv2d",
    "FeedForward",
    "MKDeConv",
    "MRFFI",
    "PatchMerging",
    "Residual",
    "SelectiveScan2D",
    "SqueezeExcite",
    "WTEMamba",
    "drop_path_mask",
    "fuse_bn_linear",
    "fuse_conv_bn",
    "inverse_wavelet_transform",
    "make_divisible",
    "small_map_depthwise_conv2d",
    "split_channels",
    "wavelet_filters",
    "wavelet_transform",
]
