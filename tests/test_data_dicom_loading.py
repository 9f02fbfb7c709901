"""Loading DICOM (real files from pydicom / pydicom-data, and series written here) and NIfTI."""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from monai.transforms import LoadImage, Orientation
from pydicom.data import get_testdata_file

from medmamba.data import (
    DicomGeometryWarning,
    DicomSeriesReader,
    DicomSkipWarning,
    ScanLoadError,
    load_scan,
    read_dicom,
)
from medmamba.io.dicom_geometry import LPS_TO_RAS
from medmamba.io.dicom_series import PatientInfo, write_dicom_series
from medmamba.io.nifti import write_nifti

pytestmark = pytest.mark.filterwarnings("ignore:.*nvImageCodec.*")

NIBABEL_DATA = Path(nib.__file__).parent / "tests" / "data"


def _testfile(name: str) -> str:
    path = get_testdata_file(name)
    if path is None:
        pytest.skip(f"{name} not shipped by pydicom / pydicom-data")
    return str(path)


def _expected_values(name: str) -> np.ndarray:
    """Rescaled pixel values of a single-frame file, laid out (cols, rows) as load_scan does."""
    ds = pydicom.dcmread(_testfile(name))
    arr = ds.pixel_array.astype(np.float64) * float(ds.get("RescaleSlope", 1)) + float(ds.get("RescaleIntercept", 0))
    return arr.T


# ---------------------------------------------------------------- real files of many modalities


@pytest.mark.parametrize(
    ("name", "modality", "shape"),
    [
        ("CT_small.dcm", "CT", (1, 128, 128)),
        ("MR_small.dcm", "MR", (1, 64, 64)),
        ("693_UNCR.dcm", "CT", (1, 512, 512)),
        ("MR2_UNCR.dcm", "MR", (1, 1024, 1024)),
        ("RG1_UNCR.dcm", "CR", (1, 1841, 1955)),
        ("US1_UNCR.dcm", "US", (3, 640, 480)),
        ("SC_rgb_jpeg_dcmtk.dcm", "OT", (3, 100, 100)),
    ],
)
def test_real_single_images_load_with_modality_and_layout(name: str, modality: str, shape: tuple[int, ...]) -> None:
    with pytest.warns(DicomGeometryWarning) if name in ("RG1_UNCR.dcm", "US1_UNCR.dcm") else contextlib.nullcontext():
        img = load_scan(_testfile(name))
    assert tuple(img.shape) == shape
    assert img.meta["modality"] == modality
    assert img.dtype.is_floating_point
    assert img.affine.shape == (4, 4)
    assert np.all(np.isfinite(img.numpy()))


def test_ct_is_in_hounsfield_units_and_affine_is_ras() -> None:
    img = load_scan(_testfile("CT_small.dcm"))
    ds = pydicom.dcmread(_testfile("CT_small.dcm"))
    assert float(ds.RescaleIntercept) == -1024.0
    np.testing.assert_allclose(img[0].numpy(), _expected_values("CT_small.dcm"))
    assert img.numpy().min() < -500  # air in HU, not raw stored values
    # LPS -> RAS: the first voxel of CT_small is at LPS (-158.1, -179.0, -75.7)
    ipp = np.asarray(ds.ImagePositionPatient, dtype=float)
    np.testing.assert_allclose(img.affine.numpy()[:3, 3], [-ipp[0], -ipp[1], ipp[2]], atol=1e-4)
    sp = [float(v) for v in ds.PixelSpacing]
    np.testing.assert_allclose(np.diag(img.affine.numpy())[:2], [-sp[1], -sp[0]], atol=1e-6)
    assert img.meta["space"] == "RAS"


def test_monochrome1_is_inverted_so_bright_means_dense() -> None:
    raw = pydicom.dcmread(_testfile("RG1_UNCR.dcm"))
    assert raw.PhotometricInterpretation == "MONOCHROME1"
    with pytest.warns(DicomGeometryWarning):
        img = load_scan(_testfile("RG1_UNCR.dcm"))
    stored = raw.pixel_array.T.astype(np.float64)
    np.testing.assert_allclose(img[0].numpy(), stored.max() + stored.min() - stored)


@pytest.mark.parametrize(
    ("compressed", "reference"),
    [
        ("MR_small_RLE.dcm", "MR_small.dcm"),
        ("MR_small_jpeg_ls_lossless.dcm", "MR_small.dcm"),
        ("693_J2KR.dcm", "693_UNCR.dcm"),
        ("MR2_J2KR.dcm", "MR2_UNCR.dcm"),
        ("US1_J2KR.dcm", "US1_UNCR.dcm"),
        ("emri_small_RLE.dcm", "emri_small.dcm"),
        ("emri_small_jpeg_2k_lossless.dcm", "emri_small.dcm"),
        ("MR_small_bigendian.dcm", "MR_small.dcm"),
    ],
)
@pytest.mark.filterwarnings("ignore::medmamba.data.DicomGeometryWarning")
def test_lossless_compressed_syntaxes_decode_to_the_uncompressed_values(compressed: str, reference: str) -> None:
    ts = pydicom.dcmread(_testfile(compressed), stop_before_pixels=True).file_meta.TransferSyntaxUID
    a = load_scan(_testfile(compressed))
    b = load_scan(_testfile(reference))
    assert a.meta["transfer_syntax_uid"] == str(ts)
    assert a.shape == b.shape
    np.testing.assert_array_equal(a.numpy(), b.numpy())
    np.testing.assert_allclose(a.affine.numpy(), b.affine.numpy())


def test_lossy_jpeg_decodes() -> None:
    img = load_scan(_testfile("SC_rgb_jpeg_dcmtk.dcm"))
    assert img.shape[0] == 3 and float(img.max()) > 100  # RGB, real content


def test_missing_decoder_plugin_is_refused_with_a_clear_message(monkeypatch: pytest.MonkeyPatch) -> None:
    class _Unavailable:
        is_available = False

    monkeypatch.setattr(pydicom.pixels, "get_decoder", lambda uid: _Unavailable())
    with pytest.raises(ScanLoadError, match=r"JPEG 2000.*no decoder plugin.*pylibjpeg"):
        load_scan(_testfile("693_J2KR.dcm"))


def test_unsupported_transfer_syntax_is_refused(tmp_path: Path) -> None:
    ds = pydicom.dcmread(_testfile("MR_small_RLE.dcm"))
    ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.100"  # MPEG2: no decoder exists
    path = tmp_path / "mpeg2.dcm"
    ds.save_as(path, enforce_file_format=True)
    with pytest.raises(ScanLoadError, match=r"MPEG2.*not supported"):
        load_scan(path)


# ---------------------------------------------------------------- multi-frame


def test_enhanced_ct_frames_are_ordered_by_position_with_per_frame_rescale() -> None:
    path = _testfile("eCT_Supplemental.dcm")
    ds = pydicom.dcmread(path)
    z = [float(g.PlanePositionSequence[0].ImagePositionPatient[2]) for g in ds.PerFrameFunctionalGroupsSequence]
    img = load_scan(path)
    assert img.shape == (1, 512, 512, 2)
    # IOP (-1,0,0,0,1,0): the normal is -z, so the frame with the larger z comes first
    first = int(np.argmax(z))
    frames = ds.pixel_array.astype(np.float64) - 1024.0  # shared PixelValueTransformation: intercept -1024
    np.testing.assert_allclose(img[0, ..., 0].numpy(), frames[first].T)
    np.testing.assert_allclose(img.affine.numpy()[:3, 2], [0, 0, -10.0], atol=1e-4)
    assert img.affine.numpy()[2, 3] == pytest.approx(max(z))


def test_multiframe_without_positions_stacks_frames_with_a_warning() -> None:
    with pytest.warns(DicomGeometryWarning, match="without per-frame positions"):
        img = load_scan(_testfile("emri_small.dcm"))
    assert img.shape == (1, 64, 64, 10)
    assert abs(float(img.affine[2, 2])) == pytest.approx(1.2)  # SpacingBetweenSlices
    ds = pydicom.dcmread(_testfile("emri_small.dcm"))
    np.testing.assert_array_equal(img[0].numpy(), np.transpose(ds.pixel_array, (2, 1, 0)))


# ---------------------------------------------------------------- series written by the tests


def _oblique_geometry() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Row/column directions of a plane tilted about x and z, and its normal (LPS)."""
    a, b = np.deg2rad(20.0), np.deg2rad(10.0)
    rz = np.array([[np.cos(b), -np.sin(b), 0], [np.sin(b), np.cos(b), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    rot = rz @ rx
    row, col = rot[:, 0], rot[:, 1]
    return row, col, np.cross(row, col)


def write_shuffled_ct_series(
    folder: Path,
    n: int = 6,
    spacing: float = 2.5,
    skip: tuple[int, ...] = (),
    series_uid: str | None = None,
    seed: int = 0,
) -> dict[str, object]:
    """Write ``n`` slices derived from CT_small on an oblique plane, with shuffled names and numbers.

    Slice ``k`` (in position order) has stored values ``base + 10 k`` so the order is checkable.
    """
    rng = np.random.default_rng(seed)
    src = pydicom.dcmread(_testfile("CT_small.dcm"))
    base = src.pixel_array.astype(np.int16)
    row, col, normal = _oblique_geometry()
    origin = np.array([-40.0, 25.0, 100.0])
    series_uid = series_uid or pydicom.uid.generate_uid()
    folder.mkdir(parents=True, exist_ok=True)
    numbers = rng.permutation(n) + 1
    names = [f"{rng.integers(10**8):08d}.dcm" for _ in range(n)]
    for k in range(n):
        if k in skip:
            continue
        ds = src.copy()
        ds.SeriesInstanceUID = series_uid
        ds.SOPInstanceUID = pydicom.uid.generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.InstanceNumber = int(numbers[k])
        ds.ImageOrientationPatient = [float(v) for v in (*row, *col)]
        ds.ImagePositionPatient = [float(v) for v in origin + normal * spacing * k]
        ds.SliceLocation = None
        ds.PixelData = (base + 10 * k).astype(np.int16).tobytes()
        ds.save_as(folder / names[k], enforce_file_format=True)
    sp = [float(v) for v in src.PixelSpacing]
    expected_lps = np.eye(4)
    expected_lps[:3, 0] = row * sp[1]
    expected_lps[:3, 1] = col * sp[0]
    expected_lps[:3, 2] = normal * spacing
    expected_lps[:3, 3] = origin
    return {"affine": LPS_TO_RAS @ expected_lps, "base": base, "uid": series_uid, "intercept": -1024.0}


def test_shuffled_series_loads_in_position_order_with_the_right_affine(tmp_path: Path) -> None:
    info = write_shuffled_ct_series(tmp_path / "series", n=6, spacing=2.5)
    img = load_scan(tmp_path / "series")
    assert img.shape == (1, 128, 128, 6)
    np.testing.assert_allclose(img.affine.numpy(), info["affine"], atol=1e-4)
    spacing = np.linalg.norm(img.affine.numpy()[:3, :3], axis=0)
    np.testing.assert_allclose(spacing[2], 2.5, atol=1e-4)
    base = info["base"].astype(np.float64).T + info["intercept"]
    for k in range(6):
        np.testing.assert_allclose(img[0, ..., k].numpy(), base + 10 * k)
    assert img.meta["slice_spacing_uneven"] is False
    assert img.meta["series_instance_uid"] == info["uid"]


def test_reversed_slice_order_gives_same_physical_volume(tmp_path: Path) -> None:
    a = write_shuffled_ct_series(tmp_path / "a", n=5, seed=1)
    write_shuffled_ct_series(tmp_path / "b", n=5, seed=2)
    ia, ib = load_scan(tmp_path / "a"), load_scan(tmp_path / "b")
    np.testing.assert_array_equal(ia.numpy(), ib.numpy())
    np.testing.assert_allclose(ia.affine.numpy(), a["affine"], atol=1e-4)


def test_monai_loadimage_accepts_the_reader(tmp_path: Path) -> None:
    info = write_shuffled_ct_series(tmp_path / "s", n=4)
    img = LoadImage(reader=DicomSeriesReader(), image_only=True)(str(tmp_path / "s"))
    assert img.shape == (1, 128, 128, 4)
    np.testing.assert_allclose(img.affine.numpy(), info["affine"], atol=1e-4)


def test_missing_slice_is_an_error_naming_the_gap(tmp_path: Path) -> None:
    write_shuffled_ct_series(tmp_path / "s", n=7, spacing=3.0, skip=(3,))
    with pytest.raises(ScanLoadError, match=r"uneven slice spacing.*6\.000 mm.*1 slice\(s\) missing"):
        load_scan(tmp_path / "s")


def test_missing_slice_loads_with_warning_when_asked(tmp_path: Path) -> None:
    write_shuffled_ct_series(tmp_path / "s", n=7, spacing=3.0, skip=(3,))
    with pytest.warns(DicomGeometryWarning, match="uneven slice spacing"):
        img = load_scan(tmp_path / "s", on_gap="warn")
    assert img.shape[-1] == 6
    assert img.meta["slice_spacing_uneven"] is True


def test_two_series_in_one_folder_are_listed_or_picked(tmp_path: Path) -> None:
    a = write_shuffled_ct_series(tmp_path / "mixed", n=3, seed=1)
    b = write_shuffled_ct_series(tmp_path / "mixed", n=5, seed=2)
    with pytest.raises(ScanLoadError, match="holds 2 image series") as exc:
        load_scan(tmp_path / "mixed")
    assert a["uid"] in str(exc.value) and b["uid"] in str(exc.value)
    assert "files=3" in str(exc.value) and "files=5" in str(exc.value)
    assert load_scan(tmp_path / "mixed", series_uid=b["uid"]).shape[-1] == 5
    with pytest.raises(ScanLoadError, match="not found"):
        load_scan(tmp_path / "mixed", series_uid="1.2.3.4")


def test_duplicate_positions_are_refused(tmp_path: Path) -> None:
    info = write_shuffled_ct_series(tmp_path / "s", n=3, seed=1)
    write_shuffled_ct_series(tmp_path / "s", n=3, seed=2, series_uid=str(info["uid"]))
    with pytest.raises(ScanLoadError, match="share a position"):
        load_scan(tmp_path / "s")


def test_rtstruct_only_folder_is_refused_and_rtstruct_beside_images_is_skipped(tmp_path: Path) -> None:
    only = tmp_path / "rt"
    only.mkdir()
    shutil.copy(_testfile("rtstruct.dcm"), only / "rs.dcm")
    with pytest.warns(DicomSkipWarning, match="RTSTRUCT"), pytest.raises(ScanLoadError, match="no DICOM image series"):
        load_scan(only)
    write_shuffled_ct_series(tmp_path / "mixed", n=3)
    shutil.copy(_testfile("rtstruct.dcm"), tmp_path / "mixed" / "rs.dcm")
    shutil.copy(_testfile("test-SR.dcm"), tmp_path / "mixed" / "sr.dcm")
    with pytest.warns(DicomSkipWarning) as rec:
        img = load_scan(tmp_path / "mixed")
    assert img.shape[-1] == 3
    text = " ".join(str(w.message) for w in rec)
    assert "RTSTRUCT" in text and "SR" in text


def test_single_rtstruct_file_is_not_an_image() -> None:
    with pytest.raises(ScanLoadError, match="not an image"):
        load_scan(_testfile("rtstruct.dcm"))


def test_corrupt_and_foreign_files(tmp_path: Path) -> None:
    folder = tmp_path / "s"
    write_shuffled_ct_series(folder, n=4)
    (folder / "notes.txt").write_text("not dicom")
    with pytest.warns(DicomSkipWarning, match="not a DICOM file"):
        assert load_scan(folder).shape[-1] == 4
    victim = sorted(folder.glob("*.dcm"))[1]
    data = victim.read_bytes()
    victim.write_bytes(data[: len(data) - 5000])  # truncated pixel data
    with pytest.raises(ScanLoadError, match=r"cannot be decoded|cannot read|corrupt|truncated"):
        load_scan(folder)


def test_garbage_file_and_empty_folder(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(ScanLoadError, match="no DICOM image series"):
        load_scan(tmp_path / "empty")
    bad = tmp_path / "bad.dcm"
    bad.write_bytes(os.urandom(2000))
    with pytest.raises(ScanLoadError, match="not a readable DICOM file"):
        load_scan(bad)
    with pytest.raises(ScanLoadError, match="does not exist"):
        load_scan(tmp_path / "nope")


def test_expected_modality_is_enforced() -> None:
    with pytest.raises(ScanLoadError, match="modality 'MR' is not one of"):
        load_scan(_testfile("MR_small.dcm"), expected_modalities=("CT",))
    assert load_scan(_testfile("CT_small.dcm"), expected_modalities=("ct",)).meta["modality"] == "CT"


def test_written_series_round_trips_values_and_affine(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    stored = rng.integers(-200, 3000, size=(7, 6, 5)).astype(np.int16)
    affine = np.array([[0.0, 0, 3, 10], [-1.5, 0, 0, 20], [0, 2.0, 0, -5], [0, 0, 0, 1]])
    write_dicom_series(tmp_path / "s", stored, affine, rescale_slope=0.5, rescale_intercept=-7, modality="CT",
                       uid_entropy="t", patient=PatientInfo("X^Y", "1"))
    img = load_scan(tmp_path / "s")
    ref = nib.Nifti1Image(stored * 0.5 - 7.0, affine)
    # the reader orders slices along the normal, so compare after reorienting both to RAS
    got = Orientation("RAS")(img)
    want = nib.as_closest_canonical(ref)
    np.testing.assert_allclose(got.affine.numpy(), want.affine, atol=1e-4)
    np.testing.assert_allclose(got[0].numpy(), want.get_fdata())


# ---------------------------------------------------------------- NIfTI


def test_nifti_loads_with_nibabel_affine() -> None:
    path = NIBABEL_DATA / "anatomical.nii"
    ref = nib.load(path)
    img = load_scan(path)
    assert img.shape == (1, *ref.shape)
    np.testing.assert_allclose(img.affine.numpy(), ref.affine)
    np.testing.assert_allclose(img[0].numpy(), ref.get_fdata(), rtol=1e-6)
    assert img.meta["source_format"] == "NIfTI"


def test_nifti_round_trip_keeps_affine_and_values(tmp_path: Path) -> None:
    src = load_scan(NIBABEL_DATA / "example4d.nii.gz")  # oblique affine, 2 volumes -> 2 channels
    assert src.shape[0] == 2
    out = write_nifti(tmp_path / "rt.nii.gz", np.moveaxis(src.numpy(), 0, -1), src.affine.numpy())
    back = load_scan(out)
    np.testing.assert_allclose(back.affine.numpy(), src.affine.numpy(), atol=1e-5)
    np.testing.assert_allclose(back.numpy(), src.numpy())


def test_nan_voxels_are_refused(tmp_path: Path) -> None:
    data = np.ones((4, 4, 4), np.float32)
    data[1, 2, 3] = np.nan
    write_nifti(tmp_path / "nan.nii.gz", data, np.eye(4))
    with pytest.raises(ScanLoadError, match="1 of 64 voxels are NaN"):
        load_scan(tmp_path / "nan.nii.gz")
    assert load_scan(tmp_path / "nan.nii.gz", allow_nonfinite=True).shape == (1, 4, 4, 4)


def test_read_dicom_rejects_bad_on_gap() -> None:
    with pytest.raises(ValueError, match="on_gap"):
        read_dicom(_testfile("CT_small.dcm"), on_gap="ignore")  # type: ignore[arg-type]
