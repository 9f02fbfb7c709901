"""Writing a volume as a classic DICOM series: one single-frame file per slice.

Each file gets ``ImagePositionPatient``, ``ImageOrientationPatient``, ``PixelSpacing``,
``SliceThickness`` and UIDs consistent with the RAS affine of the volume (converted to DICOM's LPS),
and, for CT, ``RescaleSlope``/``RescaleIntercept``. UIDs are derived from ``uid_entropy`` when given,
so the same input writes the same bytes; otherwise they are random. Used by the default data set
generator and by tests that need series with known geometry.

The files pass the standard's validator (``dciodvfy`` of dicom3tools) without errors:

- MR images carry no Modality LUT: the MR Image IOD does not include ``RescaleSlope``/
  ``RescaleIntercept`` (dciodvfy: "not expected to be present in standard MR IOD - may cause
  windowing problems"), so the stored values of an MR series are its real values, and a non-identity
  rescale for MR is refused.
- ``ImageLaterality`` is written (``U``, unpaired, by default): ``Laterality`` of the General Series
  module is required (Type 2C) for paired body parts unless an image laterality is present.
- ``ImageType`` value 3 is ``AXIAL`` for CT (a defined term of the CT Image module) and ``OTHER`` for
  MR (``AXIAL`` is not one of the MR defined terms).
"""

from __future__ import annotations

import io
import os
import shutil
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID, ExplicitVRLittleEndian, generate_uid

from medmamba.io.dicom_geometry import LPS_TO_RAS
from medmamba.io.temporaries import TEMPORARY_SUFFIX, temporary_prefix

__all__ = ["PatientInfo", "SeriesUIDs", "dataset_to_bytes", "series_uids", "write_dicom_series"]

_SOP_CLASSES = {
    "MR": pydicom.uid.MRImageStorage,
    "CT": pydicom.uid.CTImageStorage,
}
#: ``ImageType`` value 3 per modality: a defined term of the modality's image module.
_IMAGE_TYPE_3 = {"MR": "OTHER", "CT": "AXIAL"}
_LATERALITIES = ("R", "L", "U", "B")


@dataclass(frozen=True)
class PatientInfo:
    """Patient module values written into each file (all optional)."""

    name: str = ""
    patient_id: str = ""
    birth_date: str = ""
    sex: str = ""


@dataclass(frozen=True)
class SeriesUIDs:
    """Study, series and frame-of-reference UIDs of a series."""

    study: str
    series: str
    frame_of_reference: str


def series_uids(uid_entropy: str | None = None) -> SeriesUIDs:
    """Make the UIDs of a new series, reproducibly from ``uid_entropy`` when given.

    Args:
        uid_entropy: Any string (e.g. ``"seed0/sub-003"``); ``None`` gives random UIDs.

    Returns:
        The UIDs.
    """
    def make(kind: str) -> str:
        return str(generate_uid(entropy_srcs=None if uid_entropy is None else [uid_entropy, "/", kind]))

    return SeriesUIDs(study=make("study"), series=make("series"), frame_of_reference=make("for"))


def dataset_to_bytes(ds: Dataset) -> bytes:
    """Encode a dataset with file meta information as a DICOM Part 10 file."""
    buf = io.BytesIO()
    pydicom.dcmwrite(buf, ds, enforce_file_format=True)
    return buf.getvalue()


def _ds_number(value: float) -> str:
    text = f"{value:.6f}".rstrip("0").rstrip(".")
    return "0" if text in ("-0", "") else text


def write_dicom_series(
    out_dir: str | os.PathLike[str],
    stored: np.ndarray,
    affine: np.ndarray,
    *,
    rescale_slope: float = 1.0,
    rescale_intercept: float = 0.0,
    modality: str = "MR",
    uids: SeriesUIDs | None = None,
    uid_entropy: str | None = None,
    patient: PatientInfo | None = None,
    series_number: int = 1,
    series_description: str = "",
    file_names: Sequence[str] | None = None,
    instance_numbers: Sequence[int] | None = None,
    content_date: str = "20000101",
    extra_attributes: Mapping[str, Any] | None = None,
    image_laterality: str = "U",
) -> list[Path]:
    """Write ``stored`` (integer values, ``(X, Y, Z)``) as one DICOM file per ``Z`` slice.

    Voxel ``(i, j, k)`` of ``stored`` is pixel (row ``j``, column ``i``) of slice ``k``, and the affine
    maps it to RAS mm, as in :func:`medmamba.data.read_dicom`; reading the folder back gives the
    same array and affine. Real-world values are ``stored * rescale_slope + rescale_intercept`` (CT);
    an MR series has no rescale (its stored values are its values).

    Args:
        out_dir: Folder for the files (created if missing).
        stored: Integer array ``(X, Y, Z)`` that fits in 16 bits (signed if it has negatives).
        affine: 4x4 RAS affine with orthogonal first two columns.
        rescale_slope: ``RescaleSlope`` written in each file (CT; must be 1 for MR).
        rescale_intercept: ``RescaleIntercept`` written in each file (CT; must be 0 for MR).
        modality: ``"MR"`` or ``"CT"`` (chooses the SOP class).
        uids: Study/series/frame-of-reference UIDs; default from ``uid_entropy``.
        uid_entropy: Seed string for all UIDs (``None``: random UIDs).
        patient: Patient-module values.
        series_number: ``SeriesNumber``.
        series_description: ``SeriesDescription``.
        file_names: One file name per slice (default ``IM00001.dcm`` ...).
        instance_numbers: One ``InstanceNumber`` per slice (default 1..Z).
        content_date: Study/series/content date (fixed, so files are reproducible).
        extra_attributes: Additional top-level attributes (keyword -> value) for every file.
        image_laterality: ``ImageLaterality``: ``"U"`` (unpaired, e.g. a head), ``"R"``, ``"L"`` or
            ``"B"`` (both).

    Returns:
        The paths written, in slice order.

    Raises:
        TypeError: If ``stored`` is not an integer array.
        ValueError: For a wrong shape, values outside 16 bits, an unknown modality, a non-orthogonal
            affine, wrongly sized ``file_names``/``instance_numbers``, an MR rescale other than
            the identity, or an unknown ``image_laterality``.
    """
    arr = np.asarray(stored)
    if not np.issubdtype(arr.dtype, np.integer):
        raise TypeError(f"stored must be an integer array, got dtype {arr.dtype}")
    if arr.ndim != 3:
        raise ValueError(f"stored must be 3D (X, Y, Z), got shape {arr.shape}")
    modality = modality.upper()
    if modality not in _SOP_CLASSES:
        raise ValueError(f"modality must be one of {sorted(_SOP_CLASSES)}, got {modality!r}")
    if modality == "MR" and (float(rescale_slope) != 1.0 or float(rescale_intercept) != 0.0):
        raise ValueError(
            f"rescale_slope={rescale_slope!r}, rescale_intercept={rescale_intercept!r} for modality 'MR': the MR Image "
            "IOD has no Modality LUT (RescaleSlope/RescaleIntercept); pass stored values that are the real values "
            "(slope 1, intercept 0)"
        )
    if image_laterality not in _LATERALITIES:
        raise ValueError(f"image_laterality must be one of {_LATERALITIES}, got {image_laterality!r}")
    signed = bool(arr.min() < 0)
    lo, hi = (-(2**15), 2**15 - 1) if signed else (0, 2**16 - 1)
    if arr.min() < lo or arr.max() > hi:
        raise ValueError(f"stored values span [{arr.min()}, {arr.max()}], outside 16-bit range [{lo}, {hi}]")
    aff_lps = LPS_TO_RAS @ np.asarray(affine, dtype=float)  # its own inverse: RAS -> LPS
    col0, col1, col2 = aff_lps[:3, 0], aff_lps[:3, 1], aff_lps[:3, 2]
    sx, sy, sz = (float(np.linalg.norm(c)) for c in (col0, col1, col2))
    if min(sx, sy, sz) <= 0 or abs(float(np.dot(col0, col1))) > 1e-6 * sx * sy:
        raise ValueError("affine must have non-zero, orthogonal in-plane columns")
    row_dir, col_dir = col0 / sx, col1 / sy
    nz = arr.shape[2]
    names = list(file_names) if file_names is not None else [f"IM{k + 1:05d}.dcm" for k in range(nz)]
    numbers = list(instance_numbers) if instance_numbers is not None else list(range(1, nz + 1))
    if len(names) != nz or len(numbers) != nz:
        raise ValueError(f"file_names and instance_numbers need {nz} entries, got {len(names)} and {len(numbers)}")
    uids = uids or series_uids(uid_entropy)
    patient = patient or PatientInfo()
    normal = np.cross(row_dir, col_dir)
    out = Path(out_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    dtype = np.int16 if signed else np.uint16
    # the whole series is written into a hidden folder beside out_dir, then moved into place: a full
    # disk or an error part-way leaves no partial series (which would read back as a shorter volume)
    staging = out.parent / f"{temporary_prefix(out.name)}{uuid.uuid4().hex[:12]}{TEMPORARY_SUFFIX}"
    staging.mkdir()  # the umask's permissions, as a plain mkdir of out_dir would have
    try:
        for k in range(nz):
            pos = aff_lps[:3, 3] + col2 * k
            sop_uid = generate_uid(entropy_srcs=None if uid_entropy is None else [uid_entropy, "/sop/", str(k)])
            ds = _slice_dataset(
                modality=modality,
                sop_uid=sop_uid,
                uids=uids,
                patient=patient,
                series_number=series_number,
                series_description=series_description,
                instance_number=int(numbers[k]),
                content_date=content_date,
            )
            ds.ImageOrientationPatient = [_ds_number(v) for v in (*row_dir, *col_dir)]
            ds.ImagePositionPatient = [_ds_number(v) for v in pos]
            ds.SliceLocation = _ds_number(float(np.dot(pos, normal)))
            ds.PixelSpacing = [_ds_number(sy), _ds_number(sx)]
            ds.SliceThickness = _ds_number(sz)
            ds.SpacingBetweenSlices = _ds_number(sz)
            if modality == "CT":
                ds.RescaleSlope = _ds_number(rescale_slope)
                ds.RescaleIntercept = _ds_number(rescale_intercept)
                ds.RescaleType = "HU"
            ds.ImageLaterality = image_laterality
            pixels = np.ascontiguousarray(arr[:, :, k].T.astype(dtype))
            ds.Rows, ds.Columns = int(pixels.shape[0]), int(pixels.shape[1])
            ds.SamplesPerPixel = 1
            ds.PhotometricInterpretation = "MONOCHROME2"
            ds.BitsAllocated = 16
            ds.BitsStored = 16
            ds.HighBit = 15
            ds.PixelRepresentation = 1 if signed else 0
            ds.PixelData = pixels.tobytes()
            for key, value in (extra_attributes or {}).items():
                setattr(ds, key, value)
            (staging / names[k]).write_bytes(dataset_to_bytes(ds))
        if not out.exists():
            os.replace(staging, out)  # one rename: the series appears whole
        else:
            for name in names:
                os.replace(staging / name, out / name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return [out / name for name in names]


def _slice_dataset(
    *,
    modality: str,
    sop_uid: UID,
    uids: SeriesUIDs,
    patient: PatientInfo,
    series_number: int,
    series_description: str,
    instance_number: int,
    content_date: str,
) -> Dataset:
    sop_class = _SOP_CLASSES[modality]
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["DERIVED", "SECONDARY", _IMAGE_TYPE_3[modality]]
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_uid
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = content_date
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = "120000"
    ds.AccessionNumber = ""
    ds.Modality = modality
    ds.Manufacturer = "medmamba synthetic"
    ds.ReferringPhysicianName = ""
    ds.SeriesDescription = series_description
    ds.PatientName = patient.name
    ds.PatientID = patient.patient_id
    ds.PatientBirthDate = patient.birth_date
    ds.PatientSex = patient.sex
    ds.StudyInstanceUID = uids.study
    ds.SeriesInstanceUID = uids.series
    ds.StudyID = "1"
    ds.SeriesNumber = int(series_number)
    ds.InstanceNumber = int(instance_number)
    ds.FrameOfReferenceUID = uids.frame_of_reference
    ds.PositionReferenceIndicator = ""
    ds.PatientPosition = "HFS"
    if modality == "MR":
        ds.ScanningSequence = "GR"
        ds.SequenceVariant = "SP"
        ds.ScanOptions = ""
        ds.MRAcquisitionType = "3D"
        ds.RepetitionTime = "8.1"
        ds.EchoTime = "3.7"
        ds.EchoTrainLength = "1"
        ds.MagneticFieldStrength = "3"
    else:
        ds.KVP = "120"
        ds.AcquisitionNumber = 1  # Type 2 in the CT Image module
    return ds
