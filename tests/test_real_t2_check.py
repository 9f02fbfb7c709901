"""The real T2-weighted check's pieces (benchmarks/real_t2_check.py): mosaic reading, the EPI brain
mask, the tissue agreement with an inverted-order intensity mixture."""

from __future__ import annotations

import sys
from pathlib import Path

import nibabel
import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from real_t2_check import epi_brain_mask, read_mosaic, tissue_agreement  # noqa: E402

NIBABEL_DICOM = Path(nibabel.__file__).parent / "nicom" / "tests" / "data"


def _t2_head(shape=(40, 40, 30)) -> tuple[np.ndarray, np.ndarray]:
    """A T2-like head: a faint scalp shell around a brain ball of white matter (dark), grey matter
    (brighter) and a CSF core (brightest); returns (volume, tissue labels)."""
    grid = np.stack(np.meshgrid(*[np.arange(n) - (n - 1) / 2 for n in shape], indexing="ij"))
    r = np.sqrt((grid ** 2).sum(0))
    labels = np.zeros(shape, dtype=np.uint8)
    labels[r < 12] = 2
    labels[r < 9] = 3
    labels[r < 3] = 1
    volume = np.choose(labels, [0.0, 3000.0, 1800.0, 1200.0]).astype(np.float32)
    volume[(r >= 13) & (r < 14)] = 150.0  # faint scalp, apart from the brain
    rng = np.random.default_rng(0)
    return volume + rng.normal(0, 20, shape).astype(np.float32) * (volume > 0), labels


def test_the_epi_mask_is_the_bright_brain_without_the_faint_scalp() -> None:
    volume, labels = _t2_head()
    mask = epi_brain_mask(volume)
    brain = labels > 0
    assert mask.dtype == bool and mask.shape == volume.shape
    assert (mask & brain).sum() / brain.sum() > 0.98  # the opening rounds off a few corner voxels of the ball
    assert (mask & ~brain).sum() == 0  # neither the scalp nor the gap
    with pytest.raises(ValueError, match=r"volume must be 3D, got shape \(4, 4\)"):
        epi_brain_mask(np.ones((4, 4)))
    with pytest.raises(ValueError, match="volume holds 8 non-zero voxels; expected at least 100"):
        epi_brain_mask(np.pad(np.ones((2, 2, 2)), 3))


def test_a_segmentation_in_t2_order_agrees_with_the_inverted_mixture() -> None:
    volume, labels = _t2_head()
    mask = labels > 0
    exact = tissue_agreement(labels, volume, mask)
    assert exact["mean_dice"] == pytest.approx(1.0) and exact["brain_dice"] == pytest.approx(1.0)
    assert exact["brain_ratio"] == pytest.approx(1.0)
    swapped = np.choose(labels, [0, 1, 3, 2]).astype(np.uint8)  # grey and white matter exchanged (T1 order read)
    wrong = tissue_agreement(swapped, volume, mask)
    assert wrong["dice_gm"] == pytest.approx(0.0) and wrong["dice_wm"] == pytest.approx(0.0) and wrong["dice_csf"] == pytest.approx(1.0)


@pytest.mark.skipif(not (NIBABEL_DICOM / "siemens_dwi_0.dcm.gz").is_file(), reason="nibabel's DICOM test data not installed")
def test_a_siemens_mosaic_reads_as_a_volume_with_a_ras_affine() -> None:
    import warnings

    from nibabel.nicom import dicomwrappers

    volume, affine = read_mosaic(NIBABEL_DICOM / "siemens_dwi_0.dcm.gz")
    assert volume.shape == (128, 128, 48) and volume.dtype == np.float32
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        lps = dicomwrappers.wrapper_from_file(str(NIBABEL_DICOM / "siemens_dwi_0.dcm.gz")).affine
    np.testing.assert_allclose(affine[:2], -lps[:2])  # x and y flipped from DICOM's LPS
    np.testing.assert_allclose(affine[2:], lps[2:])
    with pytest.raises(ValueError, match="expected a Siemens mosaic DICOM, got Wrapper"):
        read_mosaic(NIBABEL_DICOM / "decimal_rescale.dcm")
