"""Checks of the integer settings that the lesion read-outs and rules share.

The mirror read-out, the lesion rules and the symmetry plane take counts of voxels (an erosion depth, a
cluster floor) and channel indices. One check gives them one meaning: a Python or numpy integer, not a
bool, zero or more, with an error that names the argument and the value.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["check_count"]


def check_count(name: str, value: Any) -> int:
    """``value`` as a Python ``int`` if it is an integer >= 0.

    Args:
        name: the argument's name, for the error message.
        value: the value given (``int`` or a numpy integer; ``bool`` is refused).

    Returns:
        ``int(value)``.

    Raises:
        ValueError: ``value`` is a bool, not an integer, or negative.
    """
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) or value < 0:
        raise ValueError(f"{name} must be an int >= 0, got {value!r}.")
    return int(value)
