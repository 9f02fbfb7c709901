"""DICOM objects the project writes: the standard's validator, SNOMED CT segment codes, independent read-back.

``dciodvfy`` (dicom3tools, Debian/Ubuntu package ``dicom3tools``) and dcmqi's ``segimage2itkimage``
(PyPI package ``dcmqi``, in the ``test`` extra on Linux x86-64) are used where installed; the tests
that need them are skipped cleanly where they are not.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import highdicom as hd
import nibabel as nib
import numpy as np
import pydicom
import pytest

from medmamba.apps.segmentation import TISSUE_LABELS, TISSUE_SEGMENT_CODES
from medmamba.data import load_scan
from medmamba.io import PatientInfo, write_dicom_seg, write_dicom_series
from medmamba.io.segment_codes import LESION, SegmentCode, segment_codes_metadata

ROOT = Path(__file__).resolve().parents[1]
DCIODVFY = shutil.which("dciodvfy")
SEGIMAGE2ITKIMAGE = shutil.which("segimage2itkimage")
needs_dciodvfy = pytest.mark.skipif(DCIODVFY is None, reason="dciodvfy (Debian package dicom3tools) is not installed")
PATIENT = PatientInfo(name="MMBFAKE^Conformance", patient_id="MMBFAKE-1", birth_date="19700101", sex="F")
needs_dcmqi = pytest.mark.skipif(SEGIMAGE2ITKIMAGE is None, reason="dcmqi's segimage2itkimage (pip install dcmqi) is not installed")


def _mr_series(folder: Path) -> Path:
    rng = np.random.default_rng(0)
    stored = (rng.random((24, 20, 9)) * 1000).astype(np.int16)
    affine = np.diag([2.0, 2.0, 3.0, 1.0])
    affine[:3, 3] = [-20.0, -30.0, 10.0]
    write_dicom_series(folder, stored, affine, modality="MR", uid_entropy="conformance", series_description="T1",
                       patient=PATIENT)
    return folder


def _mask(shape: tuple[int, ...]) -> np.ndarray:
    mask = np.zeros(shape, np.int64)
    mask[4:12, 5:10, 2:6] = 1
    mask[12:20, 5:10, 2:6] = 2
    mask[6:9, 6:8, 3] = 3
    mask[14:16, 11:14, 7] = 4
    return mask


def _labels() -> dict[int, str]:
    return {**TISSUE_LABELS, 4: "Lesion"}


def _codes() -> dict[int, SegmentCode]:
    return {**TISSUE_SEGMENT_CODES, 4: LESION}


def _dciodvfy(path: Path) -> tuple[list[str], list[str]]:
    out = subprocess.run([DCIODVFY, str(path)], capture_output=True, text=True, timeout=60)  # type: ignore[list-item]
    lines = (out.stdout + out.stderr).splitlines()
    return [ln for ln in lines if ln.startswith("Error")], [ln for ln in lines if ln.startswith("Warning")]


@needs_dciodvfy
def test_seg_and_mr_series_pass_dciodvfy_without_errors_or_warnings(tmp_path: Path) -> None:
    folder = _mr_series(tmp_path / "mr")
    seg = write_dicom_seg(tmp_path / "seg.dcm", _mask(load_scan(folder).shape[1:]), folder, _labels(), segment_codes=_codes())
    for path in (seg, folder / "IM00001.dcm", folder / "IM00009.dcm"):
        errors, warnings = _dciodvfy(path)
        assert errors == [], f"{path.name}: {errors}"
        assert warnings == [], f"{path.name}: {warnings}"


@needs_dciodvfy
def test_ct_series_passes_dciodvfy_without_errors_or_warnings(tmp_path: Path) -> None:
    stored = (np.random.default_rng(1).random((16, 12, 4)) * 2000 - 1024).astype(np.int16)
    write_dicom_series(tmp_path / "ct", stored, np.diag([0.7, 0.7, 2.5, 1.0]), modality="CT", rescale_intercept=-1024.0,
                       uid_entropy="ct", patient=PATIENT)
    assert _dciodvfy(tmp_path / "ct" / "IM00001.dcm") == ([], [])


def test_segments_carry_their_own_snomed_codes(tmp_path: Path) -> None:
    folder = _mr_series(tmp_path / "mr")
    seg = hd.seg.segread(write_dicom_seg(tmp_path / "seg.dcm", _mask(load_scan(folder).shape[1:]), folder, _labels(),
                                         segment_codes=_codes()))
    got = {
        int(s.SegmentNumber): (s.SegmentedPropertyCategoryCodeSequence[0].CodeValue, s.SegmentedPropertyTypeCodeSequence[0].CodeValue)
        for s in seg.SegmentSequence
    }
    # SCT: 91723000 anatomical structure; 65216001 CSF, 389081007 grey matter, 389080008 white matter;
    # 49755003 morphologically abnormal structure, 52988006 lesion
    assert got == {1: ("91723000", "65216001"), 2: ("91723000", "389081007"), 3: ("91723000", "389080008"),
                   4: ("49755003", "52988006")}
    assert all(s.SegmentedPropertyTypeCodeSequence[0].CodingSchemeDesignator == "SCT" for s in seg.SegmentSequence)
    assert len({tuple(s.RecommendedDisplayCIELabValue) for s in seg.SegmentSequence}) == 4
    assert seg.DeviceSerialNumber  # Type 1 of the Enhanced General Equipment module, the writer's own


def test_uncoded_segment_warns_and_gets_the_generic_tissue_code(tmp_path: Path) -> None:
    folder = _mr_series(tmp_path / "mr")
    mask = (load_scan(folder)[0].numpy() > 500).astype(np.int64)
    with pytest.warns(UserWarning, match=r"segments \[1\] \('block'\) have no segment_codes entry"):
        seg = pydicom.dcmread(write_dicom_seg(tmp_path / "seg.dcm", mask, folder, {1: "block"}))
    assert seg.SegmentSequence[0].SegmentedPropertyTypeCodeSequence[0].CodeValue == "85756007"


def test_segment_codes_must_match_labels(tmp_path: Path) -> None:
    folder = _mr_series(tmp_path / "mr")
    mask = np.zeros(load_scan(folder).shape[1:], np.int64)
    with pytest.raises(ValueError, match=r"segment_codes has segment numbers \[7\] that are not in labels"):
        write_dicom_seg(tmp_path / "s.dcm", mask, folder, {1: "x"}, segment_codes={1: LESION, 7: LESION})
    with pytest.raises(TypeError, match=r"segment_codes\[1\] must be a SegmentCode, got str"):
        write_dicom_seg(tmp_path / "s.dcm", mask, folder, {1: "x"}, segment_codes={1: "lesion"})  # type: ignore[dict-item]


def test_mr_series_has_no_modality_lut_and_refuses_a_rescale(tmp_path: Path) -> None:
    folder = _mr_series(tmp_path / "mr")
    ds = pydicom.dcmread(folder / "IM00001.dcm")
    assert "RescaleSlope" not in ds and "RescaleIntercept" not in ds
    assert ds.ImageLaterality == "U" and list(ds.ImageType) == ["DERIVED", "SECONDARY", "OTHER"]
    stored = np.zeros((4, 4, 2), np.int16)
    with pytest.raises(ValueError, match="rescale_slope=0.5, rescale_intercept=0.0 for modality 'MR'"):
        write_dicom_series(tmp_path / "x", stored, np.eye(4), modality="MR", rescale_slope=0.5)
    with pytest.raises(ValueError, match="image_laterality must be one of"):
        write_dicom_series(tmp_path / "y", stored, np.eye(4), image_laterality="left")


@needs_dcmqi
def test_seg_reads_back_voxel_for_voxel_with_dcmqi(tmp_path: Path) -> None:
    folder = _mr_series(tmp_path / "mr")
    img = load_scan(folder)
    mask = _mask(img.shape[1:])
    seg = write_dicom_seg(tmp_path / "seg.dcm", mask, folder, _labels(), segment_codes=_codes())
    out = tmp_path / "dcmqi"
    out.mkdir()
    proc = subprocess.run([SEGIMAGE2ITKIMAGE, "--inputDICOM", str(seg), "--outputDirectory", str(out), "-t", "nii"],  # type: ignore[list-item]
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    meta = json.loads((out / "meta.json").read_text())
    attrs = {int(a["labelID"]): a for group in meta["segmentAttributes"] for a in group}
    assert {k: a["SegmentedPropertyTypeCodeSequence"]["CodeValue"] for k, a in attrs.items()} == {
        k: c.property_type.value for k, c in _codes().items()}
    for number in (1, 2, 3, 4):
        nii = nib.load(out / f"{number}.nii.gz")
        np.testing.assert_allclose(nii.affine, img.affine.numpy(), atol=1e-4)
        np.testing.assert_array_equal(np.asarray(nii.dataobj) > 0, mask == number, err_msg=f"segment {number}")


def test_bundle_metadata_records_the_segment_codes_it_writes() -> None:
    meta = json.loads((ROOT / "bundles" / "mobilemamba_segmentation" / "configs" / "metadata.json").read_text())
    assert meta["dicom_segment_codes"] == segment_codes_metadata(TISSUE_LABELS, TISSUE_SEGMENT_CODES)
    assert meta["dicom_segment_codes"]["2"]["type"] == {"scheme": "SCT", "value": "389081007", "meaning": "Gray Matter"}


def test_segment_uses_the_tissue_codes_for_default_labels_only() -> None:
    from medmamba.apps.segmentation import _segment_codes

    assert _segment_codes(None, None) == TISSUE_SEGMENT_CODES
    assert _segment_codes({1: "CSF and other brain tissue", 2: "cortex"}, None) == {1: TISSUE_SEGMENT_CODES[1]}
    assert _segment_codes({1: "x"}, {1: LESION}) == {1: LESION}
