"""Writing a predicted label map as a DICOM Segmentation (SEG) object with highdicom.

The mask is given in the geometry that :func:`medmamba.data.load_scan` produced for the source
series (``(X, Y, Z)``, slices ordered along the normal). The writer re-reads the source headers,
orders them the same way, and hands highdicom one frame per source image, so every SEG frame
references the SOP instance it was predicted on.

Patient data: highdicom copies the whole Patient and Study modules of the source. The writer then
removes every identifying attribute that the SEG IOD does not require (Type 3, e.g. other patient
IDs, comments, weight, physicians of record), keeping only the Type 1/2 attributes that tie the SEG
to its patient and study (:data:`REQUIRED_PATIENT_STUDY_KEYWORDS`), and every identifying attribute
inside sequences (highdicom records the source's institution in the contributing equipment);
``anonymous=True`` empties the Type 2 values as well. The writer's own equipment attributes
(``Manufacturer``, ``DeviceSerialNumber``, ...; Type 1 in the Enhanced General Equipment module) are
kept: they describe this software, not the source's scanner.

Segment codes: every segment is coded with its own SNOMED CT concept
(:mod:`medmamba.io.segment_codes`: grey matter, white matter, CSF, lesion, brain) when the caller
passes ``segment_codes``; a segment without one gets the generic "Tissue" code and a warning.
The written object passes the standard's validator (``dciodvfy`` of dicom3tools) without errors.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping
from pathlib import Path

from types import ModuleType

import numpy as np
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes

from medmamba.io.dicom_geometry import PlaneGeometry, sort_by_position
from medmamba.io.dicom_scan import read_dicom_file, scan_dicom_folder, select_series
from medmamba.io.privacy import IDENTIFYING_KEYWORDS
from medmamba.io.atomic import atomic_write_bytes
from medmamba.io.dicom_series import dataset_to_bytes
from medmamba.io.segment_codes import GENERIC_TISSUE, SegmentCode

__all__ = ["REQUIRED_PATIENT_STUDY_KEYWORDS", "ordered_source_datasets", "write_dicom_seg"]

#: Patient/study attributes of Type 1 or 2 in the Segmentation IOD: the only ones copied from the source.
REQUIRED_PATIENT_STUDY_KEYWORDS: frozenset[str] = frozenset(
    {
        "PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyInstanceUID", "StudyDate", "StudyTime",
        "ReferringPhysicianName", "StudyID", "AccessionNumber",
    }
)
_TYPE2_IDENTIFYING = REQUIRED_PATIENT_STUDY_KEYWORDS - {"StudyInstanceUID", "StudyDate", "StudyTime"}
#: Set by the writer itself (this software as the equipment), never copied from the source: kept.
_WRITER_EQUIPMENT_KEYWORDS = frozenset({"Manufacturer", "ManufacturerModelName", "SoftwareVersions", "DeviceSerialNumber"})


def ordered_source_datasets(source: str | os.PathLike[str], series_uid: str | None = None) -> list[Dataset]:
    """The source images of a series, fully read, in the slice order used by ``load_scan``.

    Args:
        source: The DICOM folder (or a single multi-frame / single-slice file).
        series_uid: ``SeriesInstanceUID`` when the folder holds several series.

    Returns:
        Datasets ordered along the slice normal (one dataset for a single file).

    Raises:
        ValueError: If the images lack the geometry needed to order them.
    """
    src = Path(source)
    if src.is_file():
        return [read_dicom_file(src)]
    series = select_series(scan_dicom_folder(src), series_uid)
    hdrs = [inst.header for inst in series.instances]
    if len(hdrs) > 1:
        if any(h.get("ImagePositionPatient") is None or h.get("ImageOrientationPatient") is None for h in hdrs):
            raise ValueError(f"source={str(src)!r}: images lack ImagePositionPatient/ImageOrientationPatient")
        spacing = hdrs[0].get("PixelSpacing") or (1.0, 1.0)
        plane = PlaneGeometry.from_values(hdrs[0].ImageOrientationPatient, spacing, str(src))
        positions = np.asarray([[float(v) for v in h.ImagePositionPatient] for h in hdrs])
        order, _ = sort_by_position(positions, plane.normal)
    else:
        order = np.arange(1)
    return [read_dicom_file(series.instances[int(i)].path) for i in order]


def _highdicom() -> ModuleType:
    """highdicom, imported when a DICOM SEG is written (the ``dicom`` extra), not when medmamba is imported."""
    try:
        import highdicom
    except ImportError as err:
        raise ImportError(
            "write_dicom_seg needs highdicom, which is not installed: pip install 'medmamba[dicom]' "
            "(or choose NIfTI outputs)"
        ) from err
    return highdicom


def _segment_descriptions(
    hd: ModuleType,
    labels: Mapping[int, str],
    codes_by_label: Mapping[int, SegmentCode],
    algorithm_name: str,
    algorithm_version: str,
) -> list:
    algo = hd.AlgorithmIdentificationSequence(
        name=algorithm_name, version=algorithm_version, family=codes.cid7162.ArtificialIntelligence
    )
    out = []
    for number in sorted(labels):
        code = codes_by_label.get(number, GENERIC_TISSUE)
        out.append(
            hd.seg.SegmentDescription(
                segment_number=int(number),
                segment_label=str(labels[number])[:64],
                segmented_property_category=code.category,
                segmented_property_type=code.property_type,
                algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
                algorithm_identification=algo,
                display_color=hd.color.CIELabColor.from_rgb(*code.rgb),
            )
        )
    return out


def _strip_nested(ds: Dataset) -> None:
    for elem in list(ds):
        if elem.VR == "SQ":
            for item in elem.value or []:
                for keyword in IDENTIFYING_KEYWORDS:
                    if keyword in item:
                        delattr(item, keyword)
                _strip_nested(item)


def _strip_optional_identifiers(seg: Dataset, anonymous: bool) -> None:
    for keyword in IDENTIFYING_KEYWORDS - REQUIRED_PATIENT_STUDY_KEYWORDS - _WRITER_EQUIPMENT_KEYWORDS:
        if keyword in seg:
            delattr(seg, keyword)
    # e.g. the source's InstitutionName in ContributingEquipmentSequence
    _strip_nested(seg)
    if anonymous:
        for keyword in _TYPE2_IDENTIFYING:
            setattr(seg, keyword, "")


def write_dicom_seg(
    path: str | os.PathLike[str],
    mask: np.ndarray,
    source: str | os.PathLike[str],
    labels: Mapping[int, str],
    *,
    segment_codes: Mapping[int, SegmentCode] | None = None,
    series_uid: str | None = None,
    seg_series_uid: str | None = None,
    seg_sop_uid: str | None = None,
    series_number: int = 900,
    algorithm_name: str = "medmamba",
    algorithm_version: str = "0.1.0",
    anonymous: bool = False,
) -> Path:
    """Write ``mask`` as a DICOM SEG referencing the source series, atomically.

    Args:
        path: Destination ``.dcm`` file.
        mask: Integer label map ``(X, Y, Z)`` (or ``(1, X, Y, Z)``, or ``(X, Y)`` for one image) in
            the geometry of ``load_scan(source)``; 0 is background, other values are segment numbers.
        source: The DICOM folder (or file) the prediction was made on.
        labels: Segment number -> label, for every non-zero value that may occur.
        segment_codes: Segment number -> :class:`~medmamba.io.segment_codes.SegmentCode` (SNOMED CT
            category and type, display colour). A segment without one is coded as generic "Tissue"
            (SCT 85756007), with a warning: viewers then cannot tell it from other segments by code.
        series_uid: The source ``SeriesInstanceUID`` (needed when the folder holds several series).
        seg_series_uid: UID of the new SEG series (random by default).
        seg_sop_uid: SOP Instance UID of the SEG (random by default).
        series_number: ``SeriesNumber`` of the SEG series.
        algorithm_name: Algorithm name recorded in each segment.
        algorithm_version: Algorithm version.
        anonymous: Empty the Type 2 patient/study identifiers instead of copying them.

    Returns:
        The destination path.

    Raises:
        ValueError: If the mask shape does not match the source, it holds values missing from
            ``labels``, or ``segment_codes`` has numbers that are not in ``labels``.
        TypeError: If a value of ``segment_codes`` is not a ``SegmentCode``.
        ImportError: If highdicom (the ``dicom`` extra) is not installed.
    """
    arr = np.asarray(mask)
    if arr.ndim == 4 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim == 2:
        arr = arr[..., None]
    if arr.ndim != 3:
        raise ValueError(f"mask must be (X, Y, Z), (1, X, Y, Z) or (X, Y); got shape {np.asarray(mask).shape}")
    if not np.all(np.equal(np.mod(arr, 1), 0)):
        raise ValueError("mask must hold integer segment numbers")
    arr = arr.astype(np.int64)
    values = {int(v) for v in np.unique(arr)} - {0}
    if not values <= set(labels):
        raise ValueError(f"mask holds segment numbers {sorted(values - set(labels))} missing from labels={dict(labels)!r}")
    codes_by_label = dict(segment_codes or {})
    extra_codes = sorted(set(codes_by_label) - set(labels))
    if extra_codes:
        raise ValueError(f"segment_codes has segment numbers {extra_codes} that are not in labels={dict(labels)!r}")
    for number, code in codes_by_label.items():
        if not isinstance(code, SegmentCode):
            raise TypeError(f"segment_codes[{number}] must be a SegmentCode, got {type(code).__name__}")
    uncoded = sorted(set(labels) - set(codes_by_label))
    if uncoded:
        warnings.warn(
            f"segments {uncoded} ({', '.join(repr(labels[n]) for n in uncoded)}) have no segment_codes entry and are "
            "coded as the generic SNOMED CT 'Tissue' (85756007); pass medmamba.io.segment_codes values",
            stacklevel=2,
        )
    hd = _highdicom()
    sources = ordered_source_datasets(source, series_uid)
    if len(sources) == 1 and int(sources[0].get("NumberOfFrames", 1) or 1) > 1:
        raise ValueError("multi-frame source images are not supported by write_dicom_seg yet; use a series of slices")
    rows, cols = int(sources[0].Rows), int(sources[0].Columns)
    if arr.shape != (cols, rows, len(sources)):
        raise ValueError(
            f"mask shape {arr.shape} does not match the source series (columns, rows, slices) = "
            f"{(cols, rows, len(sources))}"
        )
    frames = np.ascontiguousarray(np.transpose(arr, (2, 1, 0))).astype(np.uint16 if max(labels) > 255 else np.uint8)
    seg = hd.seg.Segmentation(
        source_images=sources,
        pixel_array=frames,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=_segment_descriptions(hd, labels, codes_by_label, algorithm_name, algorithm_version),
        series_instance_uid=seg_series_uid or hd.UID(),
        series_number=int(series_number),
        sop_instance_uid=seg_sop_uid or hd.UID(),
        instance_number=1,
        manufacturer="medmamba",
        manufacturer_model_name=algorithm_name,
        software_versions=algorithm_version,
        device_serial_number=f"{algorithm_name}-{algorithm_version}"[:64],
        omit_empty_frames=False,
    )
    _strip_optional_identifiers(seg, anonymous)
    return atomic_write_bytes(path, dataset_to_bytes(seg))


