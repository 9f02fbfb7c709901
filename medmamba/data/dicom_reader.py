"""Reading a DICOM series folder or a single (possibly multi-frame) DICOM file into a volume.

This replaces MONAI's ``PydicomReader`` where it is wrong for clinical series: slices are ordered
by their position along the slice normal (MONAI sorts by ``InstanceNumber``), the slice step of the
affine comes from the sorted positions (gantry tilt included), gaps and uneven spacing are detected,
several series in one folder are listed (or one is chosen with ``series_uid``), non-image objects
are skipped with a warning, per-slice and per-frame rescale slope/intercept are applied, and
MONOCHROME1 is inverted. :class:`DicomSeriesReader` plugs the reader into ``monai.transforms.LoadImage``.

The volume is channel-first, ``(C, X, Y[, Z])`` with ``X`` along rows (column index), ``Y`` down
columns (row index), ``Z`` along the normal, as MONAI's readers lay DICOM out; the affine is RAS.
Metadata carry geometry, UIDs and the MR acquisition parameters (echo, repetition and inversion
times, sequence, b-value: :mod:`medmamba.io.mr_acquisition`) only (see :data:`SAFE_DICOM_META_KEYS`),
never patient data.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from monai.data.image_reader import ImageReader
from monai.utils import MetaKeys, SpaceKeys
from pydicom.dataset import Dataset

from medmamba.io.dicom_geometry import (
    LPS_TO_RAS,
    PlaneGeometry,
    affine_lps,
    check_slice_spacing,
    sort_by_position,
)
from medmamba.data.dicom_pixels import (
    apply_rescale,
    check_decodable,
    check_pixel_budget,
    decode_frames,
    frame_rescale,
    to_monochrome2,
)
from medmamba.io.dicom_scan import (
    NON_IMAGE_MODALITIES,
    DicomInstance,
    DicomSeries,
    read_dicom_file,
    scan_dicom_folder,
    select_series,
)
from medmamba.data.dicom_stacks import pixel_spacing_of, split_stacks
from medmamba.io.errors import ScanLoadError, warn_and_log
from medmamba.io.mr_acquisition import MR_ACQUISITION_META_KEYS, dicom_acquisition

__all__ = [
    "SAFE_DICOM_META_KEYS",
    "DicomGeometryWarning",
    "DicomSeriesReader",
    "DicomVolume",
    "read_dicom",
    "read_dicom_stacks",
]

logger = logging.getLogger(__name__)

#: The metadata keys a DICOM volume carries (besides MONAI's affine/shape keys). None identifies the patient.
SAFE_DICOM_META_KEYS: tuple[str, ...] = (
    "modality",
    "sop_class_uid",
    "study_instance_uid",
    "series_instance_uid",
    "frame_of_reference_uid",
    "transfer_syntax_uid",
    "photometric_interpretation",
    "n_slices",
    "slice_spacing",
    "slice_spacing_uneven",
    "rescale_slope",
    "rescale_intercept",
    "source_format",
    *MR_ACQUISITION_META_KEYS,
)

OnGap = Literal["error", "warn"]
OnMixed = Literal["error", "largest"]

#: how a refusal of a mixed series names the way out
_SPLIT_HINT = (
    "; pass on_mixed='largest' to read its largest consistent stack, or read every stack with "
    "medmamba.data.read_dicom_stacks"
)


class DicomGeometryWarning(UserWarning):
    """A DICOM volume was built with approximate geometry (uneven spacing, no positions, ...)."""


@dataclass
class DicomVolume:
    """A decoded DICOM volume.

    Attributes:
        array: float32 ``(C, X, Y[, Z])``.
        affine: 4x4 RAS affine of the spatial axes.
        meta: Safe metadata (keys from :data:`SAFE_DICOM_META_KEYS`).
        source_files: The files, in slice order (one entry for a multi-frame file).
        frame_order: For a multi-frame file, the frame index (0-based) of each slice; else empty.
    """

    array: np.ndarray
    affine: np.ndarray
    meta: dict[str, Any]
    source_files: tuple[Path, ...] = ()
    frame_order: tuple[int, ...] = field(default=())


def _get(ds: Dataset, name: str, default: Any = None) -> Any:
    value = ds.get(name, default)
    return default if value in (None, "") else value


def _at(where: str, path: Path) -> str:
    """``where`` (a folder or the file itself) with the file named once: ``folder/file.dcm``, ``file.dcm``."""
    return where if Path(where).name == path.name else f"{where}/{path.name}"


def _file_size(path: Path) -> int | None:
    try:
        return path.stat().st_size
    except OSError:
        return None


def _position(hdr: Dataset, where: str, name: str) -> np.ndarray:
    """``ImagePositionPatient`` of one image as three finite floats.

    Raises:
        ScanLoadError: it is not three finite numbers (a NaN position would give a NaN affine).
    """
    try:
        pos = np.asarray([float(v) for v in hdr.ImagePositionPatient], dtype=np.float64)
    except (TypeError, ValueError):
        pos = np.full(0, np.nan)
    if pos.shape != (3,) or not np.all(np.isfinite(pos)):
        raise ScanLoadError(
            f"{where}: ImagePositionPatient is not three finite numbers in {name} "
            f"(got {str(hdr.get('ImagePositionPatient'))[:60]!r}); expected the position of every slice"
        )
    return pos


def _pixel_spacing(hdrs: Sequence[Dataset], where: str, names: Sequence[str] | None = None,
                   rel_tol: float = 1e-3) -> tuple[float, float]:
    """The pixel spacing every image of a series shares.

    Raises:
        ScanLoadError: the images disagree (beyond ``rel_tol``), or some have a spacing and others not:
            one spacing for all slices would give a silently wrong affine.
    """
    found = [pixel_spacing_of(h) for h in hdrs]
    names = list(names) if names is not None else [f"image {i}" for i in range(len(hdrs))]
    if all(f is None for f in found):
        _warn(f"{where}: no valid PixelSpacing/ImagerPixelSpacing; assuming 1 mm pixels")
        return 1.0, 1.0
    missing = [n for n, f in zip(names, found) if f is None]
    if missing:
        raise ScanLoadError(
            f"{where}: PixelSpacing is missing or invalid in {len(missing)} of {len(hdrs)} files (e.g. {missing[0]}); "
            "expected one pixel spacing for every slice of a series" + _SPLIT_HINT
        )
    key, first = found[0]
    for name, (_, pair) in zip(names, found):
        if any(abs(a - b) > rel_tol * max(abs(a), abs(b)) for a, b in zip(pair, first)):
            raise ScanLoadError(
                f"{where}: {key} differs within the series: {list(first)} in {names[0]}, {list(pair)} in {name}; "
                "expected one pixel spacing for every slice of a series" + _SPLIT_HINT
            )
    return first


def _warn(msg: str) -> None:
    warn_and_log(msg, DicomGeometryWarning, logger)


def _common_meta(ds: Dataset) -> dict[str, Any]:
    meta_ts = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    return {
        "modality": str(_get(ds, "Modality", "")),
        "sop_class_uid": str(_get(ds, "SOPClassUID", "")),
        "study_instance_uid": str(_get(ds, "StudyInstanceUID", "")),
        "series_instance_uid": str(_get(ds, "SeriesInstanceUID", "")),
        "frame_of_reference_uid": str(_get(ds, "FrameOfReferenceUID", "")),
        "transfer_syntax_uid": str(meta_ts or ""),
        "photometric_interpretation": str(_get(ds, "PhotometricInterpretation", "")),
        "source_format": "DICOM",
        **dicom_acquisition(ds),
    }


def _fallback_step(hdr: Dataset, normal: np.ndarray) -> float:
    for key in ("SpacingBetweenSlices", "SliceThickness"):
        val = _get(hdr, key)
        if val is not None:
            try:
                if float(val) > 0:
                    return float(val)
            except (TypeError, ValueError):
                continue
    return 1.0


def _to_channel_first(frames: np.ndarray, samples: int, keep_2d: bool) -> np.ndarray:
    """``(N, rows, cols[, S])`` -> ``(C, cols, rows, N)`` (or ``(C, cols, rows)`` for one 2D image)."""
    if samples > 1:
        arr = np.transpose(frames, (3, 2, 1, 0))
    else:
        arr = np.transpose(frames, (2, 1, 0))[None]
    if keep_2d:
        arr = arr[..., 0]
    return np.ascontiguousarray(arr)


def _assemble(
    frames: np.ndarray,
    rescales: list[tuple[float, float]],
    header: Dataset,
    plane: PlaneGeometry,
    first_pos: np.ndarray,
    step: np.ndarray,
    keep_2d: bool,
    meta: dict[str, Any],
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    samples = int(_get(header, "SamplesPerPixel", 1))
    values = apply_rescale(frames, rescales)
    values = to_monochrome2(values, header)
    arr = _to_channel_first(values, samples, keep_2d)
    aff = LPS_TO_RAS @ affine_lps(plane, first_pos, step)
    slopes = sorted({r[0] for r in rescales})
    intercepts = sorted({r[1] for r in rescales})
    meta.update(
        rescale_slope=float(slopes[0]) if len(slopes) == 1 else float("nan"),
        rescale_intercept=float(intercepts[0]) if len(intercepts) == 1 else float("nan"),
        n_slices=int(frames.shape[0]),
    )
    return arr, aff, meta


def _read_series(series: DicomSeries, where: str, on_gap: OnGap, tolerance: float) -> DicomVolume:
    insts = list(series.instances)
    if any(i.n_frames > 1 for i in insts):
        if len(insts) == 1:
            return _read_multiframe(insts[0].path, where, on_gap, tolerance, header=insts[0].header)
        raise ScanLoadError(
            f"{where}: series {series.series_uid} mixes {len(insts)} files of which some are multi-frame; "
            "load the multi-frame file on its own"
        )
    hdrs = [i.header for i in insts]
    sizes = {(int(h.Rows), int(h.Columns), int(_get(h, "SamplesPerPixel", 1))) for h in hdrs}
    if len(sizes) > 1:
        raise ScanLoadError(
            f"{where}: series {series.series_uid} has images of different sizes {sorted(sizes)} "
            "(rows, columns, samples); expected one stack of equal-sized slices" + _SPLIT_HINT
        )
    for inst in insts:
        check_decodable(inst.header, _at(where, inst.path))
        check_pixel_budget(inst.header, _at(where, inst.path), file_size=_file_size(inst.path))
    names = [i.path.name for i in insts]
    spacing = _pixel_spacing(hdrs, where, names)
    with_geom = [_get(h, "ImagePositionPatient") is not None and _get(h, "ImageOrientationPatient") is not None for h in hdrs]
    has_geom = all(with_geom)
    if any(with_geom) and not has_geom:  # no silent fall-back to identity geometry for the whole series
        lacking = [n for n, g in zip(names, with_geom) if not g]
        raise ScanLoadError(
            f"{where}: ImagePositionPatient/ImageOrientationPatient missing in {len(lacking)} of {len(hdrs)} files "
            f"(e.g. {lacking[0]}) while the others have them; expected the geometry of every slice" + _SPLIT_HINT
        )
    meta = _common_meta(hdrs[0])
    if has_geom:
        planes = [PlaneGeometry.from_values(h.ImageOrientationPatient, spacing, where) for h in hdrs]
        distinct = [planes[0]]
        for p in planes[1:]:
            if not any(p.same_as(q) for q in distinct):
                distinct.append(p)
        if len(distinct) > 1:
            raise ScanLoadError(
                f"{where}: series {series.series_uid} has {len(distinct)} different image orientations "
                "(e.g. a localizer or several planes); expected one stack" + _SPLIT_HINT
            )
        plane = planes[0]
        positions = np.asarray([_position(h, where, n) for h, n in zip(hdrs, names)])
        order, dist = sort_by_position(positions, plane.normal)
        report = check_slice_spacing(dist, where, tolerance)
        _handle_gap(report.uneven, report.message, on_gap)
        first = positions[order[0]]
        if len(order) > 1:
            step = (positions[order[-1]] - first) / (len(order) - 1)
        else:
            step = plane.normal * _fallback_step(hdrs[0], plane.normal)
        meta.update(slice_spacing=float(np.linalg.norm(step)), slice_spacing_uneven=bool(report.uneven))
    else:
        plane = PlaneGeometry(np.array([1.0, 0, 0]), np.array([0, 1.0, 0]), spacing[0], spacing[1])
        if len(hdrs) > 1:
            _warn(
                f"{where}: no ImagePositionPatient/ImageOrientationPatient; {len(hdrs)} images ordered by "
                "InstanceNumber with a nominal slice spacing"
            )
        order = np.argsort([int(_get(h, "InstanceNumber", 0)) for h in hdrs], kind="stable")
        first = np.zeros(3)
        step = plane.normal * _fallback_step(hdrs[0], plane.normal)
        meta.update(slice_spacing=float(np.linalg.norm(step)), slice_spacing_uneven=False)
    frames_list, rescales = [], []
    files = []
    for idx in order:
        path = insts[int(idx)].path
        ds = _dcmread(path, where)
        fr = decode_frames(ds, _at(where, path))
        frames_list.append(fr[0])
        rescales.append(frame_rescale(ds))
        files.append(path)
    shapes = {f.shape for f in frames_list}
    if len(shapes) > 1:
        raise ScanLoadError(f"{where}: decoded slices have different shapes {sorted(shapes)}")
    frames = np.stack(frames_list)
    arr, aff, meta = _assemble(frames, rescales, hdrs[int(order[0])], plane, first, step, len(hdrs) == 1, meta)
    return DicomVolume(array=arr, affine=aff, meta=meta, source_files=tuple(files))


def _handle_gap(uneven: bool, message: str, on_gap: OnGap) -> None:
    if not uneven:
        return
    if on_gap == "error":
        raise ScanLoadError(message + "; pass on_gap='warn' to load it with the median spacing anyway")
    _warn(message + "; loaded with the mean slice step (geometry approximate)")


def _dcmread(path: Path, where: str) -> Dataset:
    try:
        return read_dicom_file(path)
    except Exception as exc:
        raise ScanLoadError(f"{_at(where, path)}: cannot read DICOM file ({type(exc).__name__}: {exc})") from None


def _frame_value(group: Dataset | None, shared: Dataset | None, seq: str, attr: str) -> Any:
    for g in (group, shared):
        if g is not None and seq in g and len(g[seq].value) and attr in g[seq].value[0]:
            return g[seq].value[0].get(attr)
    return None


def _read_multiframe(
    path: Path, where: str, on_gap: OnGap, tolerance: float, header: Dataset | None = None
) -> DicomVolume:
    ds = _dcmread(path, where)
    check_pixel_budget(ds, _at(where, path), file_size=_file_size(path))  # before per-frame lists
    n = int(_get(ds, "NumberOfFrames", 1))
    per_frame = list(ds.get("PerFrameFunctionalGroupsSequence", []) or [])
    shared_seq = ds.get("SharedFunctionalGroupsSequence")
    shared = shared_seq[0] if shared_seq else None
    groups: list[Dataset | None] = per_frame if len(per_frame) == n else [None] * n
    meta = _common_meta(ds)
    positions, iops, spacings = [], [], []
    for g in groups:
        positions.append(_frame_value(g, shared, "PlanePositionSequence", "ImagePositionPatient"))
        iops.append(_frame_value(g, shared, "PlaneOrientationSequence", "ImageOrientationPatient"))
        spacings.append(_frame_value(g, shared, "PixelMeasuresSequence", "PixelSpacing"))
    if iops[0] is None and _get(ds, "ImageOrientationPatient") is not None:
        iops = [ds.ImageOrientationPatient] * n
    if spacings[0] is None:
        spacings = [_pixel_spacing([ds], where)] * n
    if n > 1 and all(p is not None for p in positions) and all(o is not None for o in iops):
        plane = PlaneGeometry.from_values(iops[0], spacings[0], where)
        for o, s in zip(iops, spacings):
            if not plane.same_as(PlaneGeometry.from_values(o, s, where)):
                raise ScanLoadError(f"{where}: frames have different orientations or pixel spacings; expected one stack")
        pos = np.asarray([[float(v) for v in p] for p in positions])
        order, dist = sort_by_position(pos, plane.normal)
        report = check_slice_spacing(dist, where, tolerance)
        _handle_gap(report.uneven, report.message, on_gap)
        first = pos[order[0]]
        step = (pos[order[-1]] - first) / (n - 1)
        meta.update(slice_spacing=float(np.linalg.norm(step)), slice_spacing_uneven=bool(report.uneven))
    else:
        iop = iops[0] if iops[0] is not None else (1, 0, 0, 0, 1, 0)
        plane = PlaneGeometry.from_values(iop, spacings[0], where)
        first_val = positions[0] if positions[0] is not None else _get(ds, "ImagePositionPatient")
        first = np.asarray([float(v) for v in first_val]) if first_val is not None else np.zeros(3)
        step = plane.normal * _fallback_step(ds, plane.normal)
        order = np.arange(n)
        if n > 1:
            _warn(
                f"{where}: multi-frame object without per-frame positions; {n} frames stacked in file order "
                f"with a slice step of {np.linalg.norm(step):.3f} mm"
            )
        meta.update(slice_spacing=float(np.linalg.norm(step)), slice_spacing_uneven=False)
    frames = decode_frames(ds, where)
    if frames.shape[0] != n:
        raise ScanLoadError(f"{where}: NumberOfFrames={n} but {frames.shape[0]} frames decoded")
    frames = frames[order]
    rescales = [frame_rescale(ds, groups[int(i)]) for i in order]
    arr, aff, meta = _assemble(frames, rescales, ds, plane, first, step, n == 1, meta)
    return DicomVolume(array=arr, affine=aff, meta=meta, source_files=(path,), frame_order=tuple(int(i) for i in order))


def read_dicom(
    path: str | os.PathLike[str],
    series_uid: str | None = None,
    *,
    on_gap: OnGap = "error",
    spacing_tolerance: float = 0.05,
    on_mixed: OnMixed = "error",
) -> DicomVolume:
    """Read a DICOM series folder or a single DICOM file.

    Args:
        path: A folder holding one series (or several, with ``series_uid``), or one DICOM file
            (single-frame 2D image, or multi-frame / enhanced volume).
        series_uid: ``SeriesInstanceUID`` to pick from a folder with several series.
        on_gap: ``"error"`` (default) raises on missing slices or uneven spacing; ``"warn"`` loads
            the volume with the mean slice step and emits a :class:`DicomGeometryWarning`.
        spacing_tolerance: Relative deviation of a slice step from the median that counts as uneven.
        on_mixed: A series whose images do not form one stack (several orientations, matrix
            sizes or pixel spacings, some images without a position): ``"error"`` (default)
            refuses it; ``"largest"`` reads its largest consistent stack
            (:func:`medmamba.data.dicom_stacks.split_stacks`) with a :class:`DicomGeometryWarning`
            naming what was set aside.

    Returns:
        The volume (channel-first, RAS affine, safe metadata).

    Raises:
        ScanLoadError: For anything that cannot be loaded faithfully (see the message).
        ValueError: If ``on_gap`` is not ``"error"`` or ``"warn"``, or ``on_mixed`` not ``"error"``
            or ``"largest"``.
    """
    if on_gap not in ("error", "warn"):
        raise ValueError(f"on_gap must be 'error' or 'warn', got {on_gap!r}")
    if on_mixed not in ("error", "largest"):
        raise ValueError(f"on_mixed must be 'error' or 'largest', got {on_mixed!r}")
    p = Path(path)
    where = str(p)
    if p.is_dir():
        scan = scan_dicom_folder(p)
        series = select_series(scan, series_uid)
        if on_mixed == "largest":
            stacks = split_stacks(series)
            if len(stacks) > 1:
                _warn(
                    f"{where}: series {series.series_uid} holds {len(stacks)} stacks of different geometry; reading "
                    f"the largest ({len(stacks[0].instances)} of {len(series.instances)} files, "
                    f"{stacks[0].describe()}); set aside: "
                    + "; ".join(f"{len(st.instances)} file(s) like {st.instances[0].path.name}" for st in stacks[1:])
                )
            series = stacks[0]
        return _read_series(series, where, on_gap, spacing_tolerance)
    if not p.is_file():
        raise ScanLoadError(f"path={where!r} does not exist; expected a DICOM folder or file")
    hdr = _dcmread_header(p)
    if series_uid is not None and str(_get(hdr, "SeriesInstanceUID", "")) != series_uid:
        raise ScanLoadError(f"path={where!r}: series_uid={series_uid!r} does not match the file's series")
    modality = str(_get(hdr, "Modality", "")).upper()
    if modality in NON_IMAGE_MODALITIES or ("PixelData" not in hdr and "FloatPixelData" not in hdr):
        raise ScanLoadError(f"path={where!r}: DICOM object of modality {modality or '?'} is not an image")
    if int(_get(hdr, "NumberOfFrames", 1)) > 1:
        return _read_multiframe(p, where, on_gap, spacing_tolerance)
    series = DicomSeries(series_uid=str(_get(hdr, "SeriesInstanceUID", "")), instances=(DicomInstance(p, hdr),))
    return _read_series(series, where, on_gap, spacing_tolerance)


def read_dicom_stacks(
    path: str | os.PathLike[str],
    series_uid: str | None = None,
    *,
    on_gap: OnGap = "error",
    spacing_tolerance: float = 0.05,
) -> list[DicomVolume]:
    """Read every consistent stack of a DICOM series folder as a volume of its own.

    For series that mix geometries (a three-plane localizer, slices of two sizes or spacings):
    the series is split by :func:`medmamba.data.dicom_stacks.split_stacks` and each stack is read
    and validated as :func:`read_dicom` reads a series (gaps, uneven spacing and non-finite positions
    still fail). A consistent series gives one volume.

    Args:
        path: A folder holding one series (or several, with ``series_uid``).
        series_uid: ``SeriesInstanceUID`` to pick from a folder with several series.
        on_gap: See :func:`read_dicom`.
        spacing_tolerance: See :func:`read_dicom`.

    Returns:
        The stacks' volumes, the largest stack first; each volume's ``source_files`` are its files.

    Raises:
        ScanLoadError: If ``path`` is not a folder, or a stack cannot be loaded faithfully.
    """
    p = Path(path)
    where = str(p)
    if not p.is_dir():
        raise ScanLoadError(f"path={where!r} is not a folder; expected a DICOM series folder")
    series = select_series(scan_dicom_folder(p), series_uid)
    return [_read_series(stack, where, on_gap, spacing_tolerance) for stack in split_stacks(series)]


def _dcmread_header(path: Path) -> Dataset:
    try:
        return read_dicom_file(path, defer=True)
    except Exception as exc:
        raise ScanLoadError(
            f"path={str(path)!r}: not a readable DICOM file ({type(exc).__name__}: {exc})"
        ) from None


class DicomSeriesReader(ImageReader):
    """A MONAI ``ImageReader`` for DICOM folders and files built on :func:`read_dicom`.

    Use it with ``monai.transforms.LoadImage(reader=DicomSeriesReader())`` or through
    :class:`medmamba.transforms.LoadScand`. The returned data are channel-first.

    Args:
        series_uid: ``SeriesInstanceUID`` to pick from folders with several series.
        on_gap: See :func:`read_dicom`.
        spacing_tolerance: See :func:`read_dicom`.
        on_mixed: See :func:`read_dicom`.
    """

    def __init__(self, series_uid: str | None = None, on_gap: OnGap = "error", spacing_tolerance: float = 0.05,
                 on_mixed: OnMixed = "error"):
        super().__init__()
        self.series_uid = series_uid
        self.on_gap = on_gap
        self.spacing_tolerance = spacing_tolerance
        self.on_mixed = on_mixed

    def verify_suffix(self, filename: Sequence[os.PathLike[str] | str] | os.PathLike[str] | str) -> bool:
        """Accept folders and ``.dcm``/``.dicom``/``.ima`` files or files without a suffix."""
        names = [filename] if isinstance(filename, (str, os.PathLike)) else list(filename)
        for name in names:
            p = Path(name)
            if not (p.is_dir() or p.suffix.lower() in (".dcm", ".dicom", ".ima", "")):
                return False
        return True

    def read(self, data: Sequence[os.PathLike[str] | str] | os.PathLike[str] | str, **kwargs: Any) -> list[DicomVolume]:
        """Read one volume per path."""
        names = [data] if isinstance(data, (str, os.PathLike)) else list(data)
        return [
            read_dicom(n, self.series_uid, on_gap=self.on_gap, spacing_tolerance=self.spacing_tolerance,
                       on_mixed=self.on_mixed)
            for n in names
        ]

    def get_data(self, img: DicomVolume | Sequence[DicomVolume]) -> tuple[np.ndarray, dict[str, Any]]:
        """Return the array (channel-first; several volumes are concatenated on channels) and metadata."""
        vols = [img] if isinstance(img, DicomVolume) else list(img)
        arr = vols[0].array if len(vols) == 1 else np.concatenate([v.array for v in vols], axis=0)
        meta = dict(vols[0].meta)
        meta[MetaKeys.AFFINE] = vols[0].affine.copy()
        meta[MetaKeys.ORIGINAL_AFFINE] = vols[0].affine.copy()
        meta[MetaKeys.SPATIAL_SHAPE] = np.asarray(arr.shape[1:])
        meta[MetaKeys.ORIGINAL_CHANNEL_DIM] = 0
        meta[MetaKeys.SPACE] = SpaceKeys.RAS
        return arr, meta
