"""Decoding DICOM pixel data: transfer syntaxes, rescale slope/intercept, photometric interpretation.

Compressed transfer syntaxes (JPEG, JPEG-LS, JPEG 2000, RLE) are decoded by pydicom's pixel
plugins; ``pylibjpeg`` with ``pylibjpeg-libjpeg``, ``pylibjpeg-openjpeg`` and ``pylibjpeg-rle``
(the ``dicom`` extra of medmamba) cover all of them. When no plugin can decode a syntax, a
:class:`~medmamba.io.errors.ScanLoadError` says which syntax it is and what to install.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.uid import UID

from medmamba.io.errors import ScanLoadError

__all__ = [
    "DECODER_HINT",
    "MAX_DECODED_VOXELS",
    "apply_rescale",
    "check_decodable",
    "check_pixel_budget",
    "decode_frames",
    "frame_rescale",
    "to_monochrome2",
]

DECODER_HINT = (
    "install the pixel-data plugins: pip install pylibjpeg pylibjpeg-libjpeg pylibjpeg-openjpeg "
    "pylibjpeg-rle (the 'dicom' extra of medmamba)"
)


def _transfer_syntax(ds: Dataset) -> UID:
    meta = getattr(ds, "file_meta", None)
    uid = getattr(meta, "TransferSyntaxUID", None) if meta is not None else None
    return UID(uid) if uid is not None else pydicom.uid.ImplicitVRLittleEndian


def check_decodable(ds: Dataset, where: str) -> None:
    """Raise if no installed plugin can decode the pixel data of ``ds``.

    Args:
        ds: A dataset (pixel data not needed).
        where: The file or series named in the error message.

    Raises:
        ScanLoadError: If the transfer syntax is not one, has no decoder, or its decoders' plugins
            are missing.
    """
    uid = _transfer_syntax(ds)
    if not uid.is_transfer_syntax:
        raise ScanLoadError(
            f"{where}: TransferSyntaxUID={str(uid)!r} is not a DICOM transfer syntax; expected e.g. "
            f"{pydicom.uid.ExplicitVRLittleEndian} (Explicit VR Little Endian); the file meta header is damaged"
        )
    if not uid.is_compressed:
        return
    try:
        decoder = pydicom.pixels.get_decoder(uid)
    except NotImplementedError as exc:
        raise ScanLoadError(
            f"{where}: transfer syntax {uid.name} ({uid}) is not supported by any pixel-data decoder "
            f"({exc}); convert the series to an uncompressed or JPEG/JPEG-LS/JPEG 2000/RLE syntax"
        ) from None
    if not decoder.is_available:
        raise ScanLoadError(
            f"{where}: cannot decode compressed transfer syntax {uid.name} ({uid}): no decoder plugin "
            f"is installed; {DECODER_HINT}"
        )


#: Most voxels (frames x rows x columns x samples) a DICOM file may declare before it is decoded:
#: 2**30, 2 GiB of 16-bit values. A few-kilobyte file declaring 2**31 frames or 65535 x 65535 pixels
#: would otherwise ask for gigabytes before any error; raise it with ``max_voxels`` for larger data.
MAX_DECODED_VOXELS = 2**30


def check_pixel_budget(ds: Dataset, where: str, file_size: int | None = None, max_voxels: int = MAX_DECODED_VOXELS) -> int:
    """Check the pixel matrix a DICOM header declares before anything is allocated for it.

    Args:
        ds: the dataset (its pixel data need not be read).
        where: the file named in error messages.
        file_size: the file's size in bytes; for an uncompressed transfer syntax the declared pixels
            must fit in it.
        max_voxels: the largest ``frames x rows x columns x samples`` accepted.

    Returns:
        The number of declared voxels.

    Raises:
        ScanLoadError: a count is not a positive integer, the matrix exceeds ``max_voxels``, or an
            uncompressed file is too small for what it declares.
    """
    counts = {}
    for name, default in (("NumberOfFrames", 1), ("Rows", None), ("Columns", None), ("SamplesPerPixel", 1)):
        raw = ds.get(name, default)
        raw = default if raw in (None, "") else raw
        try:
            value = int(raw) if raw is not None else None
        except (TypeError, ValueError):
            value = None
        if value is None or value < 1:
            raise ScanLoadError(f"{where}: {name} is {raw!r}; expected a positive integer")
        counts[name] = value
    voxels = counts["NumberOfFrames"] * counts["Rows"] * counts["Columns"] * counts["SamplesPerPixel"]
    matrix = f"{counts['NumberOfFrames']} frame(s) of {counts['Rows']} x {counts['Columns']} x {counts['SamplesPerPixel']}"
    if voxels > max_voxels:
        raise ScanLoadError(f"{where}: declares {matrix} = {voxels} voxels, more than the limit of {max_voxels}; "
                            "the header is corrupt or the object is too large to load")
    bits = int(ds.get("BitsAllocated", 16) or 16)
    if file_size is not None and not _transfer_syntax(ds).is_compressed and "PixelData" in ds:
        needed = voxels * bits // 8
        if needed > file_size:
            raise ScanLoadError(f"{where}: declares {matrix} at {bits} bits ({needed} bytes of pixel data) but the "
                                f"file holds {file_size} bytes; the file is truncated or its header is corrupt")
    return voxels


def frame_rescale(ds: Dataset, frame_group: Dataset | None = None) -> tuple[float, float]:
    """Return the (slope, intercept) of the modality rescale for one frame.

    Looks in the per-frame functional group, then the shared functional group (enhanced objects),
    then the top level; defaults to (1, 0).

    Args:
        ds: The dataset.
        frame_group: The item of ``PerFrameFunctionalGroupsSequence`` for the frame, if any.

    Returns:
        ``(slope, intercept)`` as floats.
    """
    candidates: list[Dataset] = []
    if frame_group is not None:
        candidates.append(frame_group)
    shared = ds.get("SharedFunctionalGroupsSequence")
    if shared:
        candidates.append(shared[0])
    for group in candidates:
        seq = group.get("PixelValueTransformationSequence")
        if seq and "RescaleSlope" in seq[0]:
            return float(seq[0].RescaleSlope), float(seq[0].get("RescaleIntercept", 0.0))
    slope = ds.get("RescaleSlope")
    intercept = ds.get("RescaleIntercept")
    return (float(slope) if slope not in (None, "") else 1.0, float(intercept) if intercept not in (None, "") else 0.0)


def decode_frames(ds: Dataset, where: str) -> np.ndarray:
    """Decode the stored pixel values of ``ds`` as ``(frames, rows, cols[, samples])``.

    Colour data in YCbCr is converted to RGB; MONOCHROME1 is *not* inverted here (see
    :func:`to_monochrome2`).

    Args:
        ds: A fully read dataset.
        where: The file named in error messages.

    Returns:
        The raw stored values with a leading frame axis.

    Raises:
        ScanLoadError: If there is no pixel data, no decoder, or the data are corrupt.
    """
    if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
        raise ScanLoadError(f"{where}: the DICOM object has no pixel data")
    check_decodable(ds, where)
    check_pixel_budget(ds, where)  # before the decoder allocates what the header declares
    try:
        arr = ds.pixel_array
    except Exception as exc:  # pydicom raises many types for truncated/corrupt data
        uid = _transfer_syntax(ds)
        raise ScanLoadError(
            f"{where}: pixel data cannot be decoded ({type(exc).__name__}: {exc}); transfer syntax "
            f"{uid.name}; the file may be truncated or corrupt"
        ) from None
    n_frames = int(ds.get("NumberOfFrames", 1) or 1)
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    spatial_ndim = arr.ndim - (1 if samples > 1 else 0)
    if n_frames == 1 and spatial_ndim == 2:
        arr = arr[None]
    return np.asarray(arr)


def to_monochrome2(values: np.ndarray, ds: Dataset) -> np.ndarray:
    """Invert MONOCHROME1 data (high value = dark) so that high values are bright, as everywhere else.

    Args:
        values: Rescaled values of the object.
        ds: The dataset (for ``PhotometricInterpretation``).

    Returns:
        ``values`` unchanged for any other photometric interpretation, else ``max + min - values``.
    """
    if str(ds.get("PhotometricInterpretation", "")).upper() != "MONOCHROME1" or values.size == 0:
        return values
    return values.max() + values.min() - values


def apply_rescale(frames: np.ndarray, rescales: Sequence[tuple[float, float]]) -> np.ndarray:
    """Apply one (slope, intercept) per frame and return float32.

    Args:
        frames: ``(frames, rows, cols[, samples])`` stored values.
        rescales: One ``(slope, intercept)`` per frame.

    Returns:
        float32 array of the same shape.

    Raises:
        ValueError: If the number of rescale pairs differs from the number of frames.
    """
    if len(rescales) != frames.shape[0]:
        raise ValueError(f"rescales has {len(rescales)} entries, expected one per frame ({frames.shape[0]})")
    out = frames.astype(np.float32, copy=True)
    for i, (slope, intercept) in enumerate(rescales):
        if slope != 1.0 or intercept != 0.0:
            out[i] = out[i] * np.float32(slope) + np.float32(intercept)
    return out

