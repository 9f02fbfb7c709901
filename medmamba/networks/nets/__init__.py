"""Complete networks."""

from __future__ import annotations

from .mobilemamba import (
    MOBILEMAMBA_VARIANTS,
    Downsample,
    MobileMamba,
    MobileMambaBlock,
    MobileMambaStage,
    load_official_checkpoint,
)

__all__ = [
    "MOBILEMAMBA_VARIANTS",
    "Downsample",
    "MobileMamba",
    "MobileMambaBlock",
    "MobileMambaStage",
    "load_official_checkpoint",
]
