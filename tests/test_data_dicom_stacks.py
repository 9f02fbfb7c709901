"""A DICOM series that mixes geometries: refused by default, split into stacks where the user asks."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pydicom
import pytest

from medmamba.data import (
    DicomGeometryWarning,
    ScanLoadError,
    load_scan,
    read_dicom,
    read_dicom_stacks,
    scan_dicom_folder,
    split_stacks,
)
from medmamba.transforms import LoadScand

from test_data_dicom_loading import write_shuffled_ct_series


def _add_localizer(folder: Path, uid: str, n: int = 3, spacing: float = 5.0) -> list[str]:
    """``n`` sagittal slices (same series UID, same matrix) beside the series: a localizer's plane."""
    src = pydicom.dcmread(sorted(folder.glob("*.dcm"))[0])
    names = []
    for k in range(n):
        ds = src.copy()
        ds.SeriesInstanceUID = uid
        ds.SOPInstanceUID = pydicom.uid.generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.InstanceNumber = 100 + k
        ds.ImageOrientationPatient = [0.0, 1.0, 0.0, 0.0, 0.0, -1.0]
        ds.ImagePositionPatient = [spacing * k - 10.0, -60.0, 80.0]
        name = f"loc{k}.dcm"
        ds.save_as(folder / name, enforce_file_format=True)
        names.append(name)
    return names


@pytest.fixture()
def mixed(tmp_path: Path) -> dict:
    folder = tmp_path / "series"
    info = write_shuffled_ct_series(folder, n=6)
    info["localizer"] = _add_localizer(folder, str(info["uid"]))
    info["folder"] = folder
    return info


def test_mixed_orientations_are_refused_by_default_with_the_way_out(mixed: dict) -> None:
    with pytest.raises(ScanLoadError, match=r"2 different image orientations.*on_mixed='largest'.*read_dicom_stacks"):
        load_scan(mixed["folder"])


def test_largest_stack_is_read_on_request_and_the_rest_named(mixed: dict) -> None:
    with pytest.warns(DicomGeometryWarning, match=r"holds 2 stacks .* the largest \(6 of 9 files.*set aside: 3 file\(s\) like loc0\.dcm"):
        img = load_scan(mixed["folder"], on_mixed="largest")
    assert img.shape == (1, 128, 128, 6)
    np.testing.assert_allclose(img.affine.numpy(), mixed["affine"], atol=1e-4)
    with pytest.warns(DicomGeometryWarning):
        out = LoadScand(keys="image", on_mixed="largest")({"image": str(mixed["folder"])})
    assert tuple(out["image"].shape) == (1, 128, 128, 6)


def test_every_stack_read_as_its_own_volume(mixed: dict) -> None:
    axial, sagittal = read_dicom_stacks(mixed["folder"])
    assert axial.array.shape == (1, 128, 128, 6) and len(axial.source_files) == 6
    np.testing.assert_allclose(axial.affine, mixed["affine"], atol=1e-4)
    assert sagittal.array.shape == (1, 128, 128, 3)
    assert sorted(p.name for p in sagittal.source_files) == mixed["localizer"]
    # sagittal plane: slices step along R-L (RAS x), 5 mm apart
    np.testing.assert_allclose(np.abs(sagittal.affine[:3, 2]), [5.0, 0.0, 0.0], atol=1e-4)


def test_consistent_series_is_one_stack_and_reads_the_same_either_way(tmp_path: Path) -> None:
    info = write_shuffled_ct_series(tmp_path / "s", n=5)
    (series,) = scan_dicom_folder(tmp_path / "s").series
    (stack,) = split_stacks(series)
    assert stack.instances == series.instances
    plain = read_dicom(tmp_path / "s")
    largest = read_dicom(tmp_path / "s", on_mixed="largest")
    np.testing.assert_array_equal(plain.array, largest.array)
    np.testing.assert_allclose(largest.affine, info["affine"], atol=1e-4)
    (only,) = read_dicom_stacks(tmp_path / "s")
    np.testing.assert_array_equal(only.array, plain.array)


def _edit(path: Path, change) -> None:
    ds = pydicom.dcmread(path)
    change(ds)
    ds.save_as(path)


def test_pixel_spacing_and_missing_positions_make_stacks_of_their_own(tmp_path: Path) -> None:
    write_shuffled_ct_series(tmp_path / "s", n=6)
    files = sorted((tmp_path / "s").glob("*.dcm"))
    for f in files[:2]:
        _edit(f, lambda ds: setattr(ds, "PixelSpacing", [0.9, 0.9]))
    _edit(files[2], lambda ds: delattr(ds, "ImagePositionPatient"))
    (series,) = scan_dicom_folder(tmp_path / "s").series
    stacks = split_stacks(series)
    assert [len(s.instances) for s in stacks] == [3, 2, 1]
    assert {i.path.name for i in stacks[1].instances} == {f.name for f in files[:2]}
    assert stacks[2].instances[0].path.name == files[2].name
    assert all(s.series_uid == series.series_uid for s in stacks)


def test_invalid_arguments_name_the_value(tmp_path: Path) -> None:
    write_shuffled_ct_series(tmp_path / "s", n=2)
    with pytest.raises(ValueError, match=re.escape("on_mixed must be 'error' or 'largest', got 'all'")):
        read_dicom(tmp_path / "s", on_mixed="all")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="on_mixed must be"):
        LoadScand(keys="image", on_mixed="split")  # type: ignore[arg-type]
    (series,) = scan_dicom_folder(tmp_path / "s").series
    with pytest.raises(ValueError, match="tolerance must be > 0, got 0"):
        split_stacks(series, tolerance=0)
    with pytest.raises(ScanLoadError, match="is not a folder"):
        read_dicom_stacks(sorted((tmp_path / "s").glob("*.dcm"))[0])
