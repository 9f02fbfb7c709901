"""The synthetic head and cortical folding around the MNI brain (medmamba.data.head_model)."""

from __future__ import annotations

import numpy as np
import pytest

from medmamba.data.head_model import (
    GENERATION_LABELS,
    LESION_LABEL,
    add_head,
    brighten_posterior_fossa,
    enlarge_ventricles,
    fold_cortex,
    generation_to_tissue,
    posterior_fossa_mask,
    render_t1,
)
from medmamba.data.synthetic import load_mni_template, make_subject, tissue_labels


@pytest.fixture(scope="module")
def template():
    return load_mni_template(2, downsample=2)  # 4 mm grid, 49 x 58 x 47: fast


def test_fold_cortex_adds_csf_only_near_the_surface_and_keeps_the_brain(template) -> None:
    tissue = tissue_labels(template.gm, template.wm, template.mask)
    folded, clefts = fold_cortex(tissue, np.random.default_rng(0), 4.0, depth_mm=(8.0, 8.0), gm=template.gm, wm=template.wm)
    assert folded.shape == tissue.shape and folded.dtype == np.uint8
    np.testing.assert_array_equal(folded > 0, tissue > 0)  # the brain outline is unchanged
    assert clefts.any() and np.all(folded[clefts] == 1)
    assert (folded == 1).sum() > (tissue == 1).sum()  # more CSF than the smooth average has
    from scipy import ndimage

    depth = ndimage.distance_transform_edt(tissue > 0) * 4.0
    assert depth[clefts].max() <= 8.0 + 1e-6


def test_fold_cortex_leaves_the_excluded_voxels_alone(template) -> None:
    tissue = tissue_labels(template.gm, template.wm, template.mask)
    fossa = posterior_fossa_mask(template.shape, template.affine)
    folded, clefts = fold_cortex(tissue, np.random.default_rng(0), 4.0, gm=template.gm, wm=template.wm, exclude=fossa)
    assert clefts.any() and not clefts[fossa].any()
    np.testing.assert_array_equal(folded[fossa], tissue[fossa])  # no clefts, no boundary jitter there
    assert (folded[~fossa] != tissue[~fossa]).any()
    with pytest.raises(ValueError, match=r"exclude must have the tissue map's shape \(49, 58, 47\), got \(2, 2, 2\)"):
        fold_cortex(tissue, np.random.default_rng(0), 4.0, exclude=np.zeros((2, 2, 2), bool))


def test_posterior_fossa_mask_is_cerebellum_and_brainstem_in_mni_space() -> None:
    affine = np.array([[2.0, 0, 0, -98], [0, 2.0, 0, -134], [0, 0, 2.0, -72], [0, 0, 0, 1]])  # the 2 mm template grid
    fossa = posterior_fossa_mask((99, 117, 95), affine)

    def at(x: float, y: float, z: float) -> bool:
        i, j, k = np.linalg.solve(affine, [x, y, z, 1.0])[:3].round().astype(int)
        return bool(fossa[i, j, k])

    # fourth ventricle, vermis, both cerebellar hemispheres, pons, medulla
    assert all(at(*p) for p in [(0, -46, -30), (0, -70, -20), (-40, -60, -30), (40, -60, -30), (0, -24, -30), (0, -40, -50)])
    # thalamus, midbrain, temporal lobes beside the pons, occipital lobe above the tentorium, frontal lobe
    assert not any(at(*p) for p in [(10, -18, 6), (0, -26, -12), (40, -20, -30), (-36, -30, -24), (20, -90, 0), (0, 40, -20)])
    brain = load_mni_template(2).mask > 0.5
    assert 0.08 < fossa[brain].mean() < 0.15  # the cerebellum and brainstem are about a ninth of the brain


def test_brighten_posterior_fossa_scales_its_tissue_not_its_csf() -> None:
    tissue = np.full((20, 20, 20), 3, dtype=np.uint8)
    tissue[:, :, :10] = 2
    tissue[8:12, 8:12, 4:6] = 1  # a fourth ventricle
    fossa = np.zeros(tissue.shape, bool)
    fossa[:, :, :10] = True
    t1 = np.where(tissue == 1, 0.3, np.where(tissue == 2, 0.8, 1.0)).astype(np.float32)
    out = brighten_posterior_fossa(t1, tissue, fossa, np.random.default_rng(0), 1.0, gain=(1.25, 1.25))
    assert out.dtype == np.float32
    np.testing.assert_allclose(out[tissue == 1], 0.3)  # CSF stays dark
    np.testing.assert_allclose(out[:, :, :5][tissue[:, :, :5] == 2], 0.8 * 1.25, rtol=1e-3)  # deep inside: the full gain
    np.testing.assert_allclose(out[:, :, 15:], 1.0, atol=1e-3)  # 2.5 blur widths outside: unchanged
    assert 1.0 < out[0, 0, 10] < 1.25  # blended across the boundary
    draws = {round(float(brighten_posterior_fossa(t1, tissue, fossa, np.random.default_rng(s), 1.0)[0, 0, 0] / 0.8), 4) for s in range(40)}
    assert min(draws) >= 0.85 and max(draws) <= 1.3 and len(draws) == 40  # the default gain range (0.85, 1.3)
    with pytest.raises(ValueError, match=r"must have one shape, got \(20, 20, 20\), \(20, 20, 20\) and \(2, 2, 2\)"):
        brighten_posterior_fossa(t1, tissue, np.zeros((2, 2, 2), bool), np.random.default_rng(0), 1.0)
    with pytest.raises(ValueError, match=r"gain must be \(low, high\) with 0 < low <= high, got \(0.0, 1.2\)"):
        brighten_posterior_fossa(t1, tissue, fossa, np.random.default_rng(0), 1.0, gain=(0.0, 1.2))


def test_enlarge_ventricles_widens_the_deep_csf_by_a_smooth_margin() -> None:
    grid = np.indices((64, 64, 64)).astype(float) - 31.5
    radius = np.sqrt((grid ** 2).sum(0))
    tissue = np.where(radius < 30, 3, 0).astype(np.uint8)  # a white-matter ball of 60 mm at 1 mm voxels
    tissue[radius < 6] = 1  # a ventricle, 24 mm below the surface
    tissue[(radius >= 27) & (radius < 30) & (grid[0] > 20)] = 1  # a sulcus: CSF too shallow to count
    out, added = enlarge_ventricles(tissue, np.random.default_rng(0), 1.0, margin_mm=(3.0, 3.0))
    assert out.dtype == np.uint8 and added.any()
    np.testing.assert_array_equal(out[added], 1)
    np.testing.assert_array_equal(out[~added], tissue[~added])  # nothing else changes
    assert radius[added].min() >= 6 and radius[added].max() <= 6 + 3.0 * 1.75 + 1  # margin x a factor in [0.25, 1.75]
    widened = radius[added].max() - 6 - (radius[added & (grid[0] < 0)].min() - 6)
    assert widened > 0.5  # the margin varies around the ventricle
    out2, added2 = enlarge_ventricles(tissue, np.random.default_rng(0), 1.0, margin_mm=(3.0, 3.0))
    np.testing.assert_array_equal(out2, out)  # deterministic for a seed
    unchanged, none = enlarge_ventricles(tissue, np.random.default_rng(0), 1.0, margin_mm=(0.0, 0.0))
    np.testing.assert_array_equal(unchanged, tissue)
    assert not none.any()
    with pytest.raises(ValueError, match="voxel_mm must be positive, got 0.0"):
        enlarge_ventricles(tissue, np.random.default_rng(0), 0.0)
    with pytest.raises(ValueError, match=r"margin_mm must be \(low, high\) with 0 <= low <= high, got \(3.0, 1.0\)"):
        enlarge_ventricles(tissue, np.random.default_rng(0), 1.0, margin_mm=(3.0, 1.0))


def test_add_head_surrounds_the_brain_with_non_brain_labels_in_order(template) -> None:
    tissue = tissue_labels(template.gm, template.wm, template.mask)
    lesion = np.zeros_like(tissue)
    lesion[tuple(np.argwhere(tissue == 3)[0])] = 1
    gen, params = add_head(tissue, np.random.default_rng(1), 4.0, template.affine, lesion=lesion)
    brain = tissue > 0
    np.testing.assert_array_equal(generation_to_tissue(gen), tissue)  # the brain's labels are untouched
    assert gen[lesion > 0].tolist() == [LESION_LABEL]
    assert set(np.unique(gen[~brain])) <= set(GENERATION_LABELS) - {1, 2, 3, LESION_LABEL}
    # every kind of head tissue is there: rim CSF, bone, marrow, muscle/skin, fat, eyes
    assert {5, 6, 7, 8, 9, 10} <= set(np.unique(gen).tolist())
    # the head is larger than the brain and contains it: no air right next to the brain
    from scipy import ndimage

    shell = ndimage.binary_dilation(brain) & ~brain
    assert np.mean(gen[shell] == 0) < 0.05
    assert (gen > 0).sum() > 1.5 * brain.sum()
    assert len(params["layers_mm"]) == 7 and len(params["eyes_mm"]) == 2


def test_add_head_rejects_an_empty_brain() -> None:
    with pytest.raises(ValueError, match="no brain voxel"):
        add_head(np.zeros((8, 8, 8), np.uint8), np.random.default_rng(0), 2.0, np.eye(4))


def test_render_t1_has_t1_contrast(template) -> None:
    tissue = tissue_labels(template.gm, template.wm, template.mask)
    gen, _ = add_head(tissue, np.random.default_rng(2), 4.0, template.affine)
    t1 = template.t1 / np.median(template.t1[tissue == 3])
    img = render_t1(gen, t1, np.random.default_rng(3), 4.0)
    med = {k: float(np.median(img[gen == k])) for k in (0, 1, 3, 6, 9)}
    assert med[9] > med[3] > med[1] > med[6]  # fat > WM > CSF > bone on T1
    assert med[0] < 0.05


def test_make_subject_with_head_is_deterministic_and_consistent(template) -> None:
    a = make_subject(template, np.random.default_rng(5), n_lesions=1)
    b = make_subject(template, np.random.default_rng(5), n_lesions=1)
    np.testing.assert_array_equal(a.image, b.image)
    np.testing.assert_array_equal(a.generation, b.generation)
    assert a.generation is not None and a.generation.shape == a.tissue.shape
    np.testing.assert_array_equal(generation_to_tissue(a.generation) > 0, a.tissue > 0)
    np.testing.assert_array_equal(a.generation == LESION_LABEL, a.lesion > 0)
    stripped = make_subject(template, np.random.default_rng(5), head=False)
    assert stripped.generation is None
    # a stripped subject has (almost) nothing outside the brain; a head has tissue there
    outside = a.tissue == 0
    assert np.mean(a.image[outside] > 200) > 0.2 and np.mean(stripped.image[stripped.tissue == 0] > 200) < 0.02


def test_make_subject_single_subject_options_keep_the_fossa_unfolded_and_widen_the_ventricles() -> None:
    template = load_mni_template(2)  # the 2 mm grid: the ventricles are deeper than the 14 mm rule
    plain = make_subject(template, np.random.default_rng(5), head=False)
    other = make_subject(template, np.random.default_rng(5), head=False, posterior_fossa=True, ventricles=True)
    assert other.image.shape == plain.image.shape
    np.testing.assert_array_equal(other.tissue > 0, plain.tissue > 0)  # the same deformation: the same brain
    from scipy import ndimage

    from medmamba.data.synthetic import random_deformation, warp

    coords, _ = random_deformation(template.shape, np.random.default_rng(5), 2.0)  # make_subject's first draws
    fossa = warp(posterior_fossa_mask(template.shape, template.affine).astype(np.float32), coords) >= 0.5
    unfolded = tissue_labels(warp(template.gm, coords), warp(template.wm, coords), warp(template.mask, coords))
    inside = fossa & (unfolded > 0)
    assert (plain.tissue[inside] != unfolded[inside]).sum() > 1000  # the default folds cerebellum and brainstem too
    kept = (other.tissue[inside] == unfolded[inside]) | (other.tissue[inside] == 1)  # only a widened ventricle differs
    assert kept.all()
    deep = ndimage.distance_transform_edt(other.tissue > 0) * 2.0 > 14.0
    assert (other.tissue[deep & ~fossa] == 1).sum() > (plain.tissue[deep & ~fossa] == 1).sum()  # wider ventricles


def test_extend_inferior_adds_empty_slices_below_and_keeps_world_positions(template) -> None:
    from medmamba.data.synthetic import extend_inferior, subject_affine

    ext = extend_inferior(template, 40.0)
    assert ext.shape == (*template.shape[:2], template.shape[2] + 10)  # 40 mm of 4 mm slices
    assert not ext.mask[..., :10].any()
    np.testing.assert_array_equal(ext.t1[..., 10:], template.t1)
    # voxel k of the old grid and voxel k + 10 of the new one are the same point in space
    np.testing.assert_allclose(ext.affine @ [0, 0, 10, 1], template.affine @ [0, 0, 0, 1])
    np.testing.assert_allclose(subject_affine(template, head=False), template.affine)
    with pytest.raises(ValueError, match="mm must be >= 0"):
        extend_inferior(template, -1.0)


def test_subject_with_head_has_neck_slices_without_brain(template) -> None:
    s = make_subject(template, np.random.default_rng(9), neck_mm=40.0)
    assert s.image.shape[2] == template.shape[2] + 10
    lowest = s.tissue[..., :5]
    assert not lowest.any()  # no brain in the neck slices ...
    assert (s.generation[..., :5] > 0).mean() > 0.1  # ... but tissue of the head


def test_generated_lesions_stay_in_white_matter_and_its_rim() -> None:
    """Lesions where they are visible: white matter plus a one-voxel rim (format 5), not deep grey matter or CSF."""
    from medmamba.data.synthetic import insert_lesions, white_matter_rim

    labels = np.zeros((40, 40, 40), np.uint8)
    labels[4:36, 4:36, 4:36] = 1
    labels[8:32, 8:32, 8:32] = 2
    labels[14:26, 14:26, 14:26] = 3
    image = np.choose(labels, [0.0, 0.3, 0.65, 1.0]).astype(np.float32)
    rim = white_matter_rim(labels)
    assert rim.sum() == 12**3 + 6 * 12 * 12  # the cube and one face-connected layer around it
    assert not rim[labels == 1].any() and not rim[labels == 0].any()
    _, mask, info = insert_lesions(image, labels, np.random.default_rng(0), 2.0, n_lesions=3, radius_mm=(8.0, 9.0))
    assert len(info) == 3 and mask.sum() > 0
    assert np.all(rim[mask > 0])
    assert mask[labels == 1].sum() == 0
