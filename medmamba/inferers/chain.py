"""Finding one inferer inside a predictor's chain of inferers.

The bundles build their predictors as chains: a :class:`medmamba.inferers.VolumeClassifier` holds the
mirror read-out, which holds the contrast-polarity check, which holds the brain extraction, each under
``.inferer``. A report that states what one link did to a scan (the brain it extracted, the contrast
polarity it chose) finds that link with :func:`find_inferer`.
"""

from __future__ import annotations

from typing import Any, TypeVar

__all__ = ["find_inferer"]

T = TypeVar("T")


def find_inferer(predictor: Any, kind: type[T], max_depth: int = 8) -> T | None:
    """The first object of type ``kind`` in the chain ``predictor``, ``predictor.inferer``,
    ``predictor.inferer.inferer``, ..., or ``None``.

    Args:
        predictor: where the chain starts (it may itself be of type ``kind``).
        kind: the inferer class looked for.
        max_depth: how many ``.inferer`` links are followed at most.

    Returns:
        The inferer, or ``None`` when the chain ends or ``max_depth`` links were followed without one.

    Raises:
        TypeError: ``kind`` is not a class.
        ValueError: ``max_depth`` is not a non-negative int.
    """
    if not isinstance(kind, type):
        raise TypeError(f"kind must be a class, got {type(kind).__name__} ({kind!r}).")
    if isinstance(max_depth, bool) or not isinstance(max_depth, int) or max_depth < 0:
        raise ValueError(f"max_depth must be a non-negative int, got {max_depth!r}.")
    link = predictor
    for _ in range(max_depth + 1):
        if isinstance(link, kind):
            return link
        link = getattr(link, "inferer", None)
        if link is None:
            return None
    return None
