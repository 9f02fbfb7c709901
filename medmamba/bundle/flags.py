"""On/off variables of a bundle config as given on the command line.

``python -m monai.bundle run ... --refine_tissue false`` passes the *string* ``"false"`` (the
command line is parsed by ``fire``, which reads only ``False`` as a boolean), and ``$not @x`` of a
non-empty string is ``False``: the switch would stay on. Configs read such variables through
:func:`flag`, which accepts the spellings a user types and refuses anything else.
"""

from __future__ import annotations

from typing import Any

__all__ = ["all_off", "flag"]

_TRUE = {"true", "yes", "on", "1"}
_FALSE = {"false", "no", "off", "0"}


def flag(value: Any, name: str = "value") -> bool:
    """A config switch as a bool.

    Args:
        value: ``True``/``False``, ``0``/``1``, or a string among true/yes/on/1 and false/no/off/0
            (any case).
        name: The variable's name, for the error message.

    Returns:
        The switch.

    Raises:
        ValueError: For any other value.
    """
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
        return value.strip().lower() in _TRUE
    raise ValueError(f"{name} must be true or false, got {value!r}.")


def all_off(**switches: Any) -> bool:
    """Whether every named config switch is off (for a ``_disabled_`` shared by several features).

    Args:
        switches: The switches by variable name, each read by :func:`flag`.

    Returns:
        ``True`` when none is on.

    Raises:
        ValueError: For a switch that is not true or false, or no switch at all.
    """
    if not switches:
        raise ValueError("all_off needs at least one switch, e.g. all_off(refine_tissue=@refine_tissue).")
    return not any(flag(value, name) for name, value in switches.items())
