"""Detaching face and neck tissue joined to the brain through thin bridges (segmentation 0.6.9).

On real whole-head scans the network labels parts of the face, tongue and neck as tissue, joined to
the brain through the brainstem, and the largest connected component kept them.
:func:`medmamba.transforms.detach_brain` and the ``opening_mm`` argument of the brain-mask
transforms cut such parts off; these tests build a ball ("brain") with a thin rod to a block ("neck").
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from monai.data import MetaTensor

from medmamba.inferers import BrainNormalizingInferer
from medmamba.transforms import BrainMask, KeepBrainComponent, KeepBrainComponentd, close_brain, detach_brain

CONFIGS = Path(__file__).resolve().parents[1] / "bundles" / "mobilemamba_segmentation" / "configs"


def _head(spacing: tuple[float, float, float], rod_mm: float = 4.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A ball of radius 30 mm, a rod ``rod_mm`` thick from it to a 24 mm block: (labels, ball, block)."""
    shape = tuple(int(round(120 / s)) for s in spacing)
    grid = np.meshgrid(*[(np.arange(n) + 0.5) * s for n, s in zip(shape, spacing)], indexing="ij")
    x, y, z = grid
    ball = (x - 60) ** 2 + (y - 60) ** 2 + (z - 75) ** 2 <= 30 ** 2
    rod = (np.abs(x - 60) <= rod_mm / 2) & (np.abs(y - 60) <= rod_mm / 2) & (z > 20) & (z < 50)
    block = (np.abs(x - 60) <= 12) & (np.abs(y - 60) <= 12) & (z > 2) & (z < 26)
    labels = np.zeros(shape, np.uint8)
    labels[ball | rod | block] = 2
    labels[ball & ((x - 60) ** 2 + (y - 60) ** 2 + (z - 75) ** 2 <= 15 ** 2)] = 3
    return labels, ball, block


@pytest.mark.parametrize("spacing", [(2.0, 2.0, 2.0), (1.5, 1.5, 3.0)])
def test_a_block_behind_a_thin_rod_is_cut_off_and_the_ball_kept(spacing) -> None:
    labels, ball, block = _head(spacing)
    kept = detach_brain(labels > 0, spacing, 4.0)
    assert not (kept & block).any()
    assert (kept & ball).sum() == ball.sum()  # the ball's outline comes back whole
    # the rod survives only near the ball (within the radius plus a voxel)
    assert (kept & ~ball).sum() < (labels > 0).sum() * 0.01
    # without the opening the largest component holds all three
    plain = BrainMask(fill_holes=False).mask(labels)
    assert plain[block].all()


def test_a_bridge_thicker_than_twice_the_radius_is_kept() -> None:
    labels, _, block = _head((2.0, 2.0, 2.0), rod_mm=14.0)
    kept = detach_brain(labels > 0, (2.0, 2.0, 2.0), 4.0)[block]
    assert kept.mean() > 0.95  # an opening rounds the block's corners, nothing more
    assert not kept.all()


def test_brain_mask_reads_the_voxel_size_from_the_affine() -> None:
    spacing = (2.0, 2.0, 2.0)
    labels, ball, block = _head(spacing)
    meta = MetaTensor(torch.as_tensor(labels[None], dtype=torch.float32), affine=torch.diag(torch.tensor([*spacing, 1.0])))
    from_affine = BrainMask(opening_mm=4.0)(meta)
    explicit = BrainMask(opening_mm=4.0, spacing=spacing)(labels[None])
    assert isinstance(from_affine, MetaTensor)
    np.testing.assert_array_equal(from_affine.numpy(), explicit)
    assert from_affine[0].numpy()[block].sum() == 0 and from_affine[0].numpy()[ball].all()
    # the same voxels read as 1 mm voxels: the rod is 2 voxels = 2 mm thick, the block 12 mm wide
    one_mm = MetaTensor(torch.as_tensor(labels[None], dtype=torch.float32), affine=torch.eye(4))
    assert BrainMask(opening_mm=4.0)(one_mm)[0].numpy()[block].sum() == 0


def test_keep_brain_component_clears_the_detached_labels_only() -> None:
    spacing = (2.0, 2.0, 2.0)
    labels, ball, block = _head(spacing)
    meta = MetaTensor(torch.as_tensor(labels[None], dtype=torch.float32), affine=torch.diag(torch.tensor([*spacing, 1.0])))
    out = KeepBrainComponent(opening_mm=4.0)(meta)[0].numpy()
    assert (out[block] == 0).all()
    np.testing.assert_array_equal(out[ball], labels[ball])  # grey and white matter labels unchanged
    d = KeepBrainComponentd(keys="pred", opening_mm=4.0)({"pred": meta})
    np.testing.assert_array_equal(d["pred"][0].numpy(), out)
    assert KeepBrainComponent()(meta)[0].numpy()[block].all()  # opening 0: as before


def test_invalid_opening_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="opening_mm must be a radius in mm >= 0"):
        BrainMask(opening_mm=-1.0)
    with pytest.raises(ValueError, match="spacing must be positive"):
        BrainMask(opening_mm=4.0, spacing=(2.0, 0.0, 2.0))
    with pytest.raises(ValueError, match="opening_mm=4.0 needs the voxel size"):
        BrainMask(opening_mm=4.0).mask(np.ones((8, 8, 8)))
    with pytest.raises(ValueError, match="spacing must hold 3 positive voxel sizes"):
        detach_brain(np.ones((8, 8, 8), bool), (1.0, 1.0), 4.0)
    with pytest.raises(ValueError, match="radius_mm must be > 0"):
        detach_brain(np.ones((8, 8, 8), bool), (1.0, 1.0, 1.0), 0.0)
    with pytest.raises(ValueError, match="needs spacing"):
        BrainNormalizingInferer(lambda x, n: x, opening_mm=4.0)
    # nothing survives the erosion: the mask as given
    small = np.zeros((8, 8, 8), bool)
    small[3:5, 3:5, 3:5] = True
    np.testing.assert_array_equal(detach_brain(small, (1.0, 1.0, 1.0), 4.0), small)


def test_closing_fills_a_notch_in_the_outline_and_nothing_far_from_it() -> None:
    """A cube with a 2-voxel-wide notch cut in from one face (a bright lesion the network called
    non-brain): a 6 mm closing at 2 mm voxels fills the notch, adds nothing beyond the cube's own
    corners' rounding, and an already convex cube comes back unchanged."""
    cube = np.zeros((24, 24, 24), bool)
    cube[4:20, 4:20, 4:20] = True
    notched = cube.copy()
    notched[4:9, 11:13, 8:16] = False  # 5 deep, 2 wide, 8 long, open to the face x = 4
    closed = close_brain(notched, (2.0, 2.0, 2.0), 6.0)
    assert closed[notched].all()  # contains the mask
    assert closed[5:9, 11:13, 8:16].all()  # the notch filled below its mouth (the face layer: the ball's rim)
    assert not closed[~cube].any()  # nothing outside the cube
    np.testing.assert_array_equal(close_brain(cube, (2.0, 2.0, 2.0), 6.0), cube)
    # a notch wider than the ball stays open at its mouth: 16 voxels wide = 32 mm against 12 mm
    wide = cube.copy()
    wide[4:9, 4:20, 8:16] = False
    assert not close_brain(wide, (2.0, 2.0, 2.0), 6.0)[4, 12, 12]
    # through the transform, with the voxel size given; closing after the hole filling
    labels = notched.astype(np.int64)
    masked = BrainMask(closing_mm=6.0, spacing=(2.0, 2.0, 2.0))(labels[None])[0]
    np.testing.assert_array_equal(np.asarray(masked) > 0, closed)
    np.testing.assert_array_equal(np.asarray(BrainMask()(labels[None])[0]) > 0, notched)


def test_invalid_closing_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="closing_mm must be a radius in mm >= 0"):
        BrainMask(closing_mm=-2.0)
    with pytest.raises(ValueError, match="closing_mm=6.0 needs the voxel size"):
        BrainMask(closing_mm=6.0).mask(np.ones((8, 8, 8)))
    with pytest.raises(ValueError, match="radius_mm must be > 0"):
        close_brain(np.ones((8, 8, 8), bool), (1.0, 1.0, 1.0), 0.0)
    with pytest.raises(ValueError, match="spacing must hold 3 positive voxel sizes"):
        close_brain(np.ones((8, 8, 8), bool), (1.0, 1.0), 4.0)
    empty = np.zeros((8, 8, 8), bool)
    assert not close_brain(empty, (1.0, 1.0, 1.0), 4.0).any()


def test_the_bundle_detaches_in_inference_evaluation_and_the_tissue_pass() -> None:
    """``brain_opening_mm`` (8 mm since 0.6.15, 6 mm before) reaches the tissue pass's brain (on the 2 mm network grid), the
    written segmentation and brain mask, and the evaluation's clean-up."""
    from monai.bundle import ConfigParser

    for config in ("inference.json", "evaluate.json"):
        parser = ConfigParser()
        parser.read_config(str(CONFIGS / config))
        assert parser.get("brain_opening_mm") == 8.0
        inferer = parser.get_parsed_content("brain_normalizing_inferer")
        assert inferer.masker.opening_mm == 8.0 and inferer.masker.spacing == (2.0, 2.0, 2.0)
        parser["brain_opening_mm"] = 0.0
        assert parser.get_parsed_content("brain_normalizing_inferer").masker.opening_mm == 0.0
    parser = ConfigParser()
    parser.read_config(str(CONFIGS / "evaluate.json"))
    cleaner = parser.get_parsed_content("postprocessing").transforms[-1]
    assert isinstance(cleaner, KeepBrainComponentd) and cleaner.cleaner.masker.opening_mm == 8.0
    run = json.loads((CONFIGS / "inference.json").read_text())["run"][0]
    assert "brain_opening_mm=@brain_opening_mm" in run


def test_the_bundle_refines_tissue_on_the_input_grid_except_thick_slices() -> None:
    """0.6.9: inference and evaluation refine the tissue probabilities by the scan's intensities
    (TissueIntensityRefine) unless a voxel is thicker than 3 mm; 0.6.11: with the same settings;
    0.6.12: tissue means weighted by the posterior to the 4th power."""
    import torch
    from monai.bundle import ConfigParser

    from medmamba.transforms import TissueIntensityRefine, TissueIntensityRefined

    parser = ConfigParser()
    parser.read_config(str(CONFIGS / "inference.json"))
    refiner = parser.get_parsed_content("tissue_refiner")
    assert isinstance(refiner, TissueIntensityRefine) and refiner.max_voxel_mm == 3.0
    parser = ConfigParser()
    parser.read_config(str(CONFIGS / "evaluate.json"))
    post = parser.get_parsed_content("postprocessing").transforms
    refined = [t for t in post if isinstance(t, TissueIntensityRefined)]
    assert len(refined) == 1 and refined[0].image_key == "source_image" and refined[0].refiner.max_voxel_mm == 3.0
    # 0.6.11: four EM iterations, the network's brain/background decision kept; evaluation as inference
    settings = ("prior_weight", "bias_fwhm_mm", "iterations", "brain_threshold", "keep_brain_decision", "max_voxel_mm",
                "mean_weight_power")
    assert [getattr(refiner, k) for k in settings] == [1.0, 40.0, 4, 0.5, True, 3.0, 4.0]
    assert [getattr(refined[0].refiner, k) for k in settings] == [getattr(refiner, k) for k in settings]
    names = [type(t).__name__ for t in post]
    assert names.index("Invertd") < names.index("StrippedInputBraind") < names.index("TissueIntensityRefined") < names.index("LabelMapd")
    # 0.6.12: a skull-stripped input keeps its own brain, in inference (before the refinement) and evaluation alike
    (stripped,) = [t for t in post if type(t).__name__ == "StrippedInputBraind"]
    assert stripped.image_key == "source_image" and stripped.transform.max_support_ratio == 1.3
    parser = ConfigParser()
    parser.read_config(str(CONFIGS / "inference.json"))
    assert "refiner=[@input_brain, @brain_gaps, @tissue_refiner]" in parser["run"][0]  # 0.6.13: gaps closed first
    assert parser.get_parsed_content("input_brain").max_support_ratio == 1.3
    copy = [t for t in parser.get_parsed_content("preprocessing").transforms if type(t).__name__ == "CopyItemsd"]
    assert len(copy) == 1
    # thick slices: the probabilities come back unchanged
    prob = torch.softmax(torch.randn(4, 6, 6, 6), 0)
    image = torch.rand(1, 6, 6, 6)
    thick = MetaTensor(prob, affine=torch.diag(torch.tensor([2.0, 2.0, 5.0, 1.0])))
    assert torch.equal(TissueIntensityRefine(max_voxel_mm=3.0)(thick, image).as_tensor(), prob)
    fine = MetaTensor(prob, affine=torch.diag(torch.tensor([2.0, 2.0, 2.0, 1.0])))
    assert not torch.equal(TissueIntensityRefine(max_voxel_mm=3.0, brain_threshold=0.1)(fine, image).as_tensor(), prob)
    with pytest.raises(ValueError, match="max_voxel_mm must be a voxel size in mm > 0"):
        TissueIntensityRefine(max_voxel_mm=0)


def test_switches_typed_on_the_command_line_are_read_as_booleans() -> None:
    """``--refine_tissue false`` arrives as the string "false" (fire); it must switch the refinement off."""
    from monai.bundle import ConfigParser

    from medmamba.bundle import flag

    assert [flag(v) for v in (True, False, 1, 0, "true", "False", " no ", "ON", "0")] == [
        True, False, True, False, True, False, False, True, False]
    with pytest.raises(ValueError, match="refine_tissue must be true or false, got 'maybe'"):
        flag("maybe", "refine_tissue")
    with pytest.raises(ValueError, match="must be true or false, got 2"):
        flag(2)
    for value, on in (("false", False), ("true", True), (False, False)):
        parser = ConfigParser()
        parser.read_config(str(CONFIGS / "evaluate.json"))
        parser["refine_tissue"] = value
        names = [type(t).__name__ for t in parser.get_parsed_content("postprocessing").transforms]
        assert ("TissueIntensityRefined" in names) is on
        parser = ConfigParser()
        parser.read_config(str(CONFIGS / "inference.json"))
        parser["refine_tissue"] = value
        assert (parser.get_parsed_content("tissue_refiner") is not None) is on


def test_inference_detaches_once_and_its_brain_mask_is_the_written_segmentations_brain(tmp_path: Path) -> None:
    """``segment_scans`` with the clean-up and the brain mask of the same labels (the bundle's default)
    runs the opening once per case (6.7 s on a 1 mm head before 0.6.10); the mask is the cleaned
    segmentation's brain, holes filled."""
    import nibabel as nib
    from scipy import ndimage

    from medmamba.apps.pipeline import brain_transforms, segment_scans
    from medmamba.io import write_nifti
    from medmamba.transforms import scan_preprocessing

    spacing = (2.0, 2.0, 2.0)
    labels, ball, block = _head(spacing)
    noise = np.random.default_rng(0).normal(0.0, 5.0, labels.shape)
    scan = np.where(labels > 0, 100.0 + 20.0 * labels + noise, 0.0).astype(np.float32)
    write_nifti(tmp_path / "head.nii.gz", scan, np.diag([*spacing, 1.0]))
    cleaner, masker = brain_transforms([1, 2, 3], [3, 2, 1], 4.0)
    assert cleaner.masker.opening_mm == 4.0 and masker.opening_mm == 0.0  # the opening runs once
    assert brain_transforms([2, 3], [1, 2, 3], 4.0)[1].opening_mm == 4.0  # another brain: its own opening
    assert brain_transforms([1, 2, 3], None, 4.0)[1].opening_mm == 4.0 and brain_transforms(None, None)[1] is None

    def predictor(x: torch.Tensor) -> torch.Tensor:  # "tissue" (label 2) above the background (its lowest value)
        tissue = (x > x.min() + 0.1).float()
        return torch.cat([1 - tissue, 0 * tissue, tissue, 0 * tissue], dim=1) * 5.0

    pre = scan_preprocessing(modality="MR", k=16, expected_modalities=("MR",))
    report = segment_scans([tmp_path / "head.nii.gz"], predictor, tmp_path / "out", pre, {1: "csf", 2: "gm", 3: "wm"},
                           brain_labels=[1, 2, 3], keep_components=[3, 2, 1], brain_opening_mm=4.0)
    assert report.n_ok == 1
    (case,) = [p for p in (tmp_path / "out").iterdir() if p.is_dir()]
    seg = np.asarray(nib.load(case / f"{case.name}_seg.nii.gz").dataobj)
    brain = np.asarray(nib.load(case / f"{case.name}_brain_mask.nii.gz").dataobj) > 0
    np.testing.assert_array_equal(brain, ndimage.binary_fill_holes(seg > 0))
    assert not brain[block].any() and brain[ball].mean() > 0.99


@pytest.mark.parametrize("at_border", [False, True])
def test_detaching_on_the_bounding_box_equals_the_whole_grid(at_border: bool) -> None:
    """``detach_brain`` works on the mask's bounding box grown by one voxel; the result is the whole
    grid's, voxel for voxel, with anisotropic voxels too, and when the mask touches the array's
    border (``at_border``: the grid cut through the ball's top; the box then ends at the array's
    edge, where the whole grid's distance transform sees no background beyond it either)."""
    for spacing in [(2.0, 2.0, 2.0), (1.5, 1.5, 3.0)]:
        labels, _, block = _head(spacing, rod_mm=4.0)
        brain = np.pad(labels > 0, [(5, 7), (3, 0), (9, 2)])
        if at_border:
            highest = int(np.flatnonzero(brain.any(axis=(0, 1)))[-1])
            brain = brain[:, :, :highest - 3]
            assert brain[:, :, -1].any()
        full = detach_brain(brain, spacing, 6.0, crop=False)
        cropped = detach_brain(brain, spacing, 6.0)
        assert 0 < full.sum() < brain.sum()  # the block was detached
        np.testing.assert_array_equal(cropped, full)
