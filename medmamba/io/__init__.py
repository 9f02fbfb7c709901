"""Files on disk: DICOM folder scans and geometry, privacy of what is written, and the writers.

The lowest layer of scan handling: scanning a folder for DICOM series and their plane geometry
(:mod:`~medmamba.io.dicom_scan`, :mod:`~medmamba.io.dicom_geometry`), the load error
(:class:`~medmamba.io.errors.ScanLoadError`), the MR acquisition parameters and the weighting they
imply (:mod:`~medmamba.io.mr_acquisition`), which DICOM values identify a patient
(:mod:`~medmamba.io.privacy`), and the result writers: atomic files, reproducible NIfTI, DICOM
series, DICOM SEG, classification tables. :mod:`medmamba.data` reads scans into volumes on top of
it; the batch pipelines that read scans and write results (``segment_scans``, ``classify_scans``)
live in :mod:`medmamba.apps.pipeline`. This package imports neither.
"""

from __future__ import annotations

from medmamba.io.atomic import atomic_path, atomic_write_bytes, atomic_write_text, gzip_bytes
from medmamba.io.dicom_series import PatientInfo, SeriesUIDs, series_uids, write_dicom_series
from medmamba.io.dicom_seg import REQUIRED_PATIENT_STUDY_KEYWORDS, ordered_source_datasets, write_dicom_seg
from medmamba.io.mr_acquisition import MR_ACQUISITION_META_KEYS, describe_acquisition, mr_weighting
from medmamba.io.nifti import nifti_bytes, write_nifti
from medmamba.io.prediction import invert_prediction, write_mask_nifti, write_probabilities_nifti
from medmamba.io.segment_codes import SegmentCode
from medmamba.io.results import clean_rows, write_results_csv, write_results_json

__all__ = [
    "MR_ACQUISITION_META_KEYS",
    "REQUIRED_PATIENT_STUDY_KEYWORDS",
    "PatientInfo",
    "SegmentCode",
    "SeriesUIDs",
    "atomic_path",
    "atomic_write_bytes",
    "atomic_write_text",
    "clean_rows",
    "describe_acquisition",
    "gzip_bytes",
    "invert_prediction",
    "mr_weighting",
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
