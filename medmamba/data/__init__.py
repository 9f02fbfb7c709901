"""Scans in (DICOM series, multi-frame DICOM, NIfTI), batch processing, and the default data set.

Main entry points:

* :func:`load_scan` - a path to a channel-first ``monai.data.MetaTensor`` with a RAS affine.
* :func:`read_dicom`, :func:`scan_dicom_folder` - the DICOM reading underneath.
* :func:`find_scans` - the cases (NIfTI files, DICOM series) under an input path, with case ids.
* :func:`run_batch` - robust per-case processing (failures recorded, inputs untouched).
* :func:`scrub_meta`, :class:`Redactor` - keeping patient-identifying DICOM values out of outputs.
* ``python -m medmamba.data make-default`` - build the embedded semi-synthetic data set.
"""

from __future__ import annotations

from medmamba.data.batch import BatchCase, BatchReport, CaseOutcome, case_redactor, run_batch
from medmamba.io.dicom_geometry import LPS_TO_RAS
from medmamba.data.dicom_reader import (
    SAFE_DICOM_META_KEYS,
    DicomGeometryWarning,
    DicomSeriesReader,
    DicomVolume,
    read_dicom,
    read_dicom_stacks,
)
from medmamba.io.dicom_scan import DicomSkipWarning, FolderScan, scan_dicom_folder, select_series
from medmamba.data.dicom_stacks import split_stacks
from medmamba.data.discovery import find_scans
from medmamba.io.errors import ScanLoadError
from medmamba.data.loading import NiftiHeaderWarning, check_scan, is_nifti_path, load_scan
from medmamba.io.privacy import IDENTIFYING_KEYWORDS, Redactor, identifying_values, is_identifying_key, scrub_meta

__all__ = [
    "IDENTIFYING_KEYWORDS",
    "LPS_TO_RAS",
    "BatchCase",
    "BatchReport",
    "CaseOutcome",
    "Redactor",
    "case_redactor",
    "identifying_values",
    "is_identifying_key",
    "run_batch",
    "scrub_meta",
    "SAFE_DICOM_META_KEYS",
    "DicomGeometryWarning",
    "DicomSeriesReader",
    "DicomSkipWarning",
    "DicomVolume",
    "FolderScan",
    "NiftiHeaderWarning",
    "ScanLoadError",
    "check_scan",
    "find_scans",
    "is_nifti_path",
    "load_scan",
    "read_dicom",
    "read_dicom_stacks",
    "scan_dicom_folder",
    "split_stacks",
    "select_series",
]
