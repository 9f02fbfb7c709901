"""The embedded default data set: a seeded, semi-synthetic cohort built from MNI152 offline.

``make_default_dataset`` writes, under ``out_dir``::

    subjects/sub-000/image.nii.gz     T1-like image (int16 + NIfTI scaling, RAS affine)
    subjects/sub-000/tissue.nii.gz    0 background, 1 CSF/other in brain, 2 GM, 3 WM
    subjects/sub-000/lesion.nii.gz    0/1 synthetic lesion mask (empty for lesion-free subjects)
    subjects/sub-018/dicom/IM00001.dcm ...   the same image as a DICOM MR series (test subjects)
    datalist_segmentation.json        {"image", "label": tissue, "lesion"[, "dicom"]}
    datalist_classification_volume.json   {"image", "label": 0/1 lesion present}
    datalist_classification_slice.json    {"image", "slice": axial index, "label": 0/1}
    datalist_lesion_detection.json     as datalist_segmentation.json, training list + the extra subjects
    manifest.json                      configuration, per-subject parameters, sha256 of every file

Each datalist has ``training``, ``validation`` and ``test`` lists (split by subject) and reads with
``monai.data.load_decathlon_datalist``. The same seed and configuration give the same bytes.
The data set is built in a temporary sibling folder and moved into place at the end.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import multiprocessing
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from medmamba.data.synthetic import TISSUE_LABELS, MniTemplate, extend_inferior, load_mni_template, make_subject, subject_affine
from medmamba.io.atomic import atomic_write_text
from medmamba.io.dicom_series import PatientInfo, write_dicom_series
from medmamba.io.nifti import write_nifti
from medmamba.io.temporaries import TEMPORARY_SUFFIX, remove_stale_temporaries, temporary_prefix

__all__ = [
    "DATALIST_FILES",
    "EXTRA_TRAINING",
    "DefaultDatasetConfig",
    "DefaultDatasetSummary",
    "file_sha256",
    "make_default_dataset",
    "subject_patient_info",
]

logger = logging.getLogger(__name__)

#: Datalist file names by task.
DATALIST_FILES: dict[str, str] = {
    "segmentation": "datalist_segmentation.json",
    "classification_volume": "datalist_classification_volume.json",
    "classification_slice": "datalist_classification_slice.json",
    "lesion_detection": "datalist_lesion_detection.json",
}
_SPLITS = ("training", "validation", "test")
#: Split name of the extra training subjects (training list of ``datalist_lesion_detection.json`` only).
EXTRA_TRAINING = "extra_training"
#: Stored image value = real value / IMAGE_SLOPE (int16). 1 since format 6: the DICOM copy of an MR
#: image may carry no rescale (the MR Image IOD has no Modality LUT), so its stored values are the
#: real values, and the NIfTI holds the same numbers (rounding to whole units: 0.1 % of white matter).
IMAGE_SLOPE = 1.0
#: Grid extension below the MNI template (skull base and neck; see ``make_subject``'s ``neck_mm``).
NECK_MM = 40.0
FORMAT_VERSION = 6
#: Gzip level of the written NIfTI files: level 1 writes the int16 image 3x faster than level 6 for
#: 1 % more bytes (the uint8 label maps grow more, but stay under 0.2 MB a file).
NIFTI_GZIP_LEVEL = 1


@dataclass(frozen=True)
class DefaultDatasetConfig:
    """Parameters of the default data set.

    Attributes:
        seed: Master seed; subject ``i`` uses ``SeedSequence([seed, i])``.
        n_train: Training subjects.
        n_val: Validation subjects.
        n_test: Test subjects.
        n_extra_train: Additional training subjects for lesion detection, numbered after the
            training, validation and test subjects and drawn from their own random stream, so that
            adding them changes none of the others. They are listed only in the training list of
            ``datalist_lesion_detection.json`` (whose validation and test lists are those of
            ``datalist_segmentation.json``): lesion detection needs more anatomy to tell small
            lesions from partial-volume spots than tissue segmentation needs.
        resolution: nilearn MNI152 resolution in mm (1 or 2).
        downsample: Extra integer block-averaging of the template grid (tiny builds for tests).
        lesion_fraction: Fraction of each split's subjects that get lesions.
        max_lesions: Lesions per lesion subject are drawn from 1..max_lesions.
        dicom_split: Split whose subjects are also written as DICOM series ("" for none).
        n_dicom: How many subjects of ``dicom_split`` (its first ones) get a DICOM series.
        min_slice_brain_fraction: Axial slices whose brain area is below this fraction of the
            largest are left out of the per-slice datalist.
        min_slice_lesion_voxels: A slice is "lesion present" with at least this many lesion voxels;
            slices with fewer but non-zero lesion voxels are left out as ambiguous.
    """

    seed: int = 0
    n_train: int = 14
    n_val: int = 12
    n_test: int = 70
    n_extra_train: int = 30
    resolution: int = 2
    downsample: int = 1
    lesion_fraction: float = 0.5
    max_lesions: int = 3
    dicom_split: str = "test"
    n_dicom: int = 3
    min_slice_brain_fraction: float = 0.1
    min_slice_lesion_voxels: int = 5

    def __post_init__(self) -> None:
        for name in ("n_train", "n_val", "n_test", "n_extra_train", "n_dicom"):
            if int(getattr(self, name)) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)!r}")
        if self.n_train + self.n_val + self.n_test < 1:
            raise ValueError("n_train + n_val + n_test must be at least 1")
        if not 0.0 <= self.lesion_fraction <= 1.0:
            raise ValueError(f"lesion_fraction must be in [0, 1], got {self.lesion_fraction!r}")
        if self.max_lesions < 1:
            raise ValueError(f"max_lesions must be >= 1, got {self.max_lesions!r}")
        if self.dicom_split not in ("", *_SPLITS):
            raise ValueError(f"dicom_split must be '' or one of {_SPLITS}, got {self.dicom_split!r}")

    def to_dict(self) -> dict[str, Any]:
        """The configuration as a JSON-able dict."""
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class DefaultDatasetSummary:
    """What :func:`make_default_dataset` produced."""

    out_dir: Path
    n_subjects: int
    n_files: int
    size_bytes: int
    seconds: float
    datalists: dict[str, Path]
    rebuilt: bool


def subject_patient_info(seed: int, index: int) -> PatientInfo:
    """The fake patient identity planted in a subject's DICOM series (for de-identification tests).

    Args:
        seed: Data set seed.
        index: Subject index.

    Returns:
        Distinctive, obviously fake values (``MMBFAKE`` in name and ID).
    """
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), int(index), 99]))
    year = int(rng.integers(1940, 2000))
    month, day = int(rng.integers(1, 13)), int(rng.integers(1, 29))
    return PatientInfo(
        name=f"MMBFAKE^Subject{index:03d}^S{seed}",
        patient_id=f"MMBFAKE-{seed}-{index:03d}",
        birth_date=f"{year:04d}{month:02d}{day:02d}",
        sex="F" if rng.random() < 0.5 else "M",
    )


def _split_assignment(cfg: DefaultDatasetConfig) -> list[tuple[str, bool, int]]:
    """Per subject: (split, has_lesion, n_lesions); lesions spread evenly over the splits.

    The extra training subjects (split ``EXTRA_TRAINING``) come last and draw their lesion flags
    from a stream of their own, so the other subjects are the same with or without them.
    """
    out: list[tuple[str, bool, int]] = []
    core = list(zip(_SPLITS, (cfg.n_train, cfg.n_val, cfg.n_test)))
    for stream, sizes in ((1_000_003, core), (1_000_004, [(EXTRA_TRAINING, cfg.n_extra_train)])):
        rng = np.random.default_rng(np.random.SeedSequence([int(cfg.seed), stream]))
        for split, n in sizes:
            n_les = int(round(n * cfg.lesion_fraction))
            flags = np.zeros(n, dtype=bool)
            flags[rng.permutation(n)[:n_les]] = True
            for f in flags:
                out.append((split, bool(f), int(rng.integers(1, cfg.max_lesions + 1)) if f else 0))
    return out


def _dicom_orientation(stored: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Flip the two in-plane axes of a RAS-ordered volume so the DICOM rows/columns run L and P."""
    arr = stored[::-1, ::-1, :]
    aff = affine.copy()
    for ax in (0, 1):
        aff[:3, 3] = aff[:3, 3] + aff[:3, ax] * (stored.shape[ax] - 1)
        aff[:3, ax] = -aff[:3, ax]
    return np.ascontiguousarray(arr), aff


def _resolve_workers(workers: int | None, n_subjects: int) -> int:
    if workers is None:
        workers = min(2, os.cpu_count() or 1)
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ValueError(f"workers must be a positive integer or None, got {workers!r}")
    return max(1, min(workers, n_subjects))


def _write_subject_args(args: tuple[Any, ...]) -> dict[str, Any]:
    return _write_subject(*args)


def _write_subject(
    root: Path, cfg: DefaultDatasetConfig, template: MniTemplate, index: int, split: str, n_lesions: int
) -> dict[str, Any]:
    rng = np.random.default_rng(np.random.SeedSequence([int(cfg.seed), int(index)]))
    subj = make_subject(template, rng, n_lesions=n_lesions)
    sid = f"sub-{index:03d}"
    sdir = root / "subjects" / sid
    stored = np.clip(np.round(subj.image / IMAGE_SLOPE), 0, np.iinfo(np.int16).max).astype(np.int16)
    aff = subject_affine(template)
    real = stored.astype(np.float32) * np.float32(IMAGE_SLOPE)  # exactly representable: stored * slope
    write_nifti(sdir / "image.nii.gz", real, aff, dtype=np.int16, scl_slope=IMAGE_SLOPE, scl_inter=0.0, xform_code=4, compresslevel=NIFTI_GZIP_LEVEL)
    write_nifti(sdir / "tissue.nii.gz", subj.tissue, aff, dtype=np.uint8, xform_code=4, compresslevel=NIFTI_GZIP_LEVEL)
    write_nifti(sdir / "lesion.nii.gz", subj.lesion, aff, dtype=np.uint8, xform_code=4, compresslevel=NIFTI_GZIP_LEVEL)
    if subj.generation is not None:
        write_nifti(sdir / "generation.nii.gz", subj.generation, aff, dtype=np.uint8, xform_code=4, compresslevel=NIFTI_GZIP_LEVEL)
    entry: dict[str, Any] = {
        "id": sid,
        "split": split,
        "image": f"subjects/{sid}/image.nii.gz",
        "tissue": f"subjects/{sid}/tissue.nii.gz",
        "lesion": f"subjects/{sid}/lesion.nii.gz",
        "generation": f"subjects/{sid}/generation.nii.gz" if subj.generation is not None else None,
        "has_lesion": bool(subj.lesion.any()),
        "lesion_voxels": int(subj.lesion.sum()),
        "params": subj.params,
    }
    first = {"training": 0, "validation": cfg.n_train, "test": cfg.n_train + cfg.n_val}.get(split, index)
    if cfg.dicom_split and split == cfg.dicom_split and index - first < cfg.n_dicom:
        d_arr, d_aff = _dicom_orientation(stored, aff)
        write_dicom_series(
            sdir / "dicom",
            d_arr,
            d_aff,
            modality="MR",
            uid_entropy=f"medmamba-default/seed={cfg.seed}/{sid}",
            patient=subject_patient_info(cfg.seed, index),
            series_description="T1 semi-synthetic",
            extra_attributes={"InstitutionName": f"MMBFAKE HOSPITAL {index:03d}"},
        )
        entry["dicom"] = f"subjects/{sid}/dicom"
    brain_area = (subj.tissue > 0).sum(axis=(0, 1))
    lesion_area = subj.lesion.sum(axis=(0, 1))
    keep = brain_area >= cfg.min_slice_brain_fraction * max(1, int(brain_area.max()))
    slices = []
    for k in np.flatnonzero(keep):
        n = int(lesion_area[k])
        if 0 < n < cfg.min_slice_lesion_voxels:
            continue
        slices.append((int(k), int(n >= cfg.min_slice_lesion_voxels)))
    entry["slices"] = slices
    return entry


def _segmentation_item(subject: dict[str, Any]) -> dict[str, Any]:
    """A subject's entry in the segmentation and lesion-detection datalists."""
    item = {"image": subject["image"], "label": subject["tissue"], "lesion": subject["lesion"], "id": subject["id"]}
    if subject.get("generation"):
        item["generation"] = subject["generation"]
    if "dicom" in subject:
        item["dicom"] = subject["dicom"]
    return item


def _datalists(subjects: list[dict[str, Any]], cfg: DefaultDatasetConfig) -> dict[str, dict[str, Any]]:
    common = {
        "name": "medmamba-default",
        "description": (
            "Semi-synthetic brain MRI: real anatomy from the MNI152 2009 template (nilearn), synthetic "
            "deformation, bias field, noise, contrast and lesions"
        ),
        "reference": "MNI ICBM152 2009 nonlinear symmetric template via nilearn",
        "licence": "see nilearn (BSD-3) and the MNI template terms",
        "release": f"medmamba default v{FORMAT_VERSION}, seed {cfg.seed}",
        "tensorImageSize": "3D",
        "modality": {"0": "MR"},
    }
    seg: dict[str, Any] = {**common, "labels": {str(k): v for k, v in TISSUE_LABELS.items()}}
    vol: dict[str, Any] = {**common, "labels": {"0": "no lesion", "1": "lesion present"}}
    sl: dict[str, Any] = {**common, "tensorImageSize": "2D", "labels": {"0": "no lesion", "1": "lesion present"}}
    for split in _SPLITS:
        members = [s for s in subjects if s["split"] == split]
        seg[split] = [_segmentation_item(s) for s in members]
        vol[split] = [{"image": s["image"], "label": int(s["has_lesion"]), "id": s["id"]} for s in members]
        sl[split] = [
            {"image": s["image"], "slice": k, "label": lab, "id": s["id"]} for s in members for k, lab in s["slices"]
        ]
    extra = [_segmentation_item(s) for s in subjects if s["split"] == EXTRA_TRAINING]
    det: dict[str, Any] = {**seg, "training": seg["training"] + extra}
    for d in (seg, vol, sl, det):
        d["numTraining"] = len(d["training"])
        d["numValidation"] = len(d["validation"])
        d["numTest"] = len(d["test"])
    return {"segmentation": seg, "classification_volume": vol, "classification_slice": sl, "lesion_detection": det}


def file_sha256(path: Path) -> str:
    """The sha256 of a file's bytes (hex), read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _is_up_to_date(out: Path, cfg: DefaultDatasetConfig) -> bool:
    manifest = out / "manifest.json"
    if not manifest.is_file():
        return False
    try:
        data = json.loads(manifest.read_text())
    except (OSError, ValueError):
        return False
    if data.get("config") != cfg.to_dict() or data.get("format_version") != FORMAT_VERSION:
        return False
    return all((out / rel).is_file() for rel in data.get("files", {}))


def _replaceable(out: Path) -> bool:
    """Only an empty folder or a previous build (with its manifest) may be replaced."""
    if not out.is_dir():
        return False
    if not any(out.iterdir()):
        return True
    try:
        return bool(json.loads((out / "manifest.json").read_text()).get("semi_synthetic"))
    except (OSError, ValueError, AttributeError):
        return False


def _dir_size(root: Path) -> tuple[int, int]:
    n, size = 0, 0
    for p in root.rglob("*"):
        if p.is_file():
            n += 1
            size += p.stat().st_size
    return n, size


def make_default_dataset(
    out_dir: str | os.PathLike[str] = "data/default",
    config: DefaultDatasetConfig | None = None,
    *,
    force: bool = False,
    progress: bool = True,
    on_subject: Callable[[int, int], None] | None = None,
    workers: int | None = None,
) -> DefaultDatasetSummary:
    """Build the default data set (or keep an up-to-date one).

    Args:
        out_dir: Destination folder; replaced as a whole when rebuilt.
        config: Data set parameters (default: :class:`DefaultDatasetConfig`).
        force: Rebuild even when ``out_dir`` already holds the same configuration.
        progress: Show a tqdm progress bar.
        on_subject: Called with ``(done, total)`` after each subject.
        workers: Processes writing subjects at once (``None``: two, or one on a one-core machine).
            The output does not depend on it: every subject has its own random stream.

    Returns:
        A summary (size, time, datalist paths).

    Raises:
        TypeError: If ``config`` is not a :class:`DefaultDatasetConfig`.
        ValueError: If ``out_dir`` exists and is neither empty nor a previous build, or ``workers`` is
            not a positive integer.
    """
    _resolve_workers(workers, 1)
    cfg = config if config is not None else DefaultDatasetConfig()
    if not isinstance(cfg, DefaultDatasetConfig):
        raise TypeError(f"config must be a DefaultDatasetConfig, got {type(cfg).__name__}")
    out = Path(out_dir)
    start = time.perf_counter()
    datalists = {k: out / v for k, v in DATALIST_FILES.items()}
    if not force and _is_up_to_date(out, cfg):
        n, size = _dir_size(out)
        data = json.loads((out / "manifest.json").read_text())
        return DefaultDatasetSummary(out, len(data["subjects"]), n, size, time.perf_counter() - start, datalists, False)
    if out.exists() and not _replaceable(out):
        raise ValueError(
            f"out_dir={str(out)!r} exists and is not a default data set (no manifest.json from make-default); "
            "refusing to replace it - choose an empty or new folder"
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    removed = remove_stale_temporaries(out.parent)  # a killed build's half-written folder
    if removed:
        logger.info("removed %d temporaries left by a killed build in %s", len(removed), out.parent)
    tmp = Path(tempfile.mkdtemp(prefix=temporary_prefix(out.name), suffix=TEMPORARY_SUFFIX, dir=out.parent))
    try:
        template = load_mni_template(cfg.resolution, cfg.downsample)
        plan = _split_assignment(cfg)
        from tqdm.auto import tqdm

        n_workers = _resolve_workers(workers, len(plan))
        args = [(tmp, cfg, template, i, split, n_les) for i, (split, _has, n_les) in enumerate(plan)]
        # every subject draws from its own random stream: the files do not depend on the workers
        context = multiprocessing.get_context("spawn")
        pool = None if n_workers == 1 else ProcessPoolExecutor(max_workers=n_workers, mp_context=context)
        bar = tqdm(total=len(plan), desc="default data set", unit="subject", disable=not progress)
        try:
            results = map(_write_subject_args, args) if pool is None else pool.map(_write_subject_args, args)
            subjects = []
            for i, entry in enumerate(results):
                subjects.append(entry)
                bar.update(1)
                if on_subject is not None:
                    on_subject(i + 1, len(plan))
        finally:
            bar.close()
            if pool is not None:
                pool.shutdown(cancel_futures=True)
        for task, content in _datalists(subjects, cfg).items():
            atomic_write_text(tmp / DATALIST_FILES[task], json.dumps(content, indent=1, sort_keys=True) + "\n")
        files = {
            p.relative_to(tmp).as_posix(): file_sha256(p) for p in sorted(tmp.rglob("*")) if p.is_file()
        }
        manifest = {
            "format_version": FORMAT_VERSION,
            "semi_synthetic": True,
            "source": "MNI152 2009 template, GM/WM maps and brain mask shipped with nilearn",
            "config": cfg.to_dict(),
            "grid": {"shape": list(extend_inferior(template, NECK_MM).shape), "affine": np.round(subject_affine(template), 6).tolist()},
            "image_scaling": {"slope": IMAGE_SLOPE, "intercept": 0.0, "stored_dtype": "int16"},
            "tissue_labels": {str(k): v for k, v in TISSUE_LABELS.items()},
            "subjects": [{k: v for k, v in s.items() if k != "slices"} for s in subjects],
            "files": files,
        }
        atomic_write_text(tmp / "manifest.json", json.dumps(manifest, indent=1, sort_keys=True) + "\n")
        old = None
        if out.exists():
            old = out.parent / f"{temporary_prefix(out.name)}old{TEMPORARY_SUFFIX}"
            os.replace(out, old)
        os.replace(tmp, out)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    n, size = _dir_size(out)
    seconds = time.perf_counter() - start
    logger.info("default data set: %d subjects, %d files, %.1f MB in %.1f s", len(subjects), n, size / 1e6, seconds)
    return DefaultDatasetSummary(out, len(subjects), n, size, seconds, datalists, True)
