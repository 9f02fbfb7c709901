"""Dictionary and array transforms for medical volumes."""

from __future__ import annotations

from .slice_stack import SliceStackd, neighbour_slice_indices, stack_slices

__all__ = ["SliceStackd", "neighbour_slice_indices", "stack_slices"]
