"""Semi-synthetic subjects from the MNI152 template: deformation, bias field, noise, contrast, lesions.

The anatomy is real (the MNI152 2009 T1 template with its grey- and white-matter maps and brain
mask, shipped inside the ``nilearn`` package, read offline); the variation between subjects and
the lesions are synthetic. Every random choice comes from the ``numpy.random.Generator`` passed in,
so a subject is a pure function of its seed.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import ndimage

from medmamba.data.head_model import (
    LESION_LABEL,
    add_head,
    brighten_posterior_fossa,
    enlarge_ventricles,
    fold_cortex,
    posterior_fossa_mask,
    render_t1,
)
from medmamba.data.random_fields import smooth_random_field

__all__ = [
    "TISSUE_LABELS",
    "MniTemplate",
    "Subject",
    "bias_field",
    "extend_inferior",
    "insert_lesions",
    "white_matter_rim",
    "load_mni_template",
    "make_subject",
    "random_deformation",
    "rician_noise",
    "subject_affine",
    "tissue_labels",
    "warp",
]

#: Label values of the tissue maps.
TISSUE_LABELS: dict[int, str] = {0: "background", 1: "CSF/other in brain", 2: "grey matter", 3: "white matter"}


@dataclass(frozen=True)
class MniTemplate:
    """The template volumes on one grid.

    Attributes:
        t1: T1 intensities in [0, 1].
        gm: Grey-matter probability.
        wm: White-matter probability.
        mask: Brain mask (0/1 float).
        affine: Voxel-to-RAS (MNI) affine.
    """

    t1: np.ndarray
    gm: np.ndarray
    wm: np.ndarray
    mask: np.ndarray
    affine: np.ndarray

    @property
    def shape(self) -> tuple[int, int, int]:
        """Grid shape."""
        return tuple(int(s) for s in self.t1.shape)  # type: ignore[return-value]


def _block_mean(vol: np.ndarray, factor: int) -> np.ndarray:
    if factor == 1:
        return vol
    shp = [s // factor * factor for s in vol.shape]
    v = vol[: shp[0], : shp[1], : shp[2]]
    return v.reshape(shp[0] // factor, factor, shp[1] // factor, factor, shp[2] // factor, factor).mean(axis=(1, 3, 5))


def load_mni_template(resolution: int = 2, downsample: int = 1) -> MniTemplate:
    """Load the MNI152 template and tissue maps that ship with nilearn (no download).

    Args:
        resolution: nilearn template resolution in mm (1 or 2).
        downsample: Integer block-averaging factor on top (1 keeps the grid; 2 halves each axis).

    Returns:
        The template, float32 volumes on a common grid.

    Raises:
        ValueError: If ``resolution`` is not 1 or 2 or ``downsample`` < 1.
    """
    if resolution not in (1, 2):
        raise ValueError(f"resolution must be 1 or 2 (mm), got {resolution!r}")
    if int(downsample) < 1:
        raise ValueError(f"downsample must be a positive integer, got {downsample!r}")
    from nilearn import datasets  # local import: nilearn is slow to import and only needed here

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        imgs = [
            datasets.load_mni152_template(resolution=resolution),
            datasets.load_mni152_gm_template(resolution=resolution),
            datasets.load_mni152_wm_template(resolution=resolution),
            datasets.load_mni152_brain_mask(resolution=resolution),
        ]
    vols = [np.asarray(img.get_fdata(), dtype=np.float32) for img in imgs]
    affine = np.asarray(imgs[0].affine, dtype=float)
    f = int(downsample)
    if f > 1:
        vols = [_block_mean(v, f).astype(np.float32) for v in vols]
        scale = np.diag([f, f, f, 1.0])
        shift = np.eye(4)
        shift[:3, 3] = (f - 1) / 2.0
        affine = affine @ shift @ scale
    t1, gm, wm, mask = vols
    mask = (mask >= 0.5).astype(np.float32)
    return MniTemplate(t1=np.clip(t1, 0, None), gm=np.clip(gm, 0, 1), wm=np.clip(wm, 0, 1), mask=mask, affine=affine)


def _rotation(angles: np.ndarray) -> np.ndarray:
    ax, ay, az = angles
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx


def random_deformation(
    shape: tuple[int, int, int],
    rng: np.random.Generator,
    voxel_mm: float,
    *,
    max_rotation_deg: float = 7.0,
    scale_range: tuple[float, float] = (0.92, 1.08),
    max_translation_mm: float = 5.0,
    elastic_mm: float = 2.5,
    elastic_grid: int = 5,
) -> tuple[np.ndarray, dict[str, Any]]:
    """Sample a smooth random deformation (affine + elastic) as sampling coordinates.

    The result gives, for each output voxel, the template voxel to sample: rotation and anisotropic
    scaling about the grid centre, a translation, and a smooth displacement field.

    Args:
        shape: Grid shape.
        rng: Random generator.
        voxel_mm: Voxel size (to express millimetre parameters in voxels).
        max_rotation_deg: Largest rotation about each axis.
        scale_range: Range of the per-axis scale factors.
        max_translation_mm: Largest translation per axis.
        elastic_mm: Standard deviation of the elastic displacement at the control points.
        elastic_grid: Number of control points per axis of the elastic field.

    Returns:
        ``(coords, params)``: float32 ``(3, *shape)`` sampling coordinates and the affine parameters.
    """
    angles = np.deg2rad(rng.uniform(-max_rotation_deg, max_rotation_deg, 3))
    scales = rng.uniform(*scale_range, 3)
    trans = rng.uniform(-max_translation_mm, max_translation_mm, 3) / voxel_mm
    mat = _rotation(angles) @ np.diag(1.0 / scales)
    centre = (np.asarray(shape, dtype=float) - 1) / 2.0
    grid = np.indices(shape, dtype=np.float32).reshape(3, -1) - centre[:, None].astype(np.float32)
    coords = (mat.astype(np.float32) @ grid) + (centre + trans)[:, None].astype(np.float32)
    coords = coords.reshape(3, *shape)
    for d in range(3):
        coords[d] += smooth_random_field(shape, rng, elastic_grid, elastic_mm / voxel_mm)
    params = {
        "rotation_deg": np.rad2deg(angles).round(3).tolist(),
        "scale": scales.round(4).tolist(),
        "translation_mm": (trans * voxel_mm).round(3).tolist(),
    }
    return coords, params


def warp(volume: np.ndarray, coords: np.ndarray, order: int = 1) -> np.ndarray:
    """Sample ``volume`` at ``coords`` (zero outside), as float32."""
    return ndimage.map_coordinates(volume, coords, order=order, mode="constant", cval=0.0, prefilter=False).astype(
        np.float32
    )


def tissue_labels(gm: np.ndarray, wm: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Hard tissue labels: 0 outside the mask, else the most likely of CSF/other (1), GM (2), WM (3)."""
    csf = np.clip(1.0 - gm - wm, 0.0, 1.0)
    labels = np.argmax(np.stack([csf, gm, wm]), axis=0).astype(np.uint8) + 1
    labels[mask < 0.5] = 0
    return labels


def bias_field(shape: tuple[int, int, int], rng: np.random.Generator, strength: float = 0.15, grid: int = 4) -> np.ndarray:
    """A smooth multiplicative bias field ``exp(smooth noise)`` (float32, around 1)."""
    return np.exp(smooth_random_field(shape, rng, grid, strength)).astype(np.float32)


def rician_noise(image: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """Magnitude (Rician) noise as in MR: ``|image + n1 + i n2|``, non-negative."""
    n1 = rng.normal(0.0, sigma, image.shape).astype(np.float32)
    n2 = rng.normal(0.0, sigma, image.shape).astype(np.float32)
    return np.sqrt((image + n1) ** 2 + n2**2).astype(np.float32)


def white_matter_rim(labels: np.ndarray, wm_label: int = 3) -> np.ndarray:
    """Where a white-matter lesion may lie: the white matter and a one-voxel rim of it inside the brain.

    A hypointense lesion that runs into grey matter or CSF has their intensity there and cannot be
    seen; labelling those voxels as lesion teaches a detector to call normal cortex a lesion (in the
    data set's format 4, 35-45 % of the lesion voxels of a validation suite lay in grey matter or
    CSF). The rim keeps the partial-volume edge of a lesion that touches the cortex.

    Args:
        labels: Tissue labels (0 outside the brain).
        wm_label: The white-matter label.

    Returns:
        Boolean mask of the same shape.
    """
    labels = np.asarray(labels)
    wm = labels == wm_label
    return _dilate_by_one_voxel(wm) & (labels > 0)


def _dilate_by_one_voxel(mask: np.ndarray) -> np.ndarray:
    """``scipy.ndimage.binary_dilation(mask, iterations=1)`` (face neighbours, nothing beyond the border)
    as one shifted OR per axis and direction: the same mask, an order of magnitude faster on the
    slice stacks the training lesion insertion runs it on (``(H, W, 5)``). The shifts run with the
    longest axes innermost (a transposed copy: a short innermost axis makes every OR a strided loop
    over a few elements), and the result is transposed back."""
    order = np.argsort(mask.shape, kind="stable")  # shortest axis first, longest innermost
    if not np.array_equal(order, np.arange(mask.ndim)):
        moved = _shifted_or_dilation(np.ascontiguousarray(mask.transpose(order)))
        return moved.transpose(np.argsort(order))
    return _shifted_or_dilation(mask)


def _shifted_or_dilation(mask: np.ndarray) -> np.ndarray:
    out = mask.copy()
    for axis in range(mask.ndim):
        n = mask.shape[axis]
        if n < 2:
            continue
        lo = [slice(None)] * mask.ndim
        hi = [slice(None)] * mask.ndim
        lo[axis], hi[axis] = slice(0, n - 1), slice(1, n)
        out[tuple(lo)] |= mask[tuple(hi)]
        out[tuple(hi)] |= mask[tuple(lo)]
    return out


def _lesion_blob(
    labels: np.ndarray, rng: np.random.Generator, voxel_mm: float, radius_mm: tuple[float, float],
    allowed: np.ndarray,
) -> np.ndarray | None:
    wm = np.argwhere(labels == 3)
    if len(wm) == 0:
        return None
    centre = wm[rng.integers(len(wm))]
    r = rng.uniform(*radius_mm) / voxel_mm
    half = int(np.ceil(r * 1.8)) + 1
    lo = np.maximum(centre - half, 0)
    hi = np.minimum(centre + half + 1, labels.shape)
    box = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))
    idx = np.indices(tuple(int(b - a) for a, b in zip(lo, hi)), dtype=np.float32)
    anis = rng.uniform(0.7, 1.3, 3)
    dist = np.sqrt(sum(((idx[d] + lo[d] - centre[d]) * anis[d]) ** 2 for d in range(3))) / r
    noise = ndimage.gaussian_filter(rng.normal(size=dist.shape), sigma=max(r / 2.5, 0.8))
    noise /= noise.std() + 1e-6
    blob = np.zeros(labels.shape, dtype=bool)
    blob[box] = (dist + 0.3 * noise) < 1.0
    blob &= allowed
    return blob


def insert_lesions(
    image: np.ndarray,
    labels: np.ndarray,
    rng: np.random.Generator,
    voxel_mm: float,
    *,
    n_lesions: int,
    radius_mm: tuple[float, float] = (4.0, 9.0),
    min_voxels: int = 8,
) -> tuple[np.ndarray, np.ndarray, list[dict[str, Any]]]:
    """Insert irregular blobs of abnormal intensity centred in white matter.

    Each lesion is a sphere distorted by smooth noise, centred in white matter and clipped to the
    white matter and its one-voxel rim (:func:`white_matter_rim`: where the lesion is visible); its
    intensity is a random factor of the white-matter mean (hypo- or hyperintense), blended with a
    soft edge.

    Args:
        image: Noise-free image (float32).
        labels: Tissue labels of the same subject.
        rng: Random generator.
        voxel_mm: Voxel size in mm.
        n_lesions: Number of lesions to insert.
        radius_mm: Range of the nominal lesion radius.
        min_voxels: Smallest accepted lesion (retries otherwise).

    Returns:
        ``(image, mask, info)``: the modified image, the uint8 lesion mask and per-lesion details.
    """
    out = image.copy()
    mask = np.zeros(labels.shape, dtype=bool)
    info: list[dict[str, Any]] = []
    wm_mean = float(image[labels == 3].mean()) if np.any(labels == 3) else float(image.max())
    min_vox = max(1, int(round(min_voxels * (2.0 / voxel_mm) ** 3)))
    allowed = white_matter_rim(labels)
    for _ in range(n_lesions):
        blob = None
        for _attempt in range(10):
            blob = _lesion_blob(labels, rng, voxel_mm, radius_mm, allowed)
            if blob is not None and int(blob.sum()) >= min_vox:
                break
            blob = None
        if blob is None:
            continue
        factor = float(rng.uniform(0.35, 0.6) if rng.random() < 0.5 else rng.uniform(1.3, 1.6))
        soft = ndimage.gaussian_filter(blob.astype(np.float32), sigma=0.6)
        soft = np.maximum(soft, blob.astype(np.float32) * 0.9)
        texture = 1.0 + 0.05 * rng.normal(size=image.shape).astype(np.float32)
        out = out * (1.0 - soft) + (wm_mean * factor) * texture * soft
        mask |= blob
        info.append({"voxels": int(blob.sum()), "intensity_factor": round(factor, 3)})
    return out.astype(np.float32), mask.astype(np.uint8), info


@dataclass
class Subject:
    """One generated subject.

    Attributes:
        image: T1-like intensities (float32, arbitrary units around 0-1500).
        tissue: uint8 tissue labels (see :data:`TISSUE_LABELS`).
        lesion: uint8 lesion mask (all zero for lesion-free subjects).
        params: The random parameters drawn (for the manifest).
        generation: uint8 generation label map (brain, lesion and head tissue kinds, see
            :data:`medmamba.data.head_model.GENERATION_LABELS`) that random-contrast training images
            are synthesised from; ``None`` for a skull-stripped subject made without a head.
    """

    image: np.ndarray
    tissue: np.ndarray
    lesion: np.ndarray
    params: dict[str, Any] = field(default_factory=dict)
    generation: np.ndarray | None = None


def extend_inferior(template: MniTemplate, mm: float) -> MniTemplate:
    """The template on a grid extended by ``mm`` below its lowest slice (zeros there), affine adjusted.

    Args:
        template: The template (RAS voxel order: the last axis runs inferior to superior).
        mm: Extension in mm (rounded to whole voxels).

    Returns:
        The extended template.

    Raises:
        ValueError: If ``mm`` is negative.
    """
    if mm < 0:
        raise ValueError(f"mm must be >= 0, got {mm!r}")
    dz = float(np.linalg.norm(template.affine[:3, 2]))
    n = int(round(mm / dz))
    if n == 0:
        return template
    pad = ((0, 0), (0, 0), (n, 0))
    vols = [np.pad(v, pad) for v in (template.t1, template.gm, template.wm, template.mask)]
    affine = template.affine.copy()
    affine[:3, 3] = affine[:3, 3] - n * affine[:3, 2]
    return MniTemplate(*vols, affine=affine)


def subject_affine(template: MniTemplate, head: bool = True, neck_mm: float = 40.0) -> np.ndarray:
    """The affine of the subjects :func:`make_subject` makes from ``template`` with these options."""
    return extend_inferior(template, neck_mm).affine if head and neck_mm > 0 else template.affine


def _intensities_follow_labels(brain_t1: np.ndarray, before: np.ndarray, after: np.ndarray) -> None:
    """Voxels whose tissue label changed from ``before`` to ``after`` take the new tissue's typical
    (median, under ``before``) intensity, so image and labels agree (in place)."""
    changed = (after != before) & (after > 0)
    for k in (1, 2, 3):
        sel = changed & (after == k)
        if sel.any() and np.any(before == k):
            brain_t1[sel] = float(np.median(brain_t1[before == k]))


def make_subject(
    template: MniTemplate,
    rng: np.random.Generator,
    *,
    n_lesions: int = 0,
    intensity_scale: float = 1000.0,
    head: bool = True,
    fold: bool = True,
    neck_mm: float = 40.0,
    ventricles: bool = False,
    posterior_fossa: bool = False,
) -> Subject:
    """Make one subject: deform the template, fold the cortex, add a head, lesions, bias and noise.

    Args:
        template: The MNI template.
        rng: The subject's own random generator.
        n_lesions: Number of lesions (0 for a lesion-free subject).
        intensity_scale: Nominal intensity of white matter.
        head: Surround the brain with scalp, skull, fat, eyes and a skull base
            (:func:`medmamba.data.head_model.add_head`), as a scanner's whole-head image has them.
            ``False`` gives a skull-stripped subject (the template's own look).
        fold: Carve sulcal CSF clefts and an irregular grey/white boundary into the cortex
            (:func:`medmamba.data.head_model.fold_cortex`).
        neck_mm: With ``head``, the grid is extended by this much below the template's (whose
            lowest slice cuts the cerebellum), so that slices of skull base and neck without brain
            occur, as they do in a scanner's head image. The subject's arrays and
            :func:`subject_affine` then have that many more slices.
        ventricles: Widen the ventricles by a random margin
            (:func:`medmamba.data.head_model.enlarge_ventricles`). Off in the default data: tried
            with ``posterior_fossa`` on validation data and not taken (``docs/real-scans.md``,
            "thirteenth session").
        posterior_fossa: Leave cerebellum and brainstem
            (:func:`medmamba.data.head_model.posterior_fossa_mask`) out of the folding and give
            their tissue a random gain (:func:`medmamba.data.head_model.brighten_posterior_fossa`),
            as a single subject's posterior fossa looks. Off in the default data (as ``ventricles``).

    Returns:
        The subject.

    Raises:
        ValueError: If ``n_lesions`` is negative.
    """
    if n_lesions < 0:
        raise ValueError(f"n_lesions must be >= 0, got {n_lesions!r}")
    voxel_mm = float(np.sqrt((template.affine[:3, 0] ** 2).sum()))
    if head and neck_mm > 0:
        template = extend_inferior(template, neck_mm)
    coords, params = random_deformation(template.shape, rng, voxel_mm)
    t1 = warp(template.t1, coords)
    gm = warp(template.gm, coords)
    wm = warp(template.wm, coords)
    mask = warp(template.mask, coords)
    tissue = tissue_labels(gm, wm, mask)
    gamma = float(rng.uniform(0.8, 1.25))
    gm_shift = float(rng.uniform(-0.06, 0.06))
    wm_level = float(np.median(t1[tissue == 3])) if np.any(tissue == 3) else float(t1.max())
    brain_t1 = (np.clip(t1, 0, None) / max(wm_level, 1e-6)) ** gamma * (1.0 + gm_shift * gm)
    fossa = None
    if posterior_fossa:
        fossa = warp(posterior_fossa_mask(template.shape, template.affine).astype(np.float32), coords) >= 0.5
    if fold:
        before = tissue
        tissue, _clefts = fold_cortex(tissue, rng, voxel_mm, gm=gm, wm=wm, exclude=fossa)
        _intensities_follow_labels(brain_t1, before, tissue)
    if ventricles:
        before = tissue
        tissue, _widened = enlarge_ventricles(tissue, rng, voxel_mm)
        _intensities_follow_labels(brain_t1, before, tissue)
    if fossa is not None:
        brain_t1 = brighten_posterior_fossa(brain_t1, tissue, fossa, rng, voxel_mm)
    generation = None
    if head:
        generation, head_params = add_head(tissue, rng, voxel_mm, template.affine)
        params["head"] = head_params
        image = render_t1(generation, brain_t1, rng, voxel_mm)
    else:
        image = brain_t1 * (mask >= 0.5)
        if fold:
            csf = tissue == 1
            image[csf] = np.minimum(image[csf], 0.3)
    image *= float(rng.uniform(0.85, 1.15)) * intensity_scale
    image, lesion, lesion_info = insert_lesions(image, tissue, rng, voxel_mm, n_lesions=n_lesions)
    if generation is not None:
        generation[lesion > 0] = LESION_LABEL
    bias_strength = float(rng.uniform(0.05, 0.2))
    image = image * bias_field(template.shape, rng, bias_strength)
    sigma = float(rng.uniform(0.01, 0.03)) * intensity_scale
    image = rician_noise(image, sigma, rng)
    params.update(
        gamma=round(gamma, 4),
        gm_shift=round(gm_shift, 4),
        bias_strength=round(bias_strength, 4),
        noise_sigma=round(sigma, 3),
        lesions=lesion_info,
    )
    return Subject(image=image, tissue=tissue, lesion=lesion, params=params, generation=generation)
