"""Fuzzing the scan loader: random byte flips, truncations and header edits of DICOM and NIfTI files.

Every mutant must end, within a time limit per file and under a memory cap, in a loaded image or a
:class:`~medmamba.data.ScanLoadError`: never a hang, another exception type, or an allocation of
gigabytes from a few bytes of header. The mutants are made from a seeded random stream, so a
failure is reproducible; the loads run in a child process (``tests/fuzz_scan_worker.py``) that has
``RLIMIT_DATA`` set and an alarm per file.
"""

from __future__ import annotations

import gzip
import json
import struct
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file

from medmamba.io import write_dicom_series, write_nifti

HERE = Path(__file__).resolve().parent
MEMORY_CAP = 2 * 1024**3  # bytes the loader may allocate in the child (a clean load needs a few MB)
SECONDS_PER_FILE = 20
N_FLIPS, N_TRUNCATIONS = 24, 12

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="RLIMIT_DATA and SIGALRM caps need Linux")


def _dicom_bases(root: Path) -> dict[str, Path]:
    stored = (np.random.default_rng(0).random((16, 12, 4)) * 1000).astype(np.int16)
    affine = np.diag([0.8, 0.8, 2.5, 1.0])
    write_dicom_series(root / "ct", stored - 500, affine, modality="CT", rescale_intercept=-1024.0, uid_entropy="fuzz-ct")
    write_dicom_series(root / "mr", stored, affine, modality="MR", uid_entropy="fuzz-mr")
    return {"ct": root / "ct", "mr": root / "mr"}


def _header_edits() -> list[tuple[str, Callable[[pydicom.Dataset], None]]]:
    def setter(keyword: str, value: object) -> Callable[[pydicom.Dataset], None]:
        return lambda ds: setattr(ds, keyword, value)

    def delete(keyword: str) -> Callable[[pydicom.Dataset], None]:
        return lambda ds: delattr(ds, keyword) if keyword in ds else None

    def transfer_syntax(uid: str) -> Callable[[pydicom.Dataset], None]:
        return lambda ds: setattr(ds.file_meta, "TransferSyntaxUID", uid)

    return [
        ("rows_huge", setter("Rows", 65535)), ("columns_huge", setter("Columns", 65535)), ("rows_zero", setter("Rows", 0)),
        ("frames_huge", setter("NumberOfFrames", 2**31 - 1)), ("frames_zero", setter("NumberOfFrames", 0)),
        ("frames_negative", setter("NumberOfFrames", "-3")), ("bits_1", setter("BitsAllocated", 1)),
        ("bits_12", setter("BitsAllocated", 12)), ("bits_64", setter("BitsAllocated", 64)),
        ("bits_stored_40", setter("BitsStored", 40)), ("samples_3", setter("SamplesPerPixel", 3)),
        ("photometric_ybr", setter("PhotometricInterpretation", "YBR_FULL_422")),
        ("photometric_palette", setter("PhotometricInterpretation", "PALETTE COLOR")),
        ("pixel_representation_2", setter("PixelRepresentation", 2)), ("no_pixel_data", delete("PixelData")),
        ("empty_pixel_data", setter("PixelData", b"")), ("spacing_nan", setter("PixelSpacing", ["nan", "1"])),
        ("spacing_zero", setter("PixelSpacing", ["0", "0"])), ("spacing_negative", setter("PixelSpacing", ["-1", "1"])),
        ("spacing_one_value", setter("PixelSpacing", ["1"])), ("position_inf", setter("ImagePositionPatient", ["inf", "0", "0"])),
        ("position_short", setter("ImagePositionPatient", ["0", "0"])),
        ("orientation_zero", setter("ImageOrientationPatient", ["0"] * 6)),
        ("orientation_parallel", setter("ImageOrientationPatient", ["1", "0", "0", "1", "0", "0"])),
        ("slope_zero", setter("RescaleSlope", "0")), ("slope_nan", setter("RescaleSlope", "nan")),
        ("intercept_huge", setter("RescaleIntercept", "1e308")), ("modality_seg", setter("Modality", "SEG")),
        ("sop_class_rtstruct", setter("SOPClassUID", "1.2.840.10008.5.1.4.1.1.481.3")),
        ("ts_jpeg_baseline", transfer_syntax("1.2.840.10008.1.2.4.50")), ("ts_rle", transfer_syntax("1.2.840.10008.1.2.5")),
        ("ts_deflate", transfer_syntax("1.2.840.10008.1.2.1.99")), ("ts_unknown", transfer_syntax("1.2.3.4.5")),
        ("ts_big_endian", transfer_syntax("1.2.840.10008.1.2.2")),
    ]


def _nifti_bases(root: Path) -> dict[str, bytes]:
    data = np.random.default_rng(1).random((12, 10, 8)).astype(np.float32)
    raw = write_nifti(root / "base.nii", data, np.diag([2.0, 2.0, 2.0, 1.0])).read_bytes()
    return {"nii": raw}


def _nifti_header_edits() -> list[tuple[str, int, str, object]]:
    """(name, byte offset in the NIfTI-1 header, struct format, value)."""
    return [
        ("dim0_9", 40, "<h", 9), ("dim0_0", 40, "<h", 0), ("dim1_huge", 42, "<h", 32767), ("dim1_negative", 42, "<h", -5),
        ("dim3_zero", 46, "<h", 0), ("dim4_huge", 48, "<h", 32767), ("datatype_unknown", 70, "<h", 999),
        ("datatype_complex", 70, "<h", 32), ("datatype_rgb", 70, "<h", 128), ("bitpix_wrong", 72, "<h", 7),
        ("pixdim1_nan", 80, "<f", float("nan")), ("pixdim1_zero", 80, "<f", 0.0), ("pixdim1_negative", 80, "<f", -2.0),
        ("vox_offset_huge", 108, "<f", 1e12), ("vox_offset_nan", 108, "<f", float("nan")), ("vox_offset_small", 108, "<f", 10.0),
        ("scl_slope_nan", 112, "<f", float("nan")), ("scl_slope_inf", 112, "<f", float("inf")),
        ("qform_code_9", 252, "<h", 9), ("sform_code_0", 254, "<h", 0), ("srow_x_nan", 280, "<f", float("nan")),
        ("srow_z_zero", 312, "<f", 0.0), ("quatern_b_huge", 256, "<f", 1e30), ("sizeof_hdr_wrong", 0, "<i", 999),
        ("magic_wrong", 344, "4s", b"xx1\0"),
    ]


def _make_mutants(root: Path) -> Path:
    rng = np.random.default_rng(2026)
    out = root / "mutants"
    out.mkdir()
    # DICOM: one file of a 4-slice series mutated, the others intact; and single files
    for kind, series in _dicom_bases(root / "bases").items():
        files = sorted(series.glob("*.dcm"))
        raw = files[1].read_bytes()

        def with_mutant(name: str, mutant: bytes, files: list[Path] = files) -> None:
            folder = out / f"{name}"
            folder.mkdir()
            for f in files:
                (folder / f.name).write_bytes(f.read_bytes())
            (folder / files[1].name).write_bytes(mutant)

        for i in range(N_FLIPS):
            buf = bytearray(raw)
            for pos in rng.integers(0, len(buf), int(rng.integers(1, 9))):
                buf[pos] ^= int(rng.integers(1, 256))
            with_mutant(f"dcm_{kind}_flip{i:02d}", bytes(buf))
        for i in range(N_TRUNCATIONS):
            with_mutant(f"dcm_{kind}_trunc{i:02d}", raw[: int(rng.integers(0, len(raw)))])
        for name, edit in _header_edits():
            ds = pydicom.dcmread(files[1])
            edit(ds)
            try:
                ds.save_as(out / f"dcm_{kind}_{name}.dcm", enforce_file_format=True)  # a single file
            except Exception:  # noqa: BLE001 - pydicom refuses to write some edits; skip those
                continue
    ct_small = Path(get_testdata_file("CT_small.dcm"))
    raw = ct_small.read_bytes()
    for i in range(N_TRUNCATIONS):
        (out / f"ct_small_trunc{i:02d}.dcm").write_bytes(raw[: int(rng.integers(0, len(raw)))])
    # NIfTI: header edits, flips, truncations; plain and gzipped
    for kind, raw in _nifti_bases(root / "bases").items():
        for name, offset, fmt, value in _nifti_header_edits():
            buf = bytearray(raw)
            struct.pack_into(fmt, buf, offset, value)
            (out / f"nii_{name}.nii").write_bytes(bytes(buf))
            (out / f"nii_{name}.nii.gz").write_bytes(gzip.compress(bytes(buf), mtime=0))
        for i in range(N_FLIPS):
            buf = bytearray(raw)
            for pos in rng.integers(0, 352, int(rng.integers(1, 5))):  # in the header and its extension flag
                buf[pos] ^= int(rng.integers(1, 256))
            (out / f"nii_flip{i:02d}.nii").write_bytes(bytes(buf))
        packed = gzip.compress(raw, mtime=0)
        for i in range(N_TRUNCATIONS):
            (out / f"nii_trunc{i:02d}.nii").write_bytes(raw[: int(rng.integers(0, len(raw)))])
            (out / f"nii_gz_trunc{i:02d}.nii.gz").write_bytes(packed[: int(rng.integers(0, len(packed)))])
    return out


def test_every_mutant_loads_or_raises_scan_load_error_in_time_and_memory(tmp_path: Path) -> None:
    mutants = _make_mutants(tmp_path)
    n = len(list(mutants.iterdir()))
    assert n > 200
    proc = subprocess.run(
        [sys.executable, str(HERE / "fuzz_scan_worker.py"), str(mutants), str(MEMORY_CAP), str(SECONDS_PER_FILE)],
        capture_output=True, text=True, timeout=240,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    results = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert len(results) == n
    bad = [r for r in results if r["outcome"] not in ("ok", "ScanLoadError")]
    assert bad == [], "\n".join(f"{r['name']}: {r['outcome']}: {r['message']}" for r in bad)
    refused = sum(r["outcome"] == "ScanLoadError" for r in results)
    assert refused > n // 3  # most mutants are broken, and said to be
