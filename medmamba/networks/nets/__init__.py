"""Complete networks."""

from __future__ import annotations

from .mobilemamba import MOBILEMAMBA_VARIANTS, Downsample, MobileMamba, MobileMambaBlock, MobileMambaStage

__all__ = ["MOBILEMAMBA_VARIANTS", "Downsample", "MobileMamba", "MobileMambaBlock", "MobileMambaStage"]
