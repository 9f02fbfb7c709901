"""The error raised when a scan cannot be loaded, and how loaders report what they had to assume."""

from __future__ import annotations

import logging
import warnings

__all__ = ["ScanLoadError", "warn_and_log"]


class ScanLoadError(ValueError):
    """A scan (DICOM series, DICOM file or NIfTI file) cannot be turned into a volume.

    The message names the path (or series) concerned, what was found and what was expected. It never
    contains patient-identifying DICOM values. Being a ``ValueError``, it is caught by code that
    handles bad input generically; the batch pipeline records its message as the failure reason.
    """


def warn_and_log(message: str, category: type[Warning], logger: logging.Logger, stacklevel: int = 4) -> None:
    """Report a loader's assumption both ways: a log record (batch runs keep logs) and a warning of
    ``category`` (interactive users and tests see warnings); ``stacklevel`` points at the caller's caller."""
    logger.warning(message)
    warnings.warn(message, category, stacklevel=stacklevel + 1)
