"""MobileMamba networks, the selective scan, norm fusion, checkpoint conversion and export."""

from __future__ import annotations

from .convert import adapt_input_channels, convert_official_state_dict, emulate_reference_cpu_merge
from .fuse_on_load import FusedLesionMapClassifier, FusedMobileMamba, FusedMobileMambaSeg, FuseOnLoad
from .fusion import fuse_norms
from .nets import MOBILEMAMBA_VARIANTS, MobileMamba, MobileMambaBlock, load_official_checkpoint
from .nets.ensemble import MeanEnsemble
from .nets.lesion_map import LesionMapClassifier
from .nets.segmentation import MobileMambaSeg
from .dynamic_export import compile_ahead_of_time, export_dynamic, export_onnx_dynamic, load_compiled, spatial_multiple
from .onnx_runtime import OnnxRuntimeNetwork
from .quantization import quantize_onnx_int8
from .selective_scan import selective_scan
from .selective_scan_chunked import selective_scan_chunked

__all__ = [
    "MOBILEMAMBA_VARIANTS",
    "FuseOnLoad",
    "FusedLesionMapClassifier",
    "FusedMobileMamba",
    "FusedMobileMambaSeg",
    "LesionMapClassifier",
    "MeanEnsemble",
    "MobileMamba",
    "MobileMambaBlock",
    "MobileMambaSeg",
    "OnnxRuntimeNetwork",
    "adapt_input_channels",
    "convert_official_state_dict",
    "emulate_reference_cpu_merge",
    "fuse_norms",
    "load_official_checkpoint",
    "compile_ahead_of_time",
    "export_dynamic",
    "load_compiled",
    "export_onnx_dynamic",
    "quantize_onnx_int8",
    "selective_scan",
    "selective_scan_chunked",
    "spatial_multiple",
]
