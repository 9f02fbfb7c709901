"""Evaluation sets outside the training distribution: other contrasts, resolutions, heads, bias, noise.

A metric on the generator's own test subjects says little about scanner output: the bundles are
trained on images made by one generator (:mod:`medmamba.data.synthetic`), so a good number there
may measure the generator. This module makes evaluation sets whose *settings* are held out, not
only their subjects: each :class:`ShiftSetting` changes what a scanner would change (contrast,
resolution and slice thickness, skull stripping, bias field and noise), with subjects drawn from a
random stream that the default data set never uses. ``benchmarks/shift_suite.py`` runs both bundles
on every set and reports the metrics with bootstrap intervals.

Each set is written as ``<out>/<setting>/images/<id>.nii.gz`` (only the images, so the folder is a
bundle's ``--input_path``), ``<out>/<setting>/labels/<id>_{tissue,lesion}.nii.gz`` and a MONAI
datalist ``datalist.json`` (``test`` list of ``{"image", "label": tissue, "lesion", "has_lesion", "id"}``).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from medmamba.data.head_model import GENERATION_LABELS, LESION_LABEL
from medmamba.data.synthetic import MniTemplate, bias_field, load_mni_template, make_subject, rician_noise, subject_affine

__all__ = [
    "SHIFT_SETTINGS",
    "make_template_checks",
    "plant_ellipsoid_lesions",
    "write_template_checks",
    "T2_MEANS",
    "ShiftSetting",
    "make_shift_set",
    "render_contrast",
    "thick_slices",
]

#: Nominal T2-weighted intensities by generation label (CSF brightest, white matter darker than grey).
T2_MEANS: dict[int, float] = {0: 0.0, 1: 1.0, 2: 0.55, 3: 0.38, 4: 0.85, 5: 0.95, 6: 0.05, 7: 0.45, 8: 0.3, 9: 0.6, 10: 1.0}


@dataclass(frozen=True)
class ShiftSetting:
    """One evaluation setting.

    Attributes:
        name: Folder and table name.
        description: What it changes, in words.
        resolution_mm: Template resolution the subjects are made at (1 or 2).
        slice_mm: Axial slice thickness of the written image (``None``: the template's).
        head: Whole head (``True``) or skull-stripped brain.
        contrast: ``"t1"`` (the default data's rendering) or ``"t2"`` (:data:`T2_MEANS`, inverted).
        bias_strength: Log standard deviation of an extra bias field (0: none).
        noise: Extra Rician noise, relative to white matter (0: none).
    """

    name: str
    description: str
    resolution_mm: int = 2
    slice_mm: float | None = None
    head: bool = True
    contrast: str = "t1"
    bias_strength: float = 0.0
    noise: float = 0.0


#: The settings of the shift suite. Training covers 2 mm whole-head and skull-stripped T1 renderings
#: plus random-contrast synthesis; none of these exact settings is in the default data set.
SHIFT_SETTINGS: dict[str, ShiftSetting] = {
    s.name: s
    for s in (
        ShiftSetting("t1_head_2mm", "T1 whole head, 2 mm (new subjects of the training generator)"),
        ShiftSetting("t1_stripped_2mm", "T1 skull-stripped brain, 2 mm", head=False),
        ShiftSetting("t1_head_1mm", "T1 whole head, 1 mm isotropic", resolution_mm=1),
        ShiftSetting("t1_head_5mm_axial", "T1 whole head, 2 x 2 x 5 mm (thick axial slices)", slice_mm=5.0),
        ShiftSetting("t2_head_2mm", "T2-like inverted contrast (CSF bright, WM dark), whole head, 2 mm", contrast="t2"),
        ShiftSetting(
            "t1_head_strong_bias_noise", "T1 whole head, 2 mm, strong bias field (0.6) and 8 % noise",
            bias_strength=0.6, noise=0.08,
        ),
    )
}


def render_contrast(
    generation: np.ndarray, means: dict[int, float], rng: np.random.Generator, voxel_mm: float, texture: float = 0.06
) -> np.ndarray:
    """An image of a generation label map with given per-label intensities, texture and partial volume.

    Args:
        generation: Generation label map (:data:`medmamba.data.head_model.GENERATION_LABELS`).
        means: Intensity per label.
        rng: Random generator.
        voxel_mm: Voxel size in mm.
        texture: Relative amplitude of a smooth within-label texture.

    Returns:
        float32 image.

    Raises:
        ValueError: If ``means`` lacks a label present in ``generation``.
    """
    missing = sorted(set(np.unique(generation).tolist()) - set(means))
    if missing:
        raise ValueError(f"means has no intensity for generation labels {missing}; expected keys of {GENERATION_LABELS}")
    lut = np.zeros(max(max(means), int(generation.max())) + 1, dtype=np.float32)
    for k, v in means.items():
        lut[k] = v
    image = lut[np.asarray(generation, dtype=np.intp)]
    field = ndimage.gaussian_filter(rng.standard_normal(generation.shape).astype(np.float32), 1.2 / voxel_mm)
    image *= 1.0 + texture * field / (field.std() + 1e-6)
    return ndimage.gaussian_filter(image, 0.45 * 2.0 / voxel_mm).clip(0, None).astype(np.float32)


def thick_slices(volume: np.ndarray, affine: np.ndarray, slice_mm: float, order: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Resample a volume to thick slices along its last axis (slice profile: Gaussian of FWHM ``slice_mm``).

    Args:
        volume: ``(X, Y, Z)`` array on an isotropic grid.
        affine: Its voxel-to-RAS affine.
        slice_mm: New slice spacing and thickness in mm.
        order: Interpolation order (0 for labels: no slice-profile blur either).

    Returns:
        ``(volume, affine)`` on the new grid (same first voxel centre, same in-plane grid).

    Raises:
        ValueError: If ``slice_mm`` is not larger than the current slice spacing.
    """
    dz = float(np.linalg.norm(affine[:3, 2]))
    if slice_mm <= dz:
        raise ValueError(f"slice_mm={slice_mm!r} must exceed the current slice spacing {dz:.3g} mm")
    factor = slice_mm / dz
    src = np.asarray(volume, dtype=np.float32)
    if order > 0:
        src = ndimage.gaussian_filter1d(src, sigma=factor / 2.355, axis=2, mode="nearest")
    n_new = int(np.floor((volume.shape[2] - 1) / factor)) + 1
    coords = np.meshgrid(np.arange(volume.shape[0]), np.arange(volume.shape[1]), np.arange(n_new) * factor, indexing="ij")
    out = ndimage.map_coordinates(src, coords, order=order, mode="nearest")
    new_affine = np.asarray(affine, dtype=float).copy()
    new_affine[:3, 2] = new_affine[:3, 2] * factor
    return out.astype(volume.dtype if order == 0 else np.float32), new_affine


def _subject_image(subject: Any, setting: ShiftSetting, rng: np.random.Generator, voxel_mm: float, scale: float) -> np.ndarray:
    image = subject.image
    if setting.contrast == "t2":
        if subject.generation is None:
            gen = subject.tissue.astype(np.uint8).copy()
            gen[subject.lesion > 0] = LESION_LABEL
        else:
            gen = subject.generation
        image = render_contrast(gen, T2_MEANS, rng, voxel_mm) * scale
        image = rician_noise(image * bias_field(gen.shape, rng, 0.1), 0.02 * scale, rng)
    elif setting.contrast != "t1":
        raise ValueError(f"contrast must be 't1' or 't2', got {setting.contrast!r}")
    if setting.bias_strength > 0:
        image = image * bias_field(image.shape, rng, setting.bias_strength)
    if setting.noise > 0:
        image = rician_noise(image, setting.noise * scale, rng)
    return image


def make_shift_set(
    out_dir: str | os.PathLike[str],
    setting: ShiftSetting | str,
    n_subjects: int = 20,
    *,
    seed: int = 0,
    lesion_fraction: float = 0.5,
    template: MniTemplate | None = None,
) -> Path:
    """Write one evaluation set of the shift suite.

    Args:
        out_dir: Parent folder; the set goes to ``out_dir/<setting.name>``.
        setting: A :class:`ShiftSetting` or the name of one in :data:`SHIFT_SETTINGS`.
        n_subjects: Number of subjects (half with 1-3 lesions by default).
        seed: Seed of the set (subjects draw from a stream the default data set never uses).
        lesion_fraction: Fraction of subjects with lesions.
        template: The MNI template at ``setting.resolution_mm`` (loaded when ``None``).

    Returns:
        Path of the set's ``datalist.json``.

    Raises:
        ValueError: For an unknown setting name, ``n_subjects < 1`` or a template of another resolution.
    """
    if isinstance(setting, str):
        if setting not in SHIFT_SETTINGS:
            raise ValueError(f"setting={setting!r} is not a shift setting; expected one of {sorted(SHIFT_SETTINGS)}")
        setting = SHIFT_SETTINGS[setting]
    if int(n_subjects) < 1:
        raise ValueError(f"n_subjects must be >= 1, got {n_subjects!r}")
    from medmamba.io.nifti import write_nifti

    tpl = template if template is not None else load_mni_template(setting.resolution_mm)
    voxel_mm = float(np.linalg.norm(tpl.affine[:3, 0]))
    if abs(voxel_mm - setting.resolution_mm) > 1e-3:
        raise ValueError(f"template has {voxel_mm:g} mm voxels, setting {setting.name!r} needs {setting.resolution_mm} mm")
    root = Path(out_dir) / setting.name
    n_les = int(round(n_subjects * lesion_fraction))
    items = []
    for i in range(int(n_subjects)):
        rng = np.random.default_rng(np.random.SeedSequence([int(seed), 7_000_001, i]))
        n_lesions = int(rng.integers(1, 4)) if i < n_les else 0
        subject = make_subject(tpl, rng, n_lesions=n_lesions, head=setting.head)
        image = _subject_image(subject, setting, rng, voxel_mm, 1000.0)
        tissue, lesion, affine = subject.tissue, subject.lesion, subject_affine(tpl, head=setting.head)
        if setting.slice_mm is not None:
            image, new_affine = thick_slices(image, affine, setting.slice_mm)
            tissue, _ = thick_slices(tissue, affine, setting.slice_mm, order=0)
            lesion, _ = thick_slices(lesion, affine, setting.slice_mm, order=0)
            affine = new_affine
        sid = f"{setting.name}-{i:03d}"
        write_nifti(root / "images" / f"{sid}.nii.gz", image.astype(np.float32), affine, dtype=np.float32, xform_code=1)
        write_nifti(root / "labels" / f"{sid}_tissue.nii.gz", tissue.astype(np.uint8), affine, dtype=np.uint8, xform_code=1)
        write_nifti(root / "labels" / f"{sid}_lesion.nii.gz", lesion.astype(np.uint8), affine, dtype=np.uint8, xform_code=1)
        items.append({
            "id": sid,
            "image": f"images/{sid}.nii.gz",
            "label": f"labels/{sid}_tissue.nii.gz",
            "lesion": f"labels/{sid}_lesion.nii.gz",
            "has_lesion": int(lesion.any()),
        })
    datalist = {"name": f"medmamba shift suite: {setting.name}", "setting": asdict(setting), "seed": seed, "test": items}
    path = root / "datalist.json"
    path.write_text(json.dumps(datalist, indent=1) + "\n")
    return path


def plant_ellipsoid_lesions(
    image: np.ndarray,
    tissue: np.ndarray,
    rng: np.random.Generator,
    voxel_mm: float,
    *,
    n_lesions: int = 2,
    radius_mm: tuple[float, float] = (4.5, 7.0),
    factor: float = 0.5,
    where: np.ndarray | None = None,
    clip_to: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Plant smooth ellipsoidal lesions in white matter by a procedure unlike the training generator's.

    The training lesions (:func:`medmamba.data.synthetic.insert_lesions` and the bundles' on-the-fly
    insertion) are noise-distorted blobs with a 5 % texture; these are plain ellipsoids with a
    Gaussian edge (sigma 1 mm) and one flat intensity ``factor`` times the white-matter median, with
    their centres at least one radius deep in white matter. A detector that learnt the training
    blobs' texture rather than "abnormal signal in white matter" misses them.

    Args:
        image: Image (white matter brighter than 0).
        tissue: Tissue labels of the image (3: white matter).
        rng: Random generator.
        voxel_mm: Isotropic voxel size in mm.
        n_lesions: Number of lesions.
        radius_mm: Range of the semi-axes in mm.
        factor: Lesion intensity relative to the white-matter median (< 1 hypo-, > 1 hyperintense).
        where: Where centres may lie besides the depth rule (boolean, the image's shape); ``None``: anywhere.
        clip_to: Where the lesion may extend (boolean, e.g. the white matter and its one-voxel rim,
            :func:`medmamba.data.synthetic.white_matter_rim`, as the training lesions); ``None``: the
            whole ellipsoid, which may reach past the white matter into grey matter or CSF.

    Returns:
        ``(image, mask)``: the new float32 image and the uint8 lesion mask.

    Raises:
        ValueError: If there is no white matter deep enough for a lesion (inside ``where``), or a
            mask's shape differs from the image's.
    """
    wm = np.asarray(tissue) == 3
    for name, extra in (("where", where), ("clip_to", clip_to)):
        if extra is not None and np.shape(extra) != wm.shape:
            raise ValueError(f"{name} has shape {np.shape(extra)}; expected the image's shape {wm.shape}")
    depth = ndimage.distance_transform_edt(wm) * voxel_mm
    allowed = depth >= radius_mm[0]
    if where is not None:
        allowed &= np.asarray(where, dtype=bool)
    candidates = np.argwhere(allowed)
    if len(candidates) == 0:
        raise ValueError(f"no white matter at least {radius_mm[0]} mm deep to plant a lesion in"
                         + (" inside 'where'" if where is not None else ""))
    out = np.asarray(image, dtype=np.float32).copy()
    mask = np.zeros(wm.shape, dtype=bool)
    level = float(np.median(out[wm])) * float(factor)
    idx = np.indices(wm.shape, dtype=np.float32)
    for _ in range(int(n_lesions)):
        c = candidates[rng.integers(len(candidates))]
        axes = rng.uniform(*radius_mm, 3) / voxel_mm
        dist = np.sqrt(sum(((idx[d] - c[d]) / axes[d]) ** 2 for d in range(3)))
        blob = dist <= 1.0
        if clip_to is not None:
            blob &= np.asarray(clip_to, dtype=bool)
        soft = ndimage.gaussian_filter(blob.astype(np.float32), 1.0 / voxel_mm)
        out = out * (1.0 - soft) + level * soft
        mask |= blob
    return out, mask.astype(np.uint8)


def make_template_checks(out_dir: str | os.PathLike[str], resolution_mm: int = 2, n_planted: int = 4, seed: int = 0) -> Path:
    """The real-scan check that ships with nilearn: the unmodified MNI152 template, with and without lesions.

    The template itself (skull-stripped, lesion-free, never deformed or re-rendered) must be called
    lesion-free; copies with white-matter lesions planted by :func:`plant_ellipsoid_lesions`
    (half hypointense, factor 0.45, half hyperintense, factor 1.45) must be called lesion cases.

    Args:
        out_dir: Parent folder; written to ``out_dir/mni_template_<r>mm``.
        resolution_mm: Template resolution (1 or 2).
        n_planted: Number of copies with planted lesions.
        seed: Seed of the lesion placement.

    Returns:
        Path of the set's ``datalist.json`` (same layout as :func:`make_shift_set`).
    """
    from medmamba.data.synthetic import tissue_labels

    tpl = load_mni_template(resolution_mm)
    tissue = tissue_labels(tpl.gm, tpl.wm, tpl.mask)
    base = (tpl.t1 * 1000.0).astype(np.float32)
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 7_000_002, int(resolution_mm)]))
    return write_template_checks(
        Path(out_dir) / f"mni_template_{resolution_mm}mm", f"MNI152 template checks, {resolution_mm} mm", "template",
        base, tissue, tpl.affine, rng, n_planted=n_planted, seed=seed,
    )


def write_template_checks(
    root: Path,
    title: str,
    prefix: str,
    image: np.ndarray,
    tissue: np.ndarray,
    affine: np.ndarray,
    rng: np.random.Generator,
    *,
    n_planted: int,
    seed: int,
    keep: np.ndarray | None = None,
) -> Path:
    """Write a lesion-free template image and copies with planted lesions as one check set.

    Copy ``k`` gets ``1 + k % 2`` lesions of :func:`plant_ellipsoid_lesions`, hypointense (factor
    0.45) for even ``k``, hyperintense (1.45) for odd ``k``.

    Args:
        root: The set's folder (``images/``, ``labels/``, ``datalist.json``).
        title: The datalist's ``name``.
        prefix: Case id of the lesion-free image; the copies are ``<prefix>_planted<k>_<hypo|hyper>``.
        image: The lesion-free image.
        tissue: Its tissue labels (3: white matter), written as every case's ``label``.
        affine: Voxel-to-RAS affine (isotropic voxels).
        rng: Random generator of the lesion placement.
        n_planted: Number of copies with planted lesions.
        seed: Recorded in the datalist.
        keep: Where the copies keep their intensities (a brain mask for skull-stripped sets); ``None``: everywhere.

    Returns:
        Path of the set's ``datalist.json``.
    """
    from medmamba.io.nifti import write_nifti

    voxel_mm = float(np.linalg.norm(np.asarray(affine)[:3, 0]))
    cases = [(prefix, image, np.zeros(tissue.shape, np.uint8))]
    for k in range(int(n_planted)):
        factor = 0.45 if k % 2 == 0 else 1.45
        img, mask = plant_ellipsoid_lesions(image, tissue, rng, voxel_mm, n_lesions=1 + k % 2, factor=factor)
        if keep is not None:
            img = img * keep
        cases.append((f"{prefix}_planted{k}_{'hypo' if factor < 1 else 'hyper'}", img, mask))
    items = []
    for name, img, mask in cases:
        write_nifti(root / "images" / f"{name}.nii.gz", img, affine, dtype=np.float32, xform_code=1)
        write_nifti(root / "labels" / f"{name}_tissue.nii.gz", tissue, affine, dtype=np.uint8, xform_code=1)
        write_nifti(root / "labels" / f"{name}_lesion.nii.gz", mask, affine, dtype=np.uint8, xform_code=1)
        items.append({"id": name, "image": f"images/{name}.nii.gz", "label": f"labels/{name}_tissue.nii.gz",
                      "lesion": f"labels/{name}_lesion.nii.gz", "has_lesion": int(mask.any())})
    path = Path(root) / "datalist.json"
    path.write_text(json.dumps({"name": title, "seed": seed, "test": items}, indent=1) + "\n")
    return path
