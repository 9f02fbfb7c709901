"""A synthetic head around a brain label map: cortical folding, scalp, skull, fat, eyes, skull base.

The MNI152 2009 template that the default data are made from is skull-stripped and, as an average
of 152 brains, has a smooth cortex with hardly any sulcal CSF. A network trained on it sees neither
the non-brain tissue of a scanner's whole-head image nor the folded cortex of a single subject, and
a real scan then looks out of distribution (see the real-scans issue). This module adds both to a
subject's label map, in the spirit of the label maps that SynthSeg (Billot et al., Medical Image
Analysis 2023) synthesises its training images from:

- :func:`fold_cortex` carves thin, randomly oriented CSF clefts (sulci) into the outer cortex and
  perturbs the grey/white boundary, so that the cortex carries the CSF/grey-matter texture of one
  subject rather than of an average;
- :func:`add_head` surrounds the brain with layers of random, smoothly varying thickness
  (extra-cerebral CSF, inner table, diploe, outer table, muscle/galea, subcutaneous fat, skin), a
  skull-base block of mixed tissue under the brain, and two eyes in orbital fat.

Three more steps towards a single subject's anatomy exist but are off in the default data (tried on
validation data, no gain beyond the spread between training seeds; ``docs/real-scans.md``,
"thirteenth session"; ``make_subject(ventricles=True, posterior_fossa=True)``):

- :func:`enlarge_ventricles` widens the deep CSF (ventricles) by a random, smoothly varying margin,
  since single subjects' ventricles vary in size and a real fourth ventricle is a sharp dark space
  between a bright pons and cerebellum, not an average's blurred slit;
- :func:`posterior_fossa_mask` marks cerebellum and brainstem (MNI coordinates), which the folding
  then leaves alone (``fold_cortex``'s ``exclude``): cerebellar folia are too fine for CSF clefts at
  the data's 2 mm, and with clefts the training cerebellum is a mottled grey that no scan shows;
- :func:`brighten_posterior_fossa` raises the brainstem and cerebellum towards white matter: the
  MNI152 average renders them at about 0.83 of white matter around the fourth ventricle, single
  subjects at white matter's level or above, so a real fourth ventricle is a dark hole in bright
  tissue, the look of a hypointense white-matter lesion.

The result is a *generation label map* (:data:`GENERATION_LABELS`): one value per tissue kind, from
which images of any contrast are synthesised (:class:`medmamba.transforms.RandDomainSynthesisd`)
and a T1-weighted image is rendered for the stored default data (:func:`render_t1`). The training
targets stay the brain tissue labels (:data:`medmamba.data.synthetic.TISSUE_LABELS`); every
non-brain generation label maps to background (0), so a segmentation network learns to separate
brain from head.

Every random choice comes from the ``numpy.random.Generator`` passed in.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy import ndimage

from medmamba.data.random_fields import filtered_noise_field, smooth_random_field

__all__ = [
    "GENERATION_LABELS",
    "BRAIN_LABELS",
    "LESION_LABEL",
    "T1_MEANS",
    "add_head",
    "brighten_posterior_fossa",
    "enlarge_ventricles",
    "fold_cortex",
    "generation_to_tissue",
    "posterior_fossa_mask",
    "render_t1",
]

#: Values of the generation label map.
GENERATION_LABELS: dict[int, str] = {
    0: "air",
    1: "CSF in the brain (ventricles, sulci)",
    2: "grey matter",
    3: "white matter",
    4: "lesion",
    5: "extra-cerebral CSF and dura",
    6: "cortical bone",
    7: "bone marrow (diploe)",
    8: "muscle and skin",
    9: "fat",
    10: "eye (vitreous)",
}

#: Generation labels that are brain (tissue label = generation label; a lesion counts as white matter).
BRAIN_LABELS: tuple[int, ...] = (1, 2, 3, 4)

#: Generation label of a lesion.
LESION_LABEL: int = 4

#: Nominal T1-weighted intensities relative to white matter (1.0), used by :func:`render_t1` for the
#: non-brain labels (inside the brain the template's own intensities are used).
T1_MEANS: dict[int, float] = {
    0: 0.0,
    1: 0.28,
    2: 0.66,
    3: 1.0,
    4: 0.5,
    5: 0.22,
    6: 0.07,
    7: 0.85,
    8: 0.5,
    9: 1.12,
    10: 0.2,
}


def generation_to_tissue(generation: np.ndarray) -> np.ndarray:
    """Brain tissue labels (0 background/non-brain, 1 CSF, 2 GM, 3 WM) of a generation label map.

    Args:
        generation: Generation label map (:data:`GENERATION_LABELS`).

    Returns:
        uint8 tissue labels; a lesion voxel counts as white matter (its own mask marks it).
    """
    lut = np.zeros(max(GENERATION_LABELS) + 1, dtype=np.uint8)
    lut[1], lut[2], lut[3], lut[LESION_LABEL] = 1, 2, 3, 3
    return lut[np.asarray(generation, dtype=np.intp)]


def fold_cortex(
    tissue: np.ndarray,
    rng: np.random.Generator,
    voxel_mm: float,
    *,
    depth_mm: tuple[float, float] = (6.0, 12.0),
    cleft_fraction: tuple[float, float] = (0.12, 0.25),
    boundary_jitter: float = 0.15,
    gm: np.ndarray | None = None,
    wm: np.ndarray | None = None,
    exclude: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Sulcal CSF clefts and an irregular grey/white boundary in the outer cortex.

    Thin sheets where a band-pass noise field crosses zero become CSF, within ``depth`` mm of the
    brain surface and outside deep white matter; with ``gm``/``wm`` probability maps, the tissue of
    each voxel is re-decided with noise added to the probabilities (``boundary_jitter``), so the
    grey/white boundary has the irregular shape of one subject.

    Args:
        tissue: Brain tissue labels (0 outside the brain, 1 CSF, 2 GM, 3 WM).
        rng: Random generator.
        voxel_mm: Voxel size in mm.
        depth_mm: Range of the depth of the folded zone below the brain surface.
        cleft_fraction: Range of the fraction of candidate voxels that become CSF.
        boundary_jitter: Amplitude of the noise added to the tissue probabilities (0 keeps them).
        gm: Grey-matter probability map (optional, same shape).
        wm: White-matter probability map (optional, same shape).
        exclude: Voxels left as they are (optional boolean map, same shape; e.g.
            :func:`posterior_fossa_mask`).

    Returns:
        ``(tissue, clefts)``: the new uint8 tissue labels and the boolean cleft mask.

    Raises:
        ValueError: If the maps' shapes differ or ``voxel_mm`` is not positive.
    """
    tissue = np.asarray(tissue)
    if voxel_mm <= 0:
        raise ValueError(f"voxel_mm must be positive, got {voxel_mm!r}")
    for name, arr in (("gm", gm), ("wm", wm), ("exclude", exclude)):
        if arr is not None and arr.shape != tissue.shape:
            raise ValueError(f"{name} must have the tissue map's shape {tissue.shape}, got {arr.shape}")
    brain = tissue > 0
    out = tissue.astype(np.uint8).copy()
    keep = np.zeros(tissue.shape, dtype=bool) if exclude is None else np.asarray(exclude, dtype=bool)
    if gm is not None and wm is not None and boundary_jitter > 0:
        csf = np.clip(1.0 - gm - wm, 0.0, 1.0)
        jitter = [boundary_jitter * filtered_noise_field(tissue.shape, rng, 1.5 / voxel_mm) for _ in range(3)]
        probs = np.stack([csf + jitter[0], gm + jitter[1], wm + jitter[2]])
        relabel = np.argmax(probs, axis=0).astype(np.uint8) + 1
        # only at tissue boundaries (where two classes compete); clear interiors keep their label
        ambiguous = (np.sort(np.stack([csf, gm, wm]), axis=0)[-2] > 0.15) & brain & ~keep
        out[ambiguous] = relabel[ambiguous]
    depth = float(rng.uniform(*depth_mm))
    inside_mm = ndimage.distance_transform_edt(brain) * voxel_mm
    scale = float(rng.uniform(2.0, 3.5)) / voxel_mm
    band = filtered_noise_field(tissue.shape, rng, scale * 0.5) - 0.8 * filtered_noise_field(tissue.shape, rng, scale)
    candidates = brain & (inside_mm <= depth) & (out != 3) & ~keep
    if not candidates.any():
        return out, np.zeros(tissue.shape, dtype=bool)
    frac = float(rng.uniform(*cleft_fraction))
    threshold = float(np.quantile(np.abs(band[candidates]), frac))
    clefts = candidates & (np.abs(band) <= threshold)
    out[clefts] = 1
    return out, clefts


def posterior_fossa_mask(shape: tuple[int, int, int], affine: np.ndarray) -> np.ndarray:
    """Cerebellum and brainstem of an MNI152-space grid: the compartment below the tentorium.

    A geometric outline in MNI coordinates (mm), read off the MNI152 2009 template's sagittal
    sections: behind y = -42 everything below the tentorium, taken as the plane
    z = -10 - |x| / 4 (the cerebellum's upper surface, higher at the vermis than laterally); from
    y = -42 to -10 the brainstem, |x| < 14 and z < -20 (pons and medulla, not the midbrain). Inside
    a brain mask it is cerebellum and brainstem give or take a few millimetres of the inferior
    occipital and temporal lobes.

    Args:
        shape: Grid shape (RAS voxel order).
        affine: Voxel-to-MNI affine of the grid.

    Returns:
        Boolean map of the grid.
    """
    ijk = np.indices(shape, dtype=np.float32).reshape(3, -1)
    xyz = np.asarray(affine, dtype=np.float32)[:3, :3] @ ijk + np.asarray(affine, dtype=np.float32)[:3, 3:4]
    x, y, z = xyz
    cerebellum = (y < -42.0) & (z < -10.0 - np.abs(x) / 4.0)
    brainstem = (y >= -42.0) & (y < -10.0) & (np.abs(x) < 14.0) & (z < -20.0)
    return (cerebellum | brainstem).reshape(shape)


def brighten_posterior_fossa(
    brain_t1: np.ndarray,
    tissue: np.ndarray,
    fossa: np.ndarray,
    rng: np.random.Generator,
    voxel_mm: float,
    *,
    gain: tuple[float, float] = (0.85, 1.3),
) -> np.ndarray:
    """Brainstem and cerebellum tissue brighter by a random gain, blended over a few millimetres.

    Around the fourth ventricle the MNI152 2009 template's tissue is 0.83 of its white-matter
    median (grey matter 0.79): an average blurs the pons' and cerebellar peduncles' white matter with
    the cortex around it. In single-subject T1 scans measured for the real-scans issue (the
    registry scans of :mod:`medmamba.data.registry_scans`, 2 mm) the same ring is at or above white
    matter; in a scan with a strong bias field (``robex``) the posterior fossa is darker instead.
    Grey and white matter inside ``fossa`` are multiplied by a gain drawn from ``gain`` (up to 1.3:
    0.83 to about 1.08 of white matter; down to 0.85 for a darkened fossa; CSF, the fourth ventricle
    included, stays dark), with the mask blurred by 2 mm so there is no edge at the tentorium.

    Args:
        brain_t1: Template intensities, white matter about 1.
        tissue: Brain tissue labels on the same grid.
        fossa: Boolean map of the posterior fossa (:func:`posterior_fossa_mask`).
        rng: Random generator.
        voxel_mm: Voxel size in mm.
        gain: Range of the multiplicative gain.

    Returns:
        The new float32 intensities.

    Raises:
        ValueError: If the shapes differ or ``gain`` is not an ordered pair of positive numbers.
    """
    if np.shape(brain_t1) != np.shape(tissue) or np.shape(fossa) != np.shape(tissue):
        raise ValueError(f"brain_t1, tissue and fossa must have one shape, got {np.shape(brain_t1)}, "
                         f"{np.shape(tissue)} and {np.shape(fossa)}")
    if len(gain) != 2 or not 0.0 < gain[0] <= gain[1]:
        raise ValueError(f"gain must be (low, high) with 0 < low <= high, got {gain!r}")
    g = float(rng.uniform(*gain))
    weight = ndimage.gaussian_filter(np.asarray(fossa, dtype=np.float32), sigma=2.0 / voxel_mm)
    tissue_voxels = np.isin(tissue, (2, 3))
    return (np.asarray(brain_t1, np.float32) * (1.0 + (g - 1.0) * weight * tissue_voxels)).astype(np.float32)


def enlarge_ventricles(
    tissue: np.ndarray,
    rng: np.random.Generator,
    voxel_mm: float,
    *,
    margin_mm: tuple[float, float] = (0.0, 3.0),
    depth_mm: float = 14.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Widen the ventricles by a random margin that varies smoothly across the brain.

    Ventricles are the CSF voxels deeper than ``depth_mm`` below the brain surface (sulcal clefts
    lie shallower). Tissue within a margin of them becomes CSF; the margin is a subject-wide value
    drawn from ``margin_mm`` times a smooth random factor in [0.25, 1.75], so the ventricular system
    widens unevenly, as single subjects' ventricles differ in size and shape from an average's. It
    never comes within 4 mm of the brain surface.

    Args:
        tissue: Brain tissue labels (0 outside the brain, 1 CSF, 2 GM, 3 WM).
        rng: Random generator.
        voxel_mm: Voxel size in mm.
        margin_mm: Range of the subject's mean margin.
        depth_mm: Depth below the brain surface from which CSF counts as ventricle.

    Returns:
        ``(tissue, added)``: the new uint8 tissue labels and the boolean map of voxels made CSF.

    Raises:
        ValueError: If ``voxel_mm`` is not positive or ``margin_mm`` is not an ordered pair >= 0.
    """
    if voxel_mm <= 0:
        raise ValueError(f"voxel_mm must be positive, got {voxel_mm!r}")
    if len(margin_mm) != 2 or not 0.0 <= margin_mm[0] <= margin_mm[1]:
        raise ValueError(f"margin_mm must be (low, high) with 0 <= low <= high, got {margin_mm!r}")
    tissue = np.asarray(tissue)
    brain = tissue > 0
    inside_mm = ndimage.distance_transform_edt(brain) * voxel_mm
    ventricles = (tissue == 1) & (inside_mm > depth_mm)
    margin = float(rng.uniform(*margin_mm))
    factor = 1.0 + 0.75 * np.clip(smooth_random_field(tissue.shape, rng, 4, 1.0), -1.0, 1.0)
    out = tissue.astype(np.uint8).copy()
    if not ventricles.any() or margin <= 0:
        return out, np.zeros(tissue.shape, dtype=bool)
    distance_mm = ndimage.distance_transform_edt(~ventricles) * voxel_mm
    added = brain & ~ventricles & (inside_mm > 4.0) & (distance_mm <= margin * factor) & (tissue != 1)
    out[added] = 1
    return out, added


def _layer_thickness(shape: tuple[int, ...], rng: np.random.Generator, voxel_mm: float, lo: float, hi: float) -> np.ndarray:
    """A smoothly varying thickness map (mm) with values in about ``[lo, hi]``."""
    mean = rng.uniform(lo, hi)
    field = smooth_random_field(shape, rng, 6, 1.0)
    field /= field.std() + 1e-6
    return np.clip(mean + 0.35 * (hi - lo) * field, 0.3 * lo, None).astype(np.float32)


def add_head(
    tissue: np.ndarray,
    rng: np.random.Generator,
    voxel_mm: float,
    affine: np.ndarray,
    *,
    lesion: np.ndarray | None = None,
    eye_centres_mm: tuple[tuple[float, float, float], ...] = ((-32.0, 52.0, -38.0), (32.0, 52.0, -38.0)),
) -> tuple[np.ndarray, dict[str, Any]]:
    """Surround a brain with scalp, skull, fat, extra-cerebral CSF, a skull base and eyes.

    Layers outward from the brain surface, each of a random thickness that varies smoothly over the
    head: extra-cerebral CSF/dura (1.5-4.5 mm), inner table (1-2.5 mm), diploe (0.5-4 mm), outer table
    (1-2.5 mm), muscle/galea (0.5-3 mm), subcutaneous fat (2-7 mm), skin (1-2.5 mm). Below the level
    of the frontal lobe's base, the head's cross-section at that level continues downwards as a block
    of mixed tissue (muscle, fat, bone, marrow, air cavities) around the lower brain: the skull base
    and face, narrowing into a neck below the brain where the grid reaches (see ``neck_mm`` of
    :func:`medmamba.data.synthetic.make_subject`). Two eyes (vitreous in orbital fat) sit in front of it, at MNI coordinates near
    ``eye_centres_mm`` (jittered).

    Args:
        tissue: Brain tissue labels (0 outside the brain, 1 CSF, 2 GM, 3 WM) in RAS voxel order.
        rng: Random generator.
        voxel_mm: Isotropic voxel size in mm.
        affine: Voxel-to-RAS affine of the grid (to place the eyes).
        lesion: Optional lesion mask; its voxels get :data:`LESION_LABEL`.
        eye_centres_mm: Nominal RAS positions of the eye centres.

    Returns:
        ``(generation, params)``: the uint8 generation label map and the random parameters drawn.

    Raises:
        ValueError: If the brain is empty or the shapes differ.
    """
    tissue = np.asarray(tissue)
    brain = tissue > 0
    if not brain.any():
        raise ValueError("tissue holds no brain voxel (all labels 0); add_head needs a brain to surround")
    if lesion is not None and np.asarray(lesion).shape != tissue.shape:
        raise ValueError(f"lesion must have the tissue map's shape {tissue.shape}, got {np.asarray(lesion).shape}")
    shape = tissue.shape
    gen = tissue.astype(np.uint8).copy()
    if lesion is not None:
        gen[np.asarray(lesion) > 0] = LESION_LABEL
    # distance from the brain's surface (half a voxel less than from the nearest brain voxel's centre)
    outside_mm = (ndimage.distance_transform_edt(~brain) - 0.5) * voxel_mm
    layers = [
        (5, 1.5, 4.5),  # extra-cerebral CSF / dura
        (6, 1.0, 2.5),  # inner table
        (7, 0.5, 4.0),  # diploe
        (6, 1.0, 2.5),  # outer table
        (8, 0.5, 3.0),  # muscle / galea
        (9, 2.0, 7.0),  # subcutaneous fat
        (8, 1.0, 2.5),  # skin
    ]
    params: dict[str, Any] = {"layers_mm": []}
    edge = np.zeros(shape, dtype=np.float32)
    rim_outer = None
    for value, lo, hi in layers:
        thick = _layer_thickness(shape, rng, voxel_mm, lo, hi)
        params["layers_mm"].append(round(float(thick.mean()), 2))
        inner = edge
        edge = edge + thick
        gen[(~brain) & (outside_mm > inner) & (outside_mm <= edge) & (gen == 0)] = value
        if rim_outer is None:
            rim_outer = edge.copy()
    head = gen > 0
    # skull base / face: the head's cross-section at the frontal base continues downwards
    zs = np.flatnonzero(brain.any(axis=(0, 1)))
    z_base = int(zs[0] + round(float(rng.uniform(0.22, 0.3)) * (zs[-1] - zs[0])))
    params["skull_base_slice"] = z_base
    if z_base > 0:
        section = ndimage.binary_fill_holes(head[..., z_base])
        block = np.repeat(section[..., None], z_base, axis=2)
        # below the brain (the neck, where the grid reaches that far) the section narrows
        taper = float(rng.uniform(0.25, 0.45))
        for z in range(min(int(zs[0]), z_base)):
            shrink = int(round(taper * (zs[0] - z)))
            if shrink > 0:
                block[..., z] = ndimage.binary_erosion(section, iterations=min(shrink, 12))
        block &= ~brain[..., :z_base] & (outside_mm[..., :z_base] > rim_outer[..., :z_base])
        # large, smooth compartments (muscle with fat planes, some bone and marrow, air cavities),
        # not small blobs that would look like lesions
        mix = filtered_noise_field((*shape[:2], z_base), rng, 7.0 / voxel_mm)
        kind = np.full(mix.shape, 8, dtype=np.uint8)  # muscle
        kind[mix > 0.8] = 9  # fat
        kind[mix < -1.2] = 6  # bone
        kind[(mix < -0.9) & (mix >= -1.2)] = 7  # marrow
        cavity = filtered_noise_field(mix.shape, rng, 7.0 / voxel_mm) > 1.7
        kind[cavity] = 0  # sinus / airway
        sub = gen[..., :z_base]
        sub[block] = kind[block]
        # fat and skin on the block's outer surface
        depth_in = ndimage.distance_transform_edt(block | brain[..., :z_base] | (sub > 0)) * voxel_mm
        sub[block & (depth_in <= float(rng.uniform(1.0, 2.5)))] = 8
        sub[block & (depth_in > 2.5) & (depth_in <= float(rng.uniform(4.0, 8.0)))] = 9
        gen[..., :z_base] = sub
    # eyes: vitreous in orbital fat, outside the brain and its CSF rim
    inv = np.linalg.inv(np.asarray(affine, dtype=float))
    idx = np.indices(shape, dtype=np.float32)
    params["eyes_mm"] = []
    for centre in eye_centres_mm:
        c_mm = np.asarray(centre) + rng.uniform(-4.0, 4.0, 3)
        c_vox = inv[:3, :3] @ c_mm + inv[:3, 3]
        radius = float(rng.uniform(10.5, 12.5))
        dist = np.sqrt(sum((idx[d] - c_vox[d]) ** 2 for d in range(3))) * voxel_mm
        free = (~brain) & (outside_mm > rim_outer)
        gen[(dist <= radius + float(rng.uniform(2.0, 5.0))) & free & (dist > radius)] = 9
        gen[(dist <= radius) & free] = 10
        params["eyes_mm"].append([round(float(v), 1) for v in c_mm])
    return gen, params


def render_t1(
    generation: np.ndarray,
    brain_t1: np.ndarray,
    rng: np.random.Generator,
    voxel_mm: float,
    *,
    texture: float = 0.06,
) -> np.ndarray:
    """A T1-weighted image of a generation label map, for the stored default data.

    Inside the brain the template's own intensities (``brain_t1``, white matter about 1) are kept,
    with sulcal clefts (generation CSF voxels that the template sees as tissue) pulled to the CSF
    level; every non-brain label gets its nominal intensity (:data:`T1_MEANS`) with a smooth
    multiplicative texture, and the whole image a light blur (partial volume).

    Args:
        generation: Generation label map.
        brain_t1: Template intensities on the same grid, white matter about 1.
        rng: Random generator.
        voxel_mm: Voxel size in mm.
        texture: Relative amplitude of the within-label texture.

    Returns:
        float32 image, white matter about 1.
    """
    gen = np.asarray(generation)
    lut = np.zeros(max(GENERATION_LABELS) + 1, dtype=np.float32)
    for k, v in T1_MEANS.items():
        lut[k] = v * float(rng.uniform(0.92, 1.08)) if k not in (0, 1, 2, 3) else v
    image = lut[gen.astype(np.intp)]
    inside = np.isin(gen, (1, 2, 3, LESION_LABEL))
    image[inside] = brain_t1[inside]
    csf = gen == 1
    image[csf] = np.minimum(brain_t1[csf], T1_MEANS[1] * (1.0 + 0.15 * rng.standard_normal(int(csf.sum())))).astype(np.float32)
    image *= 1.0 + texture * filtered_noise_field(gen.shape, rng, 1.2 / voxel_mm)
    image = ndimage.gaussian_filter(image, sigma=0.45 * 2.0 / voxel_mm)
    return np.clip(image, 0.0, None).astype(np.float32)
