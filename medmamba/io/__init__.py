"""Writing results: atomic files, reproducible NIfTI, DICOM series, DICOM SEG, classification tables."""

from __future__ import annotations

from medmamba.io.atomic import atomic_path, atomic_write_bytes, atomic_write_text, gzip_bytes
from medmamba.io.dicom_series import PatientInfo, SeriesUIDs, series_uids, write_dicom_series
from medmamba.io.dicom_seg import REQUIRED_PATIENT_STUDY_KEYWORDS, ordered_source_datasets, write_dicom_seg
from medmamba.io.nifti import nifti_bytes, write_nifti
from medmamba.io.prediction import invert_prediction, write_mask_nifti, write_probabilities_nifti
from medmamba.io.segment_codes import SegmentCode
from medmamba.io.results import clean_rows, write_results_csv, write_results_json

__all__ = [
    "REQUIRED_PATIENT_STUDY_KEYWORDS",
    "PatientInfo",
    "SegmentCode",
    "SeriesUIDs",
    "atomic_path",
    "atomic_write_bytes",
    "atomic_write_text",
    "classify_scans",
    "clean_rows",
    "gzip_bytes",
    "invert_prediction",
    "nifti_bytes",
    "ordered_source_datasets",
    "segment_scans",
    "series_uids",
    "write_dicom_series",
    "write_mask_nifti",
    "write_nifti",
    "write_probabilities_nifti",
    "write_results_csv",
    "write_results_json",
]


def __getattr__(name: str) -> object:
    # the batch pipelines import medmamba.data.batch, which imports medmamba.io.results: load them lazily
    if name in ("segment_scans", "classify_scans"):
        from medmamba.io import pipeline

        return getattr(pipeline, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
