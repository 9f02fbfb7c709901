"""The error raised when a scan cannot be loaded."""

from __future__ import annotations

__all__ = ["ScanLoadError"]


class ScanLoadError(ValueError):
    """A scan (DICOM series, DICOM file or NIfTI file) cannot be turned into a volume.

    The message names the path (or series) concerned, what was found and what was expected. It never
    contains patient-identifying DICOM values. Being a ``ValueError``, it is caught by code that
    handles bad input generically; the batch pipeline records its message as the failure reason.
    """
