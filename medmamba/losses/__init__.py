"""Losses of the medmamba recipes that MONAI does not provide."""

from __future__ import annotations

from .multiple_instance import LesionMILLoss

__all__ = ["LesionMILLoss"]
