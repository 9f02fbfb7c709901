"""Splitting a DICOM series into stacks of consistent geometry, for series that mix several.

One ``SeriesInstanceUID`` can hold images that are not one volume: a localizer with three planes,
slices of two matrix sizes or pixel spacings, or some slices without a position. The reader refuses
such a series by default (one affine for all of them would be silently wrong); where the user asks
for it (``read_dicom(..., on_mixed="largest")`` or :func:`medmamba.data.read_dicom_stacks`), the
series is split here into *stacks*: groups of images that agree on matrix size, samples per pixel,
pixel spacing, image orientation and whether they carry a position. Each stack is then read and
validated like a series of its own (gaps, uneven spacing and non-finite positions still fail).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from pydicom.dataset import Dataset

from medmamba.io.dicom_scan import DicomInstance, DicomSeries

__all__ = ["pixel_spacing_of", "split_stacks", "stack_signature"]


def pixel_spacing_of(hdr: Dataset) -> tuple[str, tuple[float, float]] | None:
    """``(attribute, (row, column) spacing)`` of one image, or ``None`` without a valid one.

    Args:
        hdr: The image's header.

    Returns:
        ``PixelSpacing`` (or else ``ImagerPixelSpacing``) as two finite positive floats, with the
        attribute's name; ``None`` when neither is valid.
    """
    for key in ("PixelSpacing", "ImagerPixelSpacing"):
        val = hdr.get(key)
        try:
            pair = (float(val[0]), float(val[1])) if val is not None and len(val) == 2 else None
        except (TypeError, ValueError):
            pair = None
        if pair is not None and all(np.isfinite(v) and v > 0 for v in pair):
            return key, pair
    return None


def _orientation(hdr: Dataset) -> tuple[float, ...] | None:
    val = hdr.get("ImageOrientationPatient")
    try:
        values = tuple(float(v) for v in val) if val is not None else ()
    except (TypeError, ValueError):
        return None
    return values if len(values) == 6 and all(np.isfinite(values)) else None


def stack_signature(hdr: Dataset) -> dict[str, Any]:
    """What images of one stack must share.

    Args:
        hdr: An image header.

    Returns:
        ``{"size": (rows, columns, samples), "frames": multi-frame?, "spacing": (r, c) or None,
        "orientation": six direction cosines or None, "positioned": has ImagePositionPatient}``.
    """
    spacing = pixel_spacing_of(hdr)
    return {
        "size": (int(hdr.get("Rows", 0) or 0), int(hdr.get("Columns", 0) or 0), int(hdr.get("SamplesPerPixel", 1) or 1)),
        "frames": int(hdr.get("NumberOfFrames", 1) or 1) > 1,
        "spacing": None if spacing is None else spacing[1],
        "orientation": _orientation(hdr),
        "positioned": hdr.get("ImagePositionPatient") is not None,
    }


def _close(a: Sequence[float] | None, b: Sequence[float] | None, rel: float, abs_: float) -> bool:
    if a is None or b is None:
        return a is None and b is None
    return all(abs(x - y) <= max(abs_, rel * max(abs(x), abs(y))) for x, y in zip(a, b))


def _same_stack(a: dict[str, Any], b: dict[str, Any], tol: float) -> bool:
    return (
        a["size"] == b["size"]
        and a["frames"] == b["frames"]
        and a["positioned"] == b["positioned"]
        and _close(a["spacing"], b["spacing"], tol, 0.0)
        and _close(a["orientation"], b["orientation"], 0.0, tol)
    )


def split_stacks(series: DicomSeries, tolerance: float = 1e-3) -> tuple[DicomSeries, ...]:
    """Split a series into stacks of images with one geometry, the largest first.

    Args:
        series: The series (as found by :func:`medmamba.data.scan_dicom_folder`).
        tolerance: Relative tolerance on pixel spacing and absolute tolerance on the direction
            cosines within a stack (the reader's own tolerances).

    Returns:
        The stacks as series with the same ``series_uid``, ordered by number of images (largest
        first; ties by first file name); one stack when the series is consistent. A multi-frame
        file is a stack of its own.

    Raises:
        ValueError: If ``tolerance`` is not positive.
    """
    if not tolerance > 0:
        raise ValueError(f"tolerance must be > 0, got {tolerance!r}")
    groups: list[tuple[dict[str, Any], list[DicomInstance]]] = []
    for inst in series.instances:
        sig = stack_signature(inst.header)
        for ref, members in groups:
            if not sig["frames"] and _same_stack(ref, sig, tolerance):
                members.append(inst)
                break
        else:
            groups.append((sig, [inst]))
    ordered = sorted(groups, key=lambda g: (-len(g[1]), g[1][0].path.name))
    return tuple(DicomSeries(series_uid=series.series_uid, instances=tuple(members)) for _, members in ordered)
