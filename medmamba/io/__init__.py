"""Writing results: atomic files, reproducible NIfTI, DICOM series, DICOM SEG, classification tables."""

from __future__ import annotations

from medmamba.io.atomic import atomic_path, atomic_write_bytes, atomic_write_text, gzip_bytes
from medmamba.io.dicom_series import PatientInfo, SeriesUIDs, series_uids, write_dicom_series
from medmamba.io.nifti import nifti_bytes, write_nifti

__all__ = [
    "PatientInfo",
    "SeriesUIDs",
    "atomic_path",
    "atomic_write_bytes",
    "atomic_write_text",
    "gzip_bytes",
    "nifti_bytes",
    "series_uids",
    "write_dicom_series",
    "write_nifti",
]
