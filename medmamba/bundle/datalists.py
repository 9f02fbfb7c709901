"""Training lists of a bundle config: the data set's own, and optional extra lists beside it."""

from __future__ import annotations

import os
from typing import Any

__all__ = ["training_list"]


def training_list(
    datalist: str | os.PathLike[str],
    base_dir: str | os.PathLike[str],
    extra_datalists: str | os.PathLike[str] | list[str | os.PathLike[str]] | None = None,
) -> list[dict[str, Any]]:
    """The ``training`` list of a datalist followed by the ``training`` lists of extra datalists.

    Each extra list's relative paths are resolved against its own folder (the real heads of
    :mod:`medmamba.data.real_heads` lie in ``data/real_heads``, the default data in ``data/default``).

    Args:
        datalist: The data set's datalist (MONAI's decathlon format).
        base_dir: Folder the data set's relative paths are under.
        extra_datalists: One datalist, several, or ``None`` / ``""`` / ``[]`` for none.

    Returns:
        The items, with absolute paths.

    Raises:
        FileNotFoundError: If an extra datalist is missing (with the command that makes the real heads' one).
    """
    from monai.data import load_decathlon_datalist

    items = load_decathlon_datalist(str(datalist), True, "training", base_dir=str(base_dir))
    if extra_datalists is None or extra_datalists == "":
        extras: list[str | os.PathLike[str]] = []
    elif isinstance(extra_datalists, (str, os.PathLike)):
        extras = [extra_datalists]
    else:
        extras = list(extra_datalists)
    for extra in extras:
        if not os.path.isfile(extra):
            raise FileNotFoundError(
                f"extra_datalists: {os.fspath(extra)!r} does not exist; the real heads' datalist is made by "
                "'python -m medmamba.data make-real-heads' (the bundles train without it unless --real_heads_datalist names it)"
            )
        items = items + load_decathlon_datalist(str(extra), True, "training", base_dir=os.path.dirname(os.path.abspath(extra)))
    return items
