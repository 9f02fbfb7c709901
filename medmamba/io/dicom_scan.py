"""Finding the DICOM image series in a folder.

Every file under the folder is read (header only). Files are grouped by ``SeriesInstanceUID``.
Objects that are not images of the patient (RT structure sets, plans and doses, structured reports,
key-object selections, presentation states, segmentations, raw data, DICOMDIR) are skipped with a
:class:`DicomSkipWarning`, and so are files that are not DICOM at all. Nothing patient-identifying
is put in warnings, logs or error messages: series are described by UID, modality, series number,
file count, matrix size and plane.
"""

from __future__ import annotations

import logging
import os
import stat
import warnings
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from medmamba.io.errors import ScanLoadError
from medmamba.io.mr_acquisition import describe_acquisition, dicom_acquisition, mr_weighting

__all__ = [
    "NON_IMAGE_MODALITIES",
    "DicomInstance",
    "DicomSeries",
    "DicomSkipWarning",
    "FolderScan",
    "read_dicom_file",
    "scan_dicom_folder",
    "select_series",
]

logger = logging.getLogger(__name__)

#: Modalities of DICOM objects that are not images to segment or classify.
NON_IMAGE_MODALITIES: frozenset[str] = frozenset(
    {"RTSTRUCT", "RTPLAN", "RTRECORD", "RTDOSE", "SR", "KO", "PR", "REG", "RWV", "FID", "DOC", "SEG", "AU", "ECG"}
)
_DICOMDIR_SOP_CLASS = "1.2.840.10008.1.3.10"
_PIXEL_TAGS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")


class DicomSkipWarning(UserWarning):
    """A file in a DICOM folder was skipped (not DICOM, unreadable, or not an image)."""


@dataclass(frozen=True)
class DicomInstance:
    """One DICOM file of a series: its path and its header (pixel data deferred, not loaded)."""

    path: Path
    header: Dataset = field(repr=False, compare=False)

    @property
    def n_frames(self) -> int:
        """Number of frames in the file (1 for a classic single-frame image)."""
        return int(self.header.get("NumberOfFrames", 1) or 1)


@dataclass(frozen=True)
class DicomSeries:
    """The image files of one series (same ``SeriesInstanceUID``), in file-name order."""

    series_uid: str
    instances: tuple[DicomInstance, ...]

    @property
    def modality(self) -> str:
        """The ``Modality`` of the series (empty string when absent)."""
        return str(self.instances[0].header.get("Modality", "") or "")

    @property
    def n_frames(self) -> int:
        """Total number of frames (images) in the series."""
        return sum(inst.n_frames for inst in self.instances)

    def describe(self) -> str:
        """A one-line description without patient-identifying values."""
        hdr = self.instances[0].header
        sizes = Counter((int(i.header.get("Rows", 0) or 0), int(i.header.get("Columns", 0) or 0)) for i in self.instances)
        size_text = ", ".join(f"{r}x{c}" for r, c in sorted(sizes))
        text = (
            f"SeriesInstanceUID={self.series_uid} modality={self.modality or '?'} "
            f"series_number={hdr.get('SeriesNumber', '?')} files={len(self.instances)} "
            f"frames={self.n_frames} matrix={size_text} plane={_plane_name(hdr)}"
        )
        if self.modality.upper() == "MR":  # which series is the T1, T2, FLAIR, ... of the study
            acquisition = dicom_acquisition(hdr)
            text += f" weighting={mr_weighting(acquisition)[0]} ({describe_acquisition({**acquisition, 'acquisition_source': ''})})"
        return text


@dataclass(frozen=True)
class FolderScan:
    """The result of scanning a folder: image series found and files skipped (with reasons)."""

    root: Path
    series: tuple[DicomSeries, ...]
    skipped: tuple[tuple[Path, str], ...]


def _plane_name(hdr: Dataset) -> str:
    iop = hdr.get("ImageOrientationPatient")
    if iop is None or len(iop) != 6:
        return "unknown"
    normal = np.cross(np.asarray(iop[:3], float), np.asarray(iop[3:], float))
    axis = int(np.argmax(np.abs(normal)))
    return ("sagittal", "coronal", "axial")[axis]


def _special_file(path: Path) -> str | None:
    """Why ``path`` is not read: not a regular file (a FIFO would block, a device never ends), or
    ``None`` for a regular file (or a link to one)."""
    try:
        mode = os.stat(path).st_mode  # follows links: a link to /dev/urandom is a device
    except OSError as exc:
        return f"unreadable ({type(exc).__name__}: a broken link or no permission)"
    if stat.S_ISREG(mode):
        return None
    kind = "FIFO" if stat.S_ISFIFO(mode) else "device" if (stat.S_ISCHR(mode) or stat.S_ISBLK(mode)) else (
        "socket" if stat.S_ISSOCK(mode) else "special file")
    return f"not a regular file ({kind})"


def _iter_files(root: Path, recursive: bool) -> tuple[list[Path], list[tuple[Path, str]]]:
    """The regular files under ``root`` (hidden ones excluded), and the other entries with the reason
    they are skipped. Folder links are followed, each real folder visited once (no loops)."""
    candidates: list[Path] = []
    if recursive:
        seen: set[str] = set()
        for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
            real = os.path.realpath(dirpath)
            if real in seen:  # a link back to a folder already read (a loop, or two links to one folder)
                dirnames[:] = []
                continue
            seen.add(real)
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            candidates.extend(Path(dirpath) / f for f in sorted(filenames) if not f.startswith("."))
    else:
        candidates = sorted(p for p in root.iterdir() if not p.name.startswith(".") and not p.is_dir())
    files: list[Path] = []
    skipped: list[tuple[Path, str]] = []
    for path in candidates:
        reason = _special_file(path)
        if reason is None:
            files.append(path)
        else:
            skipped.append((path, reason))
    return files, skipped


def _skip_reason(hdr: Dataset) -> str | None:
    sop_class = str(hdr.get("SOPClassUID", "") or getattr(getattr(hdr, "file_meta", None), "MediaStorageSOPClassUID", ""))
    if sop_class == _DICOMDIR_SOP_CLASS or "DirectoryRecordSequence" in hdr:
        return "DICOMDIR (media directory, not an image)"
    modality = str(hdr.get("Modality", "") or "").upper()
    if modality in NON_IMAGE_MODALITIES:
        return f"non-image object (modality {modality})"
    if not any(t in hdr for t in _PIXEL_TAGS):
        return f"no pixel data (modality {modality or '?'})"
    if not hdr.get("Rows") or not hdr.get("Columns"):
        return "no Rows/Columns"
    return None


def read_dicom_file(path: str | os.PathLike[str], defer: bool = False) -> Dataset:
    """Read a DICOM file, also one without the 128-byte preamble and ``DICM`` prefix.

    Args:
        path: The file.
        defer: Defer reading large values (pixel data) until accessed.

    Returns:
        The dataset.

    Raises:
        InvalidDicomError: If the file is not DICOM (no preamble and no SOP Class UID when forced).
    """
    kwargs = {"defer_size": 4096} if defer else {}
    try:
        return pydicom.dcmread(path, **kwargs)
    except InvalidDicomError:
        try:
            ds = pydicom.dcmread(path, force=True, **kwargs)
        except Exception:
            raise InvalidDicomError(f"{path} is not a DICOM file") from None
        uid = str(ds.get("SOPClassUID", "") or "")
        if not uid.startswith("1.2.840.10008."):
            raise InvalidDicomError(f"{path} is not a DICOM file") from None
        return ds


def scan_dicom_folder(path: str | os.PathLike[str], recursive: bool = True) -> FolderScan:
    """Read the headers of all files under ``path`` and group the images into series.

    Skipped files (not DICOM, unreadable, DICOMDIR, RTSTRUCT/SR/SEG and other non-image objects)
    are reported with one :class:`DicomSkipWarning` per reason and listed in the result.

    Args:
        path: A folder.
        recursive: Also look into sub-folders (hidden files and folders are ignored).

    Returns:
        The series found (ordered by series UID) and the skipped files.

    Raises:
        ScanLoadError: If ``path`` is not a folder.
    """
    root = Path(path)
    if not root.is_dir():
        raise ScanLoadError(f"path={str(root)!r} is not a folder; expected a folder of DICOM files")
    groups: dict[str, list[DicomInstance]] = {}
    files, skipped = _iter_files(root, recursive)
    for file in files:
        try:
            # large values (pixel data) are deferred: present in the header, read only if accessed
            hdr = read_dicom_file(file, defer=True)
        except InvalidDicomError:
            skipped.append((file, "not a DICOM file"))
            continue
        except Exception as exc:  # truncated or corrupt headers raise many types
            skipped.append((file, f"unreadable DICOM header ({type(exc).__name__})"))
            continue
        reason = _skip_reason(hdr)
        if reason is not None:
            skipped.append((file, reason))
            continue
        uid = str(hdr.get("SeriesInstanceUID", "") or "")
        groups.setdefault(uid, []).append(DicomInstance(path=file, header=hdr))
    _warn_skipped(root, skipped)
    series = tuple(DicomSeries(series_uid=uid, instances=tuple(groups[uid])) for uid in sorted(groups))
    return FolderScan(root=root, series=series, skipped=tuple(skipped))


def _warn_skipped(root: Path, skipped: Sequence[tuple[Path, str]]) -> None:
    by_reason: dict[str, list[str]] = {}
    for file, reason in skipped:
        by_reason.setdefault(reason, []).append(os.path.relpath(file, root))
    for reason, files in by_reason.items():
        shown = ", ".join(files[:5]) + (f", ... ({len(files)} files)" if len(files) > 5 else "")
        msg = f"{root}: skipped {len(files)} file(s): {reason}: {shown}"
        logger.warning(msg)
        warnings.warn(msg, DicomSkipWarning, stacklevel=3)


def select_series(scan: FolderScan, series_uid: str | None = None) -> DicomSeries:
    """Pick one image series from a folder scan.

    Args:
        scan: The result of :func:`scan_dicom_folder`.
        series_uid: The ``SeriesInstanceUID`` wanted; ``None`` accepts a folder with exactly one
            image series.

    Returns:
        The series.

    Raises:
        ScanLoadError: If the folder has no image series, if ``series_uid`` is not among them, or
            if there are several and ``series_uid`` is ``None`` (the message lists them all).
    """
    if not scan.series:
        reasons = Counter(reason for _, reason in scan.skipped)
        found = "; ".join(f"{n} x {r}" for r, n in reasons.items()) or "no files"
        raise ScanLoadError(f"path={str(scan.root)!r}: no DICOM image series found ({found})")
    listing = "\n  ".join(s.describe() for s in scan.series)
    if series_uid is not None:
        for s in scan.series:
            if s.series_uid == series_uid:
                return s
        raise ScanLoadError(
            f"path={str(scan.root)!r}: series_uid={series_uid!r} not found; the folder holds:\n  {listing}"
        )
    if len(scan.series) > 1:
        raise ScanLoadError(
            f"path={str(scan.root)!r} holds {len(scan.series)} image series; pass series_uid= one of:\n  {listing}"
        )
    return scan.series[0]
