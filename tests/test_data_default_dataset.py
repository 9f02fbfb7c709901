"""The embedded default data set: determinism, datalists, DICOM copies, and the full-size budget."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from monai.data import load_decathlon_datalist
from monai.transforms import Orientation

from medmamba.data import load_scan
from medmamba.data.default_dataset import (
    DATALIST_FILES,
    DefaultDatasetConfig,
    make_default_dataset,
    subject_patient_info,
)

pytestmark = pytest.mark.filterwarnings("ignore:.*nvImageCodec.*")

TINY = DefaultDatasetConfig(seed=3, n_train=3, n_val=1, n_test=2, n_extra_train=2, downsample=3)
SPLITS = ("training", "validation", "test")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dd") / "default"
    make_default_dataset(out, TINY, progress=False)
    return out


def _all_files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_gives_same_bytes_and_other_seed_differs(tiny: Path, tmp_path: Path) -> None:
    # the fixture wrote subjects from two processes, this build from one: the same bytes
    again = make_default_dataset(tmp_path / "again", TINY, progress=False, workers=1)
    assert again.rebuilt
    a, b = _all_files(tiny), _all_files(tmp_path / "again")
    assert sorted(a) == sorted(b)
    assert any(name.endswith(".dcm") for name in a)
    for name in a:
        assert a[name] == b[name], name
    other = make_default_dataset(
        tmp_path / "other", DefaultDatasetConfig(seed=4, n_train=1, n_val=0, n_test=0, n_extra_train=0, downsample=3), progress=False
    )
    assert (other.out_dir / "subjects/sub-000/image.nii.gz").read_bytes() != a["subjects/sub-000/image.nii.gz"]


def test_nifti_gzip_has_no_timestamp(tiny: Path) -> None:
    head = (tiny / "subjects/sub-000/image.nii.gz").read_bytes()[:10]
    assert head[:2] == b"\x1f\x8b" and head[4:8] == b"\x00\x00\x00\x00"  # MTIME = 0


def test_up_to_date_folder_is_kept(tiny: Path) -> None:
    before = (tiny / "manifest.json").stat().st_mtime_ns
    summary = make_default_dataset(tiny, TINY, progress=False)
    assert not summary.rebuilt
    assert (tiny / "manifest.json").stat().st_mtime_ns == before


def test_datalists_are_consistent_with_the_files(tiny: Path) -> None:
    seen: dict[str, set[str]] = {}
    for split, n in zip(SPLITS, (TINY.n_train, TINY.n_val, TINY.n_test)):
        seg = load_decathlon_datalist(tiny / DATALIST_FILES["segmentation"], True, split)
        vol = load_decathlon_datalist(tiny / DATALIST_FILES["classification_volume"], False, split)
        sl = load_decathlon_datalist(tiny / DATALIST_FILES["classification_slice"], False, split)
        assert len(seg) == len(vol) == n
        seen[split] = {item["id"] for item in seg}
        for s_item, v_item in zip(seg, vol):
            image = nib.load(s_item["image"])
            tissue = np.asarray(nib.load(s_item["label"]).dataobj)
            lesion = np.asarray(nib.load(s_item["lesion"]).dataobj)
            assert image.shape == tissue.shape == lesion.shape
            np.testing.assert_allclose(image.affine, nib.load(s_item["label"]).affine)
            assert set(np.unique(tissue)) <= {0, 1, 2, 3} and {1, 2, 3} <= set(np.unique(tissue))
            assert set(np.unique(lesion)) <= {0, 1}
            assert not np.any(lesion[tissue == 0])  # lesions lie inside the brain
            assert v_item["image"] == s_item["image"]
            assert v_item["label"] == int(lesion.any())
            for entry in (e for e in sl if e["id"] == s_item["id"]):
                assert entry["image"] == s_item["image"]
                n_les = int(lesion[:, :, entry["slice"]].sum())
                assert entry["label"] == int(n_les >= TINY.min_slice_lesion_voxels)
                assert n_les == 0 or n_les >= TINY.min_slice_lesion_voxels
    assert not (seen["training"] & seen["validation"]) and not (seen["training"] & seen["test"])
    assert not (seen["validation"] & seen["test"])
    labels = [e["label"] for s in SPLITS for e in load_decathlon_datalist(tiny / DATALIST_FILES["classification_volume"], False, s)]
    assert 0 < sum(labels) < len(labels)  # both classes present


def test_extra_training_subjects_change_no_other_subject(tiny: Path, tmp_path: Path) -> None:
    """The extra training subjects come last, from their own stream, only in the lesion-detection datalist."""
    import dataclasses

    without = make_default_dataset(tmp_path / "core", dataclasses.replace(TINY, n_extra_train=0), progress=False)
    core, full = _all_files(without.out_dir), _all_files(tiny)
    n_core = TINY.n_train + TINY.n_val + TINY.n_test
    for name, content in core.items():
        if name not in ("manifest.json", DATALIST_FILES["lesion_detection"]):
            assert full[name] == content, name  # same bytes, the other datalists included
    extra_ids = [f"sub-{i:03d}" for i in range(n_core, n_core + TINY.n_extra_train)]
    assert sorted({name.split("/")[1] for name in full if name.startswith("subjects/")} - {name.split("/")[1] for name in core if name.startswith("subjects/")}) == extra_ids
    detection = json.loads((tiny / DATALIST_FILES["lesion_detection"]).read_text())
    segmentation = json.loads((tiny / DATALIST_FILES["segmentation"]).read_text())
    assert [e["id"] for e in detection["training"]] == [e["id"] for e in segmentation["training"]] + extra_ids
    assert detection["validation"] == segmentation["validation"] and detection["test"] == segmentation["test"]
    assert detection["numTraining"] == TINY.n_train + TINY.n_extra_train
    for split in ("training", "validation", "test"):
        for name in ("classification_volume", "classification_slice"):
            ids = {e["id"] for e in json.loads((tiny / DATALIST_FILES[name]).read_text())[split]}
            assert not ids & set(extra_ids)
    with pytest.raises(ValueError, match="n_extra_train must be >= 0"):
        DefaultDatasetConfig(n_extra_train=-1)


def test_manifest_hashes_every_file(tiny: Path) -> None:
    import hashlib

    manifest = json.loads((tiny / "manifest.json").read_text())
    assert manifest["semi_synthetic"] is True
    files = {p.relative_to(tiny).as_posix() for p in tiny.rglob("*") if p.is_file()} - {"manifest.json"}
    assert set(manifest["files"]) == files
    name = "subjects/sub-001/tissue.nii.gz"
    assert manifest["files"][name] == hashlib.sha256((tiny / name).read_bytes()).hexdigest()


def test_dicom_copy_matches_nifti_and_carries_planted_fake_identity(tiny: Path) -> None:
    test = load_decathlon_datalist(tiny / DATALIST_FILES["segmentation"], True, "test")
    item = test[0]
    assert "dicom" in item
    nifti = load_scan(item["image"])
    dicom = load_scan(item["dicom"])
    assert dicom.meta["modality"] == "MR"
    ras = Orientation(axcodes="RAS", labels=None)(dicom)
    np.testing.assert_allclose(ras.affine.numpy(), nifti.affine.numpy(), atol=1e-5)
    np.testing.assert_array_equal(ras.numpy(), nifti.numpy())
    files = sorted(Path(item["dicom"]).glob("*.dcm"))
    assert len(files) == nifti.shape[-1]
    ds = pydicom.dcmread(files[0])
    index = int(item["id"].split("-")[1])
    fake = subject_patient_info(TINY.seed, index)
    assert str(ds.PatientName) == fake.name and "MMBFAKE" in fake.name
    assert ds.PatientID == fake.patient_id
    assert ds.ImageOrientationPatient == [1, 0, 0, 0, 1, 0]
    assert "RescaleSlope" not in ds  # MR: no Modality LUT; the stored values are the NIfTI's values
    assert ds.SeriesInstanceUID == pydicom.dcmread(files[-1]).SeriesInstanceUID


@pytest.mark.parametrize("workers", [0, -2, 1.5, True])
def test_workers_must_be_a_positive_integer(workers: object, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=f"workers must be a positive integer or None, got {workers!r}"):
        make_default_dataset(tmp_path / "x", TINY, progress=False, workers=workers)  # type: ignore[arg-type]
    assert not (tmp_path / "x").exists()


def test_config_validation() -> None:
    with pytest.raises(ValueError, match="lesion_fraction"):
        DefaultDatasetConfig(lesion_fraction=2.0)
    with pytest.raises(ValueError, match="n_val"):
        DefaultDatasetConfig(n_val=-1)
    with pytest.raises(ValueError, match="dicom_split"):
        DefaultDatasetConfig(dicom_split="train")
    with pytest.raises(TypeError, match="config"):
        make_default_dataset("x", config={"seed": 1})  # type: ignore[arg-type]


@pytest.mark.slow
def test_full_default_build_fits_time_and_size(tmp_path: Path) -> None:
    out = tmp_path / "default"
    proc = subprocess.run(
        [sys.executable, "-m", "medmamba.data", "make-default", "--out", str(out), "--no-progress"],
        capture_output=True,
        text=True,
        timeout=600,
        check=True,
    )
    assert "built" in proc.stdout
    manifest = json.loads((out / "manifest.json").read_text())
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    summary_line = next(line for line in proc.stdout.splitlines() if line.startswith("default data set"))
    seconds = float(summary_line.rsplit(",", 1)[1].strip().split()[0])
    assert seconds < 240, summary_line
    assert size < 300e6, size
    assert len(manifest["subjects"]) == 88
    for split, n in zip(SPLITS, (14, 4, 40)):
        assert len(load_decathlon_datalist(out / DATALIST_FILES["segmentation"], True, split)) == n
    assert len(load_decathlon_datalist(out / DATALIST_FILES["lesion_detection"], True, "training")) == 14 + 30


def test_template_loads_without_network(monkeypatch: pytest.MonkeyPatch) -> None:
    import socket

    from medmamba.data.synthetic import load_mni_template

    def refuse(*args: object, **kwargs: object) -> None:
        raise OSError("network disabled in this test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    tpl = load_mni_template(resolution=2, downsample=2)
    assert tpl.shape == (49, 58, 47)
    assert tpl.mask.sum() > 1000 and float(tpl.t1.max()) > 0.5
    np.testing.assert_allclose(np.diag(tpl.affine)[:3], [4.0, 4.0, 4.0])


def test_refuses_to_replace_a_foreign_folder(tmp_path: Path) -> None:
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "precious.txt").write_text("keep me")
    with pytest.raises(ValueError, match="not a default data set"):
        make_default_dataset(tmp_path / "mine", TINY, progress=False)
    assert (tmp_path / "mine" / "precious.txt").read_text() == "keep me"


@pytest.mark.skipif(shutil.which("dciodvfy") is None, reason="dciodvfy (Debian package dicom3tools) is not installed")
def test_default_dicom_series_passes_dciodvfy(tiny: Path) -> None:
    test = load_decathlon_datalist(tiny / DATALIST_FILES["segmentation"], True, "test")
    first = sorted(Path(test[0]["dicom"]).glob("*.dcm"))[0]
    out = subprocess.run(["dciodvfy", str(first)], capture_output=True, text=True, timeout=60)
    lines = (out.stdout + out.stderr).splitlines()
    assert lines == ["MRImage"], lines  # the IOD name only: no error, no warning
