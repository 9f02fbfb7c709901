"""Batch processing: failures recorded and the batch goes on; inputs untouched; no patient data leaks."""

from __future__ import annotations

import hashlib
import logging
import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
import torch
from pydicom.data import get_testdata_file

from medmamba.data import (
    Redactor,
    identifying_values,
    is_identifying_key,
    load_scan,
    run_batch,
    scrub_meta,
)
from medmamba.io import PatientInfo, write_dicom_series, write_nifti
from medmamba.apps.pipeline import classify_scans, segment_scans
from medmamba.transforms import scan_preprocessing

pytestmark = pytest.mark.filterwarnings("ignore")

# distinctive values planted in the test DICOM series; none may appear in any output
SECRETS = {
    "PatientName": "ZQSECRETFAMILY^ZQSECRETGIVEN",
    "PatientID": "ZQPID-558811",
    "PatientBirthDate": "19311231",
    "InstitutionName": "ZQ HOSPITAL OF SECRETS",
    "ReferringPhysicianName": "ZQDOCTOR^ZQREFERRER",
    "AccessionNumber": "ZQACC99172",
    "OtherPatientIDs": "ZQOTHER-771",
    "PatientAddress": "ZQ 12 SECRET STREET",
}
NEEDLES = ["ZQSECRET", "ZQPID", "19311231", "ZQ HOSPITAL", "ZQDOCTOR", "ZQREFERRER", "ZQACC", "ZQOTHER", "SECRET STREET"]


def _write_secret_series(folder: Path, modality: str = "MR", corrupt: bool = False) -> None:
    rng = np.random.default_rng(1)
    stored = rng.integers(0, 50, (32, 32, 6)).astype(np.int16)
    stored[8:24, 8:24, 1:5] += 600
    affine = np.diag([1.5, 1.5, 3.0, 1.0])
    extra = {k: v for k, v in SECRETS.items() if k not in ("PatientName", "PatientID", "PatientBirthDate")}
    write_dicom_series(folder, stored, affine, modality=modality, uid_entropy=f"secret-{folder.name}",
                       patient=PatientInfo(SECRETS["PatientName"], SECRETS["PatientID"], SECRETS["PatientBirthDate"], "M"),
                       extra_attributes=extra)
    if corrupt:
        victim = sorted(folder.glob("*.dcm"))[2]
        victim.write_bytes(victim.read_bytes()[:-700])


def _hashes(root: Path) -> dict[str, tuple[str, int]]:
    return {
        str(p.relative_to(root)): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
        for p in sorted(root.rglob("*")) if p.is_file()
    }


def _predictor(x: torch.Tensor) -> torch.Tensor:
    return torch.cat([-x, x], dim=1)  # class 1 where the normalised image is positive


@pytest.fixture()
def cohort(tmp_path: Path) -> Path:
    inp = tmp_path / "inputs"
    _write_secret_series(inp / "good_dicom")
    _write_secret_series(inp / "corrupt_dicom", corrupt=True)
    _write_secret_series(inp / "ZQSECRETFAMILY_folder")  # a folder named after the patient
    (inp / "ct_not_mr").mkdir(parents=True)
    shutil.copy(get_testdata_file("CT_small.dcm"), inp / "ct_not_mr" / "ct.dcm")
    (inp / "empty").mkdir()
    (inp / "rtstruct_only").mkdir()
    shutil.copy(get_testdata_file("rtstruct.dcm"), inp / "rtstruct_only" / "rs.dcm")
    vol = np.zeros((20, 20, 20), np.float32)
    vol[5:15, 5:15, 5:15] = 100.0
    write_nifti(inp / "good.nii.gz", vol, np.diag([2.0, 2.0, 2.0, 1.0]))
    vol[3, 3, 3] = np.nan
    write_nifti(inp / "nan.nii.gz", vol, np.eye(4))
    (inp / "garbage.nii.gz").write_bytes(b"\x1f\x8b not really gzip")
    return inp


CASES = ["good_dicom", "corrupt_dicom", "ZQSECRETFAMILY_folder", "ct_not_mr", "empty", "rtstruct_only",
         "good.nii.gz", "nan.nii.gz", "garbage.nii.gz"]


def test_batch_records_failures_goes_on_and_leaks_nothing(cohort: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    caplog.set_level(logging.DEBUG)
    before = _hashes(cohort)
    out = tmp_path / "outputs"
    pre = scan_preprocessing(modality="MR", k=16, expected_modalities=("MR",))
    report = segment_scans([cohort / c for c in CASES], _predictor, out, pre, {1: "foreground"}, write_probabilities=True,
                           anonymous_seg=True)
    status = {o.case_id: (o.status, o.reason) for o in report.outcomes}
    assert len(status) == len(CASES)
    assert [o.status for o in report.outcomes] == ["ok", "failed", "ok", "failed", "failed", "failed", "ok", "failed", "failed"]
    reasons = [o.reason for o in report.outcomes]
    assert "cannot be decoded" in reasons[1] or "corrupt" in reasons[1]
    assert "modality 'CT'" in reasons[3]
    assert "no DICOM image series" in reasons[4] and "no DICOM image series" in reasons[5]
    assert "NaN" in reasons[7]
    assert "cannot read NIfTI" in reasons[8] or "the gzip stream is corrupt" in reasons[8]
    # the case named after the patient got a neutral id
    assert report.outcomes[2].case_id == "case-0002"
    # outputs of good cases exist, in the input geometry
    good = report.outcomes[0]
    seg_nii = out / good.case_id / f"{good.case_id}_seg.nii.gz"
    assert seg_nii.is_file() and (out / good.case_id / f"{good.case_id}_seg.dcm").is_file()
    loaded = load_scan(cohort / "good_dicom")
    import nibabel as nib

    np.testing.assert_allclose(nib.load(seg_nii).affine, loaded.affine.numpy(), atol=1e-5)
    assert nib.load(seg_nii).shape == tuple(loaded.shape[1:])
    # inputs never modified
    assert _hashes(cohort) == before
    # no temp files, no half-written outputs
    assert not [p for p in out.rglob("*") if ".tmp" in p.name]
    # nothing identifying anywhere: files (CSV, JSON, NIfTI, anonymous SEG), log records, stdout/stderr
    texts = [p.read_bytes().decode("latin-1") for p in out.rglob("*") if p.is_file()]
    import gzip

    texts += [gzip.decompress(p.read_bytes()).decode("latin-1") for p in out.rglob("*.nii.gz")]
    texts += [r.getMessage() for r in caplog.records]
    captured = capsys.readouterr()
    texts += [captured.out, captured.err]
    texts += [str(p) for p in out.rglob("*")]
    for text in texts:
        for needle in NEEDLES:
            assert needle.lower() not in text.lower(), needle
    assert any("failed" in r.getMessage() for r in caplog.records)


def test_classification_batch_report(cohort: Path, tmp_path: Path) -> None:
    pre = scan_preprocessing(modality="MR", k=16)
    report = classify_scans(
        [{"image": str(cohort / "good.nii.gz"), "id": "a"}, {"image": str(cohort / "empty"), "id": "b"}],
        lambda x: torch.tensor([[0.0, 2.0]]), tmp_path / "cls", pre, ["no lesion", "lesion"],
    )
    assert [o.status for o in report.outcomes] == ["ok", "failed"]
    rows = report.csv_path.read_text().splitlines()
    assert rows[0].split(",")[:4] == ["case_id", "status", "reason", "seconds"]
    assert rows[1].startswith("a,ok,,") and ",1,lesion," in rows[1]
    assert report.json_path.is_file()


def test_run_batch_refuses_output_inside_input(tmp_path: Path) -> None:
    (tmp_path / "in").mkdir()
    with pytest.raises(ValueError, match="inside input folder"):
        run_batch([tmp_path / "in"], lambda c: None, tmp_path / "in" / "out")


def test_run_batch_with_process_errors_and_ids(tmp_path: Path) -> None:
    def process(case):  # noqa: ANN001, ANN202
        if case.index == 1:
            raise KeyError("boom")
        return {"n": case.index}

    report = run_batch([{"image": "x", "id": "same"}, {"image": "y", "id": "same"}, "z/w.nii.gz"], process, tmp_path)
    assert [o.case_id for o in report.outcomes] == ["same", "same-0001", "z_w"]
    assert report.failed == {"same-0001": "KeyError: 'boom'"}
    assert report.n_ok == 2


def test_scrub_meta_removes_identifying_keys_in_all_styles() -> None:
    meta = {
        "PatientName": "x", "00100020": {"vr": "LO", "Value": ["y"]}, "0010|0030": "z", "(0008,0080)": "inst",
        "series_instance_uid": "1.2", "nested": [{"ReferringPhysicianName": "doc", "keep": 1}], "spacing": (1, 2),
    }
    clean = scrub_meta(meta)
    assert clean == {"series_instance_uid": "1.2", "nested": [{"keep": 1}], "spacing": (1, 2)}
    assert is_identifying_key(0x00100040) and not is_identifying_key("00080060")
    with pytest.raises(TypeError, match="meta must be a mapping"):
        scrub_meta(["PatientName"])  # type: ignore[arg-type]


def test_loaded_metadata_carries_no_patient_data(tmp_path: Path) -> None:
    _write_secret_series(tmp_path / "s")
    img = load_scan(tmp_path / "s")
    text = repr(dict(img.meta)).lower()
    for needle in NEEDLES:
        assert needle.lower() not in text
    assert scrub_meta(img.meta).keys() == img.meta.keys()


def test_redactor_hides_values_and_name_parts(tmp_path: Path) -> None:
    _write_secret_series(tmp_path / "s")
    values = identifying_values([pydicom.dcmread(p) for p in (tmp_path / "s").glob("*.dcm")])
    assert SECRETS["PatientID"] in values and "ZQSECRETFAMILY" in values
    redact = Redactor(values)
    text = redact(f"failed for zqsecretfamily at {SECRETS['InstitutionName']} id {SECRETS['PatientID']} sex M")
    assert text == "failed for [REDACTED] at [REDACTED] id [REDACTED] sex M"


@pytest.mark.parametrize(
    "text",
    ["case pid-12345 failed", "PID_12345", "file PID 12345.dcm", "born 1970-01-31", "born 31.01.1970", "born 01/31/1970",
     "born 31/1/1970", "Doe John", "JOHN, DOE"],
)
def test_redactor_finds_identifiers_in_other_formatting(text: str) -> None:
    redact = Redactor(["PID12345", "19700131", "DOE^JOHN", "DOE", "JOHN"])
    out = redact(text)
    assert "12345" not in out and "1970" not in out and "doe" not in out.lower() and "john" not in out.lower()
    assert "[REDACTED]" in out


def test_redactor_leaves_unrelated_numbers_alone() -> None:
    redact = Redactor(["PID12345", "19700131"])
    assert redact("120 slices, 1970 mm, 2 mm spacing, 31 cases") == "120 slices, 1970 mm, 2 mm spacing, 31 cases"


def test_numbers_in_reports_are_redacted_when_they_are_identifiers() -> None:
    from medmamba.data.batch import _redacted

    redact = Redactor(["12345678"])
    assert _redacted({"id": 12345678, "n": 40, "ok": True, "w": [12345678.0, "x"]}, redact) == {
        "id": "[REDACTED]", "n": 40, "ok": True, "w": ["[REDACTED]", "x"]}


def test_input_paths_appear_nowhere_in_reasons_warnings_or_logs(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    import warnings

    folder = tmp_path / "DOE_JOHN_MRN4711" / "head"
    folder.mkdir(parents=True)
    (folder / "scan.nii.gz").write_bytes(b"not a gzip file")
    good = folder / "good.nii.gz"
    write_nifti(good, np.ones((4, 4, 4), np.float32), np.eye(4))

    def process(case):  # noqa: ANN001, ANN202
        warnings.warn(f"skipped {case.input.parent / 'junk.dcm'} (not DICOM)", UserWarning, stacklevel=1)
        load_scan(case.input)
        return {"source": str(case.input)}

    caplog.set_level(logging.INFO)
    report = run_batch([folder / "scan.nii.gz", good], process, tmp_path / "out")
    text = caplog.text + report.csv_path.read_text() + report.json_path.read_text()
    assert "DOE_JOHN" not in text and "MRN4711" not in text, text
    assert report.failed["scan"].startswith("ScanLoadError: path='<inputs>/scan.nii.gz': the file is not gzip data")
    assert "case good: UserWarning: skipped <inputs>/junk.dcm (not DICOM)" in caplog.text
    assert report.outcomes[1].result["source"] == "<inputs>/good.nii.gz"
