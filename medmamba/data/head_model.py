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
    "fold_cortex",
    "generation_to_tissue",
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

    Returns:
        ``(tissue, clefts)``: the new uint8 tissue labels and the boolean cleft mask.

    Raises:
        ValueError: If the maps' shapes differ or ``voxel_mm`` is not positive.
    """
    tissue = np.asarray(tissue)
    if voxel_mm <= 0:
        raise ValueError(f"voxel_mm must be positive, got {voxel_mm!r}")
    for name, arr in (("gm", gm), ("wm", wm)):
        if arr is not None and arr.shape != tissue.shape:
            raise ValueError(f"{name} must have the tissue map's shape {tissue.shape}, got {arr.shape}")
    brain = tissue > 0
    out = tissue.astype(np.uint8).copy()
    if gm is not None and wm is not None and boundary_jitter > 0:
        csf = np.clip(1.0 - gm - wm, 0.0, 1.0)
        jitter = [boundary_jitter * filtered_noise_field(tissue.shape, rng, 1.5 / voxel_mm) for _ in range(3)]
        probs = np.stack([csf + jitter[0], gm + jitter[1], wm + jitter[2]])
        relabel = np.argmax(probs, axis=0).astype(np.uint8) + 1
        # only at tissue boundaries (where two classes compete); clear interiors keep their label
        ambiguous = (np.sort(np.stack([csf, gm, wm]), axis=0)[-2] > 0.15) & brain
        out[ambiguous] = relabel[ambiguous]
    depth = float(rng.uniform(*depth_mm))
    inside_mm = ndimage.distance_transform_edt(brain) * voxel_mm
    scale = float(rng.uniform(2.0, 3.5)) / voxel_mm
    band = filtered_noise_field(tissue.shape, rng, scale * 0.5) - 0.8 * filtered_noise_field(tissue.shape, rng, scale)
    candidates = brain & (inside_mm <= depth) & (out != 3)
    if not candidates.any():
        return out, np.zeros(tissue.shape, dtype=bool)
    frac = float(rng.uniform(*cleft_fraction))
    threshold = float(np.quantile(np.abs(band[candidates]), frac))
    clefts = candidates & (np.abs(band) <= threshold)
    out[clefts] = 1
    return out, clefts


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
