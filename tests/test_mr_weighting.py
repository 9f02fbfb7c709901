"""The MR weighting of a scan from its acquisition parameters, and the check that refuses the wrong one."""

from __future__ import annotations

import json
import math
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence

from medmamba.data import ScanLoadError, load_scan
from medmamba.io import MR_ACQUISITION_META_KEYS, describe_acquisition, mr_weighting, write_dicom_series
from medmamba.io.mr_acquisition import BidsSidecarWarning, bids_acquisition, dicom_acquisition
from medmamba.transforms import CheckMRWeighting, CheckMRWeightingd

# typical protocols of a brain MR study: (name, meta, weighting)
PROTOCOLS = [
    ("MPRAGE", {"echo_time_ms": 2.98, "repetition_time_ms": 2300, "inversion_time_ms": 900, "scanning_sequence": "GR\\IR"}, "T1"),
    ("3D SPGR", {"echo_time_ms": 3.1, "repetition_time_ms": 8.1, "scanning_sequence": "GR"}, "T1"),
    ("spin-echo T1", {"echo_time_ms": 12, "repetition_time_ms": 500, "scanning_sequence": "SE"}, "T1"),
    ("T1-FLAIR", {"echo_time_ms": 9, "repetition_time_ms": 2000, "inversion_time_ms": 860, "scanning_sequence": "SE\\IR"}, "T1"),
    ("TSE T2", {"echo_time_ms": 95, "repetition_time_ms": 5000, "scanning_sequence": "SE"}, "T2"),
    ("T2-FLAIR", {"echo_time_ms": 120, "repetition_time_ms": 9000, "inversion_time_ms": 2500}, "FLAIR"),
    ("MP2RAGE second inversion", {"echo_time_ms": 2.9, "repetition_time_ms": 5000, "inversion_time_ms": 2500}, "unknown"),
    ("SWI", {"echo_time_ms": 20, "repetition_time_ms": 27, "scanning_sequence": "GR"}, "T2*"),
    ("STIR", {"echo_time_ms": 30, "repetition_time_ms": 4000, "inversion_time_ms": 150}, "STIR"),
    ("DWI", {"echo_time_ms": 80, "repetition_time_ms": 6000, "diffusion_b_value": 1000}, "diffusion"),
    ("ADC map", {"image_type": "DERIVED\\PRIMARY\\ADC\\ADC"}, "diffusion"),
    ("PD (or an MPRAGE without its TI)", {"echo_time_ms": 10, "repetition_time_ms": 3000}, "unknown"),
    ("inversion time 0 = none", {"echo_time_ms": 10, "repetition_time_ms": 500, "inversion_time_ms": 0}, "T1"),
    ("nothing recorded", {"echo_time_ms": math.nan, "repetition_time_ms": math.nan}, "unknown"),
    ("enhanced MR AcquisitionContrast", {"acquisition_contrast": "FLUID_ATTENUATED", "echo_time_ms": 3.0}, "FLAIR"),
    ("AcquisitionContrast MIXED: the times decide", {"acquisition_contrast": "MIXED", "echo_time_ms": 95.0}, "T2"),
    ("BIDS name wins", {"bids_suffix": "T2w", "echo_time_ms": 3.0, "repetition_time_ms": 8.0}, "T2"),
]


@pytest.mark.parametrize("name,meta,weighting", PROTOCOLS, ids=[p[0] for p in PROTOCOLS])
def test_weighting_of_typical_protocols(name: str, meta: dict, weighting: str) -> None:
    found, reason = mr_weighting(meta)
    assert found == weighting, (name, reason)
    assert reason


def test_weighting_argument_and_description() -> None:
    with pytest.raises(TypeError, match="meta must be a mapping"):
        mr_weighting([1, 2])  # type: ignore[arg-type]
    text = describe_acquisition({"echo_time_ms": 95.0, "repetition_time_ms": 5000.0, "inversion_time_ms": math.nan,
                                 "acquisition_source": "DICOM header"})
    assert text == "TE 95 ms, TR 5000 ms (DICOM header)"
    assert describe_acquisition({}) == "no acquisition parameters"


def test_dicom_series_carries_its_acquisition(tmp_path: Path) -> None:
    vol = np.full((8, 8, 6), 100, np.int16)
    write_dicom_series(tmp_path / "t1", vol, np.eye(4), uid_entropy="a")  # the writer's own T1 SPGR values
    img = load_scan(tmp_path / "t1")
    assert set(MR_ACQUISITION_META_KEYS) <= set(img.meta)
    assert img.meta["echo_time_ms"] == pytest.approx(3.7) and img.meta["repetition_time_ms"] == pytest.approx(8.1)
    assert math.isnan(img.meta["inversion_time_ms"]) and img.meta["acquisition_source"] == "DICOM header"
    assert mr_weighting(img.meta)[0] == "T1"
    write_dicom_series(tmp_path / "flair", vol, np.eye(4), uid_entropy="b",
                       extra_attributes={"EchoTime": "125", "RepetitionTime": "9000", "InversionTime": "2500"})
    assert mr_weighting(load_scan(tmp_path / "flair").meta)[0] == "FLAIR"


def test_enhanced_multiframe_parameters_come_from_the_functional_groups() -> None:
    echo, timing, diffusion = Dataset(), Dataset(), Dataset()
    echo.EffectiveEchoTime = 100.0
    timing.RepetitionTime = 4000.0
    diffusion.DiffusionBValue = 0.0
    groups = Dataset()
    groups.MREchoSequence = DicomSequence([echo])
    groups.MRTimingAndRelatedParametersSequence = DicomSequence([timing])
    groups.MRDiffusionSequence = DicomSequence([diffusion])
    ds = Dataset()
    ds.SharedFunctionalGroupsSequence = DicomSequence([groups])
    found = dicom_acquisition(ds)
    assert found["echo_time_ms"] == 100.0 and found["repetition_time_ms"] == 4000.0
    assert found["diffusion_b_value"] == 0.0 and found["acquisition_source"] == "DICOM header"
    assert mr_weighting(found)[0] == "T2"  # b = 0: not a diffusion weighting


def _nifti(path: Path) -> Path:
    nib.save(nib.Nifti1Image(np.ones((6, 6, 6), np.float32), np.eye(4)), path)
    return path


def test_bids_name_and_sidecar(tmp_path: Path) -> None:
    t1 = _nifti(tmp_path / "sub-01_ses-1_T1w.nii.gz")
    (tmp_path / "sub-01_ses-1_T1w.json").write_text(json.dumps({"EchoTime": 0.00298, "RepetitionTime": 2.3,
                                                                "InversionTime": 0.9}))
    found = bids_acquisition(t1)
    assert found["bids_suffix"] == "T1w" and found["acquisition_source"] == "BIDS name and BIDS sidecar"
    assert found["echo_time_ms"] == pytest.approx(2.98) and found["inversion_time_ms"] == pytest.approx(900.0)
    img = load_scan(t1)
    assert img.meta["bids_suffix"] == "T1w" and img.meta["repetition_time_ms"] == pytest.approx(2300.0)
    plain = bids_acquisition(_nifti(tmp_path / "head.nii.gz"))  # not BIDS: nothing known
    assert plain["bids_suffix"] == "" and plain["acquisition_source"] == "" and math.isnan(plain["echo_time_ms"])
    assert bids_acquisition(tmp_path / "sub-01_mask.nii.gz")["bids_suffix"] == ""  # not a weighting suffix
    (tmp_path / "sub-02_T2w.json").write_text("{not json")
    with pytest.warns(BidsSidecarWarning, match="cannot read the BIDS sidecar"):
        broken = bids_acquisition(_nifti(tmp_path / "sub-02_T2w.nii.gz"))
    assert broken["bids_suffix"] == "T2w" and broken["acquisition_source"] == "BIDS name"


def _scan(meta: dict) -> MetaTensor:
    return MetaTensor(torch.zeros(1, 4, 4, 4), meta={"filename_or_obj": "/data/series7", **meta})


def test_check_refuses_warns_or_ignores() -> None:
    t2 = _scan({"echo_time_ms": 95.0, "repetition_time_ms": 5000.0, "acquisition_source": "DICOM header"})
    with pytest.raises(ScanLoadError, match=r"series7.*a T2-weighted acquisition \(echo time 95 ms >= 40 ms; TE 95 ms, "
                                            r"TR 5000 ms \(DICOM header\)\); expected a T1-weighted scan"):
        CheckMRWeighting()(t2)
    assert isinstance(ScanLoadError("x"), ValueError)
    d = CheckMRWeightingd("image", on_mismatch="warn")({"image": t2, "scan_warnings": ["earlier"]})
    assert d["scan_warnings"][0] == "earlier" and len(d["scan_warnings"]) == 2
    assert "the result is not valid" in d["scan_warnings"][1] and d["image"] is t2
    assert CheckMRWeightingd("image", on_mismatch="ignore")({"image": t2})["scan_warnings"] == []
    assert CheckMRWeighting(expected=("T1", "T2"))(t2) is t2
    unknown = _scan({})
    assert CheckMRWeighting()(unknown) is unknown  # no parameters: unknown, not wrong
    assert CheckMRWeighting().check(torch.zeros(1, 4, 4, 4)) == []  # no metadata at all
    two = CheckMRWeightingd(["a", "b"], on_mismatch="warn")({"a": t2, "b": unknown})
    assert len(two["scan_warnings"]) == 1 and two["scan_warnings"][0].startswith("a: a T2-weighted")
    assert two["scan_weighting"] == "a: T2; b: unknown" and d["scan_weighting"] == "T2"
    assert "scan_weighting" not in CheckMRWeightingd("image", weighting_key=None)({"image": unknown})


def test_check_arguments() -> None:
    with pytest.raises(ValueError, match="on_mismatch must be one of"):
        CheckMRWeighting(on_mismatch="maybe")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="expected must be a sequence of weighting names"):
        CheckMRWeighting(expected="T1")
    with pytest.raises(ValueError, match="expected must name at least one weighting"):
        CheckMRWeighting(expected=())
    with pytest.raises(TypeError, match="warnings_key must be a str, got NoneType"):
        CheckMRWeightingd("image", warnings_key=None)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="weighting_key must be a str or None, got int"):
        CheckMRWeightingd("image", weighting_key=3)  # type: ignore[arg-type]


def test_a_study_folder_lists_each_series_weighting(tmp_path: Path) -> None:
    vol = np.full((8, 8, 6), 100, np.int16)
    study = tmp_path / "study"
    write_dicom_series(study / "t1", vol, np.eye(4), uid_entropy="t1", series_number=3)
    write_dicom_series(study / "t2", vol, np.eye(4), uid_entropy="t2", series_number=4,
                       extra_attributes={"ScanningSequence": "SE", "EchoTime": "95", "RepetitionTime": "5000"})
    with pytest.raises(ScanLoadError, match="holds 2 image series") as info:
        load_scan(study)
    lines = [line for line in str(info.value).splitlines() if "series_number=" in line]
    assert len(lines) == 2
    by_number = {("series_number=3" in line): line for line in lines}
    assert "weighting=T1 (TE 3.7 ms, TR 8.1 ms, sequence GR)" in by_number[True]
    assert "weighting=T2 (TE 95 ms, TR 5000 ms, sequence SE)" in by_number[False]


# real headers that ship offline (pydicom's own test files and pydicom-data), with what they are
REAL_HEADERS = [
    ("MR_small.dcm", "T2", "TE 240 ms, TR 4000 ms, sequence SE"),  # spin echo, long TE
    ("MR2_UNCR.dcm", "T1", "TE 27 ms, TR 350 ms, sequence SE"),  # spin-echo T1
    ("MR-SIEMENS-DICOM-WithOverlays.dcm", "T1", "TE 2.81 ms, TR 5.53 ms, sequence GR"),  # a 3D gradient echo
    ("emri_small.dcm", "T1", "AcquisitionContrast T1"),  # enhanced MR (Philips T1 TFE), no top-level times
]


@pytest.mark.parametrize("name,weighting,described", REAL_HEADERS, ids=[h[0] for h in REAL_HEADERS])
def test_real_vendor_headers(name: str, weighting: str, described: str) -> None:
    import pydicom
    from pydicom.data import get_testdata_file

    path = get_testdata_file(name, download=False)  # never from the network
    if path is None:
        pytest.skip(f"{name} is in pydicom-data, which is not installed")
    found = dicom_acquisition(pydicom.dcmread(path, stop_before_pixels=True))
    assert mr_weighting(found)[0] == weighting
    assert describe_acquisition(found) == f"{described} (DICOM header)"
