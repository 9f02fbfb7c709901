"""Scan discovery: the cases under an input path (NIfTI files, DICOM files and DICOM series folders).

:func:`find_scans` turns what a user passes as ``--input_path`` (a NIfTI file, a DICOM file, a
DICOM series folder, or a folder of any of them) into datalist items ``{"image": path, "id": case
id}`` for :func:`medmamba.data.run_batch` and the bundles' inference runs.
"""

from __future__ import annotations

import os
from pathlib import Path

from medmamba.data.loading import is_nifti_path

__all__ = ["find_scans", "scan_stem"]

#: File-name endings dropped from case ids.
_ID_SUFFIXES: tuple[str, ...] = (".nii.gz", ".nii", ".dcm")


def scan_stem(name: str | os.PathLike[str]) -> str:
    """The file name of a scan without its NIfTI or DICOM suffix (``sub-018/image.nii.gz`` -> ``image``).

    Args:
        name: a file name or path.

    Returns:
        The name without ``.nii.gz``, ``.nii`` or ``.dcm`` (matched case-insensitively).
    """
    base = Path(name).name
    for suffix in _ID_SUFFIXES:
        if base.lower().endswith(suffix):
            return base[: -len(suffix)]
    return base


def _is_dicom_file(path: Path) -> bool:
    """Whether ``path`` starts with the DICOM preamble and ``DICM`` magic."""
    try:
        with open(path, "rb") as f:
            f.seek(128)
            return f.read(4) == b"DICM"
    except OSError:
        return False


def _has_dicom(folder: Path) -> bool:
    """Whether ``folder`` directly holds a DICOM file (``.dcm``/``.ima``/no suffix, or DICOM magic)."""
    for entry in folder.iterdir():
        if (
            entry.is_file()
            and not is_nifti_path(entry)
            and not entry.name.startswith(".")
            and (entry.suffix.lower() in (".dcm", ".ima", "") or _is_dicom_file(entry))
        ):
            return True
    return False


def _is_series_folder(folder: Path) -> bool:
    """A folder holding DICOM files and no NIfTI file: one series, one case."""
    return _has_dicom(folder) and not any(is_nifti_path(p) for p in folder.iterdir())


def _collect(folder: Path, found: list[Path], seen: set[str] | None = None) -> None:
    """Append the cases under ``folder`` to ``found``, in sorted order, skipping hidden entries and
    entering each real folder once (a folder link back up the tree is not a loop of cases)."""
    seen = set() if seen is None else seen
    real = os.path.realpath(folder)
    if real in seen:
        return
    seen.add(real)
    for entry in sorted(folder.iterdir()):
        if entry.name.startswith("."):
            continue
        if entry.is_file() and (is_nifti_path(entry) or _is_dicom_file(entry)):
            found.append(entry)
        elif entry.is_dir():
            if _is_series_folder(entry):
                found.append(entry)
            else:
                _collect(entry, found, seen)


def find_scans(input_path: str | os.PathLike[str] | None) -> list[dict[str, str]]:
    """The cases under ``input_path``: a NIfTI file, a DICOM file or series folder, or a folder of them.

    A folder that directly holds DICOM files (and no NIfTI file) is one series, one case. Otherwise
    every NIfTI file and DICOM file in it, and every sub-folder holding DICOM files, is a case, and
    other sub-folders are searched recursively; cases come in sorted order.

    Case ids: for a single case ``<parent folder>_<name>`` (``sub-018_dicom``,
    ``sub-018_image`` for ``sub-018/image.nii.gz``); for a folder of cases the path relative to
    it, ``_``-joined, without the NIfTI/DICOM suffix.

    Args:
        input_path: the input.

    Returns:
        ``[{"image": path, "id": case id}, ...]``.

    Raises:
        FileNotFoundError: ``input_path`` does not exist.
        ValueError: no ``input_path``, or no scan under it.
    """
    if input_path is None:
        raise ValueError("input_path is required: a NIfTI file, a DICOM series folder or a folder of them.")
    root = Path(input_path)
    if not root.exists():
        raise FileNotFoundError(
            f"input_path={str(root)!r} does not exist; expected a NIfTI file, a DICOM series folder or a folder of them."
        )
    if root.is_file() or _is_series_folder(root):
        parent = root.absolute().parent.name
        stem = scan_stem(root)
        return [{"image": str(root), "id": f"{parent}_{stem}" if parent else stem}]
    found: list[Path] = []
    _collect(root, found)
    if not found:
        raise ValueError(f"input_path={str(root)!r} holds no NIfTI file and no DICOM series.")
    cases = []
    for path in found:
        rel = path.relative_to(root).parts
        cases.append({"image": str(path), "id": "_".join([*rel[:-1], scan_stem(path)])})
    return cases
