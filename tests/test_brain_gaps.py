"""CloseBrainGaps: the network's brain decision closed before the tissue refinement (segmentation 0.6.13)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from monai.data import MetaTensor

from medmamba.transforms import CloseBrainGaps, CloseBrainGapsd
from medmamba.transforms.label_map import channel_argmax

CONFIGS = Path(__file__).resolve().parents[1] / "bundles" / "mobilemamba_segmentation" / "configs"


def _ellipsoid(shape=(36, 40, 44), scale=0.4) -> np.ndarray:
    idx = np.indices(shape, dtype=np.float32)
    c = (np.asarray(shape, np.float32) - 1) / 2
    return np.sqrt(sum(((idx[d] - c[d]) / (scale * shape[d])) ** 2 for d in range(3))) < 1.0


def _probabilities(called: np.ndarray) -> torch.Tensor:
    """Background where not ``called``; grey matter on the rim, white matter in the core (0.9 each)."""
    from scipy import ndimage

    prob = np.full((4, *called.shape), 0.1 / 3, np.float32)
    core = ndimage.binary_erosion(called, iterations=3)
    prob[0][~called] = 0.9
    prob[3][core] = 0.9
    prob[2][called & ~core] = 0.9
    return torch.from_numpy(prob)


def _meta(prob: torch.Tensor, spacing=(2.0, 2.0, 2.0), **meta) -> MetaTensor:
    return MetaTensor(prob, affine=torch.diag(torch.tensor([*spacing, 1.0])), meta=meta)


def test_a_dropped_band_of_slices_is_given_back_to_the_tissues() -> None:
    brain = _ellipsoid()
    band = np.zeros_like(brain)
    band[:26, :, 20:22] = True  # two axial slices, most of their brain called background (4 mm at 2 mm)
    prob = _meta(_probabilities(brain & ~band))
    out = CloseBrainGaps(closing_mm=6.0, opening_mm=4.0)(prob, None)
    labels = channel_argmax(out)[0].numpy()
    dropped = brain & band
    from scipy import ndimage

    deep = ndimage.binary_erosion(brain, iterations=1)  # the outline's own voxels are at the closing's discretisation edge
    assert (labels[dropped & deep] > 0).all()  # every dropped voxel inside the outline is tissue again
    assert (labels[dropped] > 0).mean() > 0.9
    assert not (labels[~brain] > 0).any()  # nothing outside the brain's outline (convex)
    kept = ~dropped
    np.testing.assert_array_equal(labels[kept], channel_argmax(prob)[0].numpy()[kept])
    torch.testing.assert_close(out.as_tensor().sum(0), torch.ones(brain.shape))
    filled = torch.from_numpy(dropped & (labels > 0))
    assert (out.as_tensor()[0][filled] == 0).all()  # background probability zero where given back
    assert torch.equal(out.affine, prob.affine)


def test_a_band_wider_than_the_ball_stays_open_and_a_convex_brain_is_returned_as_it_is() -> None:
    brain = _ellipsoid()
    band = np.zeros_like(brain)
    band[:26, :, 18:26] = True  # 16 mm: wider than twice a 6 mm ball
    prob = _meta(_probabilities(brain & ~band))
    labels = channel_argmax(CloseBrainGaps(closing_mm=6.0, opening_mm=0.0)(prob, None))[0].numpy()
    assert (labels[brain & band] == 0).sum() > 0.5 * (brain & band).sum()
    whole = _meta(_probabilities(brain))
    assert CloseBrainGaps(closing_mm=6.0)(whole, None) is whole


def test_only_the_detached_brain_is_closed_not_the_gap_to_an_island() -> None:
    shape = (36, 40, 56)
    brain = _ellipsoid(shape, scale=0.3)
    island = np.zeros(shape, bool)
    island[16:20, 18:22, 48:52] = True  # tissue in the neck, 4 voxels (8 mm) beyond the brain
    prob = _meta(_probabilities(brain | island))
    labels = channel_argmax(CloseBrainGaps(closing_mm=8.0, opening_mm=4.0)(prob, None))[0].numpy()
    gap = np.zeros(shape, bool)
    gap[16:20, 18:22, :48] = True
    gap &= ~brain
    assert gap.any() and not (labels[gap] > 0).any()


def test_a_skull_stripped_inputs_brain_is_left_alone() -> None:
    brain = _ellipsoid()
    band = np.zeros_like(brain)
    band[:26, :, 20:22] = True
    prob = _meta(_probabilities(brain & ~band), brain_source="skull-stripped input")
    assert CloseBrainGaps()(prob, None) is prob


def test_the_dictionary_version_closes_the_probabilities_under_its_keys() -> None:
    brain = _ellipsoid()
    band = np.zeros_like(brain)
    band[:26, :, 20:22] = True
    prob = _meta(_probabilities(brain & ~band))
    out = CloseBrainGapsd(keys="pred", image_key="source_image", closing_mm=6.0, opening_mm=4.0)({"pred": prob, "source_image": None})
    assert (channel_argmax(out["pred"])[0].numpy()[brain & band] > 0).mean() > 0.9


def test_invalid_arguments_are_refused_with_their_names() -> None:
    with pytest.raises(ValueError, match="closing_mm must be > 0"):
        CloseBrainGaps(closing_mm=0)
    with pytest.raises(ValueError, match="opening_mm must be >= 0"):
        CloseBrainGaps(opening_mm=-1)
    with pytest.raises(ValueError, match="tissue_channels must be distinct"):
        CloseBrainGaps(tissue_channels=(1, 1))
    with pytest.raises(TypeError, match="img must be a MetaTensor with its affine"):
        CloseBrainGaps()(torch.rand(4, 5, 5, 5), None)
    with pytest.raises(ValueError, match="must be some, not all, of the 3 channels"):
        CloseBrainGaps()(_meta(torch.rand(3, 5, 5, 5)), None)


def test_the_bundle_closes_the_brain_in_inference_and_evaluation_before_the_refinement() -> None:
    from monai.bundle import ConfigParser

    run = json.loads((CONFIGS / "inference.json").read_text())["run"][0]
    assert "refiner=[@input_brain, @brain_gaps, @tissue_refiner]" in run
    for config in ("inference.json", "evaluate.json"):
        parser = ConfigParser()
        parser.read_config(str(CONFIGS / config))
        assert parser.get("brain_gap_closing_mm") == 8.0
        if config == "inference.json":
            closer = parser.get_parsed_content("brain_gaps")
            assert isinstance(closer, CloseBrainGaps) and (closer.closing_mm, closer.opening_mm) == (8.0, 8.0)
        else:
            post = parser.get_parsed_content("postprocessing").transforms
            names = [type(t).__name__ for t in post]
            assert names.index("StrippedInputBraind") < names.index("CloseBrainGapsd") < names.index("TissueIntensityRefined")
            (closer,) = [t for t in post if isinstance(t, CloseBrainGapsd)]
            assert (closer.transform.closing_mm, closer.transform.opening_mm) == (8.0, 8.0)
        parser["close_brain_gaps"] = False  # off: the 0.6.12 pipeline
        if config == "inference.json":
            assert parser.get_parsed_content("brain_gaps") is None
        else:
            assert "CloseBrainGapsd" not in [type(t).__name__ for t in parser.get_parsed_content("postprocessing").transforms]
