"""Writing results: atomic files, NIfTI in the input geometry, DICOM SEG, CSV/JSON tables."""

from __future__ import annotations

import json
from pathlib import Path

import highdicom as hd
import nibabel as nib
import numpy as np
import pydicom
import pytest
import torch

from medmamba.data import load_scan
from medmamba.io import (
    PatientInfo,
    atomic_path,
    atomic_write_bytes,
    invert_prediction,
    write_dicom_seg,
    write_dicom_series,
    write_mask_nifti,
    write_nifti,
    write_probabilities_nifti,
    write_results_csv,
    write_results_json,
)
from medmamba.io.privacy import Redactor
from medmamba.io.dicom_seg import REQUIRED_PATIENT_STUDY_KEYWORDS
from medmamba.transforms import scan_preprocessing

pytestmark = pytest.mark.filterwarnings("ignore:.*nvImageCodec.*")

PLANTED = {
    "OtherPatientIDs": "OTHERID-QX7781",
    "PatientComments": "COMMENT-QX7781",
    "InstitutionName": "QX7781 CLINIC",
    "PatientWeight": "81.5",
    "AdditionalPatientHistory": "HISTORY-QX7781",
}


def _series(tmp_path: Path, shuffle: bool = True) -> tuple[Path, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(5)
    stored = rng.integers(0, 100, (24, 20, 9)).astype(np.int16)
    stored[6:18, 5:15, 2:7] += 800
    affine = np.array([[-0.8, 0, 0, 40], [0, 0, 3.0, -20], [0, -0.9, 0, 60], [0, 0, 0, 1]])  # coronal slices
    names = [f"{n:06d}.dcm" for n in (rng.permutation(9) * 7919 % 999983)] if shuffle else None
    numbers = list(rng.permutation(9) + 1) if shuffle else None
    write_dicom_series(tmp_path / "series", stored, affine, modality="CT", rescale_intercept=-1024.0,
                       uid_entropy="io-test", file_names=names, instance_numbers=numbers,
                       patient=PatientInfo("QXSECRET^NAME", "PID-QX7781", "19450101", "F"), extra_attributes=PLANTED)
    return tmp_path / "series", stored, affine


def test_atomic_path_leaves_old_file_on_failure(tmp_path: Path) -> None:
    target = tmp_path / "out" / "r.json"
    atomic_write_bytes(target, b"old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("crash while writing")
    assert target.read_bytes() == b"old"
    assert [p.name for p in target.parent.iterdir()] == ["r.json"]  # no temp file left


def test_nifti_writes_are_reproducible(tmp_path: Path) -> None:
    arr = np.arange(60, dtype=np.float32).reshape(3, 4, 5)
    a = write_nifti(tmp_path / "a.nii.gz", arr, np.eye(4)).read_bytes()
    b = write_nifti(tmp_path / "sub" / "b.nii.gz", arr, np.eye(4)).read_bytes()
    assert a == b
    with pytest.raises(ValueError, match=r"\.nii"):
        write_nifti(tmp_path / "a.png", arr, np.eye(4))


def test_prediction_inverted_to_dicom_geometry_and_written_as_nifti(tmp_path: Path) -> None:
    folder, stored, _ = _series(tmp_path)
    loaded = load_scan(folder)
    pre = scan_preprocessing(modality="CT", pixdim=(1.5, 1.5, 1.5), k=16, windows=("brain",))
    d = pre({"image": str(folder)})
    assert d["image"].shape[1:] != loaded.shape[1:]
    d["pred"] = (d["image"] > 0.99).float()
    mask = invert_prediction(d, pre, "pred", "image", nearest=True)
    assert tuple(mask.shape) == tuple(loaded.shape)
    np.testing.assert_allclose(mask.affine.numpy(), loaded.affine.numpy(), atol=1e-5)
    expected = (loaded[0].numpy() > 0).astype(np.uint8)  # > 0 HU: the inserted block
    out = write_mask_nifti(tmp_path / "pred" / "seg.nii.gz", mask)
    nii = nib.load(out)
    np.testing.assert_allclose(nii.affine, loaded.affine.numpy(), atol=1e-5)
    assert nii.get_data_dtype() == np.uint8
    assert float((np.asarray(nii.dataobj) == expected).mean()) > 0.97
    d["prob"] = torch.cat([1 - d["image"], d["image"]])
    probs = invert_prediction(d, pre, "prob", "image", nearest=False)
    pnii = nib.load(write_probabilities_nifti(tmp_path / "pred" / "prob.nii.gz", probs))
    assert pnii.shape == (*loaded.shape[1:], 2)
    np.testing.assert_allclose(pnii.affine, loaded.affine.numpy(), atol=1e-5)


def test_mask_writer_rejects_bad_input(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="one channel"):
        write_mask_nifti(tmp_path / "m.nii.gz", np.zeros((2, 3, 3, 3)), np.eye(4))
    with pytest.raises(ValueError, match="integer"):
        write_mask_nifti(tmp_path / "m.nii.gz", np.full((3, 3, 3), 0.5), np.eye(4))
    with pytest.raises(ValueError, match="affine"):
        write_mask_nifti(tmp_path / "m.nii.gz", np.zeros((3, 3, 3)))


def test_dicom_seg_reads_back_onto_the_right_source_frames(tmp_path: Path) -> None:
    folder, _, _ = _series(tmp_path)
    img = load_scan(folder)
    mask = np.zeros(img.shape[1:], np.int64)
    hu = img[0].numpy()
    mask[hu > 0] = 1
    mask[:, :, 4][hu[:, :, 4] > 0] = 2  # a second segment on one slice only
    out = write_dicom_seg(tmp_path / "seg.dcm", mask, folder, {1: "block", 2: "block slice 4"})
    seg = hd.seg.segread(out)
    assert seg.Modality == "SEG"
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == img.meta["series_instance_uid"]
    inv = np.linalg.inv(img.affine.numpy())
    for f in sorted(folder.glob("*.dcm")):
        src = pydicom.dcmread(f)
        ipp = np.asarray(src.ImagePositionPatient, float)
        k = int(round((inv @ np.r_[-ipp[0], -ipp[1], ipp[2], 1.0])[2]))  # slice index from geometry alone
        px = seg.get_pixels_by_source_instance(
            source_sop_instance_uids=[src.SOPInstanceUID], segment_numbers=[1, 2], combine_segments=True,
            skip_overlap_checks=True,
        )[0]
        np.testing.assert_array_equal(px.T, mask[:, :, k], err_msg=f.name)


def test_dicom_seg_copies_only_required_patient_attributes(tmp_path: Path) -> None:
    folder, _, _ = _series(tmp_path)
    mask = (load_scan(folder)[0].numpy() > 0).astype(np.int64)
    seg = pydicom.dcmread(write_dicom_seg(tmp_path / "seg.dcm", mask, folder, {1: "block"}))
    assert seg.PatientID == "PID-QX7781"  # required (Type 2) to file the SEG with its patient
    for keyword in PLANTED:
        assert keyword not in seg, keyword
    raw = (tmp_path / "seg.dcm").read_bytes()
    assert b"QX7781 CLINIC" not in raw and b"COMMENT-QX7781" not in raw and b"OTHERID-QX7781" not in raw
    anon = write_dicom_seg(tmp_path / "anon.dcm", mask, folder, {1: "block"}, anonymous=True)
    raw = anon.read_bytes()
    assert b"QX7781" not in raw and b"QXSECRET" not in raw and b"19450101" not in raw
    kept = {e.keyword for e in pydicom.dcmread(anon) if e.keyword in REQUIRED_PATIENT_STUDY_KEYWORDS}
    assert {"PatientName", "PatientID", "StudyInstanceUID"} <= kept


def test_dicom_seg_rejects_mismatched_mask(tmp_path: Path) -> None:
    folder, _, _ = _series(tmp_path, shuffle=False)
    with pytest.raises(ValueError, match="does not match the source"):
        write_dicom_seg(tmp_path / "s.dcm", np.zeros((5, 5, 5), np.int64), folder, {1: "x"})
    with pytest.raises(ValueError, match="missing from labels"):
        write_dicom_seg(tmp_path / "s.dcm", np.full((24, 20, 9), 3), folder, {1: "x"})


def test_results_tables_drop_identifying_fields_and_redact(tmp_path: Path) -> None:
    rows = [
        {"case_id": "c1", "label": 1, "probabilities": np.array([0.2, 0.8]), "PatientName": "QXSECRET^NAME",
         "extra": {"00100020": "PID-QX7781", "note": "seen QXSECRET^NAME"}},
        {"case_id": "c2", "label": 0, "probabilities": [0.9, 0.1], "score": float("nan")},
    ]
    redact = Redactor(["QXSECRET^NAME"])
    csv_text = write_results_csv(tmp_path / "r.csv", rows, redact=redact).read_text()
    doc = json.loads(write_results_json(tmp_path / "r.json", rows, extra={"n": 2}, redact=redact).read_text())
    for text in (csv_text, json.dumps(doc)):
        assert "QXSECRET" not in text and "PID-QX7781" not in text
    header = csv_text.splitlines()[0].split(",")
    assert header == ["case_id", "label", "probabilities", "extra.note", "score"]
    assert csv_text.splitlines()[1].startswith("c1,1,0.2;0.8,seen [REDACTED]")
    assert doc["cases"][1]["score"] is None and doc["n"] == 2
