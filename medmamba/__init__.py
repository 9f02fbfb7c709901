"""medmamba: MobileMamba lightweight vision Mamba networks as a MONAI medical-imaging toolkit."""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
