"""Writing results: atomic files, reproducible NIfTI, DICOM series, DICOM SEG, classification tables.

The batch pipelines that read scans and write these results (``segment_scans``, ``classify_scans``)
sit above :mod:`medmamba.data` and live in :mod:`medmamba.io.pipeline`, which this package does not
import, so that :mod:`medmamba.data` can use the writers here without an import cycle.
"""

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
    "clean_rows",
    "gzip_bytes",
    "invert_prediction",
    "nifti_bytes",
    "ordered_source_datasets",
    "series_uids",
    "write_dicom_seg",
    "write_dicom_series",
    "write_mask_nifti",
    "write_nifti",
    "write_probabilities_nifti",
    "write_results_csv",
    "write_results_json",
]
