"""Small helpers shared by the notebooks in this folder: where the data and the figures are, and
which test case to look at. Not part of the medmamba package.

Environment variables:

* ``MEDMAMBA_DATA_DIR`` - the default data set (``data/default`` of the repository by default;
  build it with ``python -m medmamba.data make-default``).
* ``MEDMAMBA_NOTEBOOK_OUT`` - where the figures are saved as PNG (``notebooks/outputs`` by default).
* ``MEDMAMBA_BUNDLES_DIR`` - the MONAI bundles (``bundles`` of the repository by default).
* ``MEDMAMBA_NOTEBOOK_QUICK=1`` - small sizes and few iterations (the test suite sets it).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

__all__ = ["ROOT", "Notebook", "pick_test_case"]


def _find_root() -> Path:
    here = Path(__file__).resolve().parent
    for p in (here, *here.parents):
        if (p / "pyproject.toml").is_file() and (p / "medmamba").is_dir():
            return p
    return here.parent


#: The repository root.
ROOT = _find_root()


class Notebook:
    """Paths of one notebook: ``data`` (the default data set), ``out`` (PNG folder), ``bundles``;
    :meth:`save` writes a figure as ``<prefix>_<name>.png`` and returns it (shown inline when it is
    the cell's last expression)."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.quick = os.environ.get("MEDMAMBA_NOTEBOOK_QUICK", "0") == "1"
        self.data = Path(os.environ.get("MEDMAMBA_DATA_DIR", ROOT / "data" / "default")).resolve()
        self.out = Path(os.environ.get("MEDMAMBA_NOTEBOOK_OUT", ROOT / "notebooks" / "outputs")).resolve()
        self.bundles = Path(os.environ.get("MEDMAMBA_BUNDLES_DIR", ROOT / "bundles")).resolve()
        if not (self.data / "datalist_segmentation.json").is_file():
            raise FileNotFoundError(
                f"no default data set in {self.data}: build it with `python -m medmamba.data make-default` "
                "(or point MEDMAMBA_DATA_DIR to one)"
            )
        self.out.mkdir(parents=True, exist_ok=True)
        self.saved: list[Path] = []

    def datalist(self, kind: str = "segmentation") -> dict[str, Any]:
        """A datalist of the default data set with absolute paths (``segmentation``,
        ``classification_volume`` or ``classification_slice``)."""
        data = json.loads((self.data / f"datalist_{kind}.json").read_text())
        for split in ("training", "validation", "test"):
            for item in data.get(split, []):
                for key in ("image", "label", "lesion", "dicom"):
                    if isinstance(item.get(key), str):
                        item[key] = str(self.data / item[key])
        return data

    def save(self, fig: Any, name: str, dpi: int = 100) -> Any:
        """Save ``fig`` as ``<out>/<prefix>_<name>.png`` and return it."""
        path = self.out / f"{self.prefix}_{name}.png"
        fig.savefig(path, dpi=dpi, bbox_inches="tight", facecolor="white")
        self.saved.append(path)
        return fig


def pick_test_case(nb: Notebook) -> dict[str, Any]:
    """The first test subject that has a DICOM series and a lesion (else the first with DICOM, else
    the first test subject), from the segmentation datalist."""
    test = nb.datalist("segmentation")["test"]
    if not test:
        raise ValueError(f"the data set in {nb.data} has no test subjects")
    labels = {d["id"]: d["label"] for d in nb.datalist("classification_volume")["test"]}
    for cond in (lambda d: "dicom" in d and labels.get(d["id"]) == 1, lambda d: "dicom" in d, lambda d: True):
        for item in test:
            if cond(item):
                return {**item, "has_lesion": labels.get(item["id"]) == 1}
    raise AssertionError("unreachable")
