"""NIfTI headers with a choice to make: all-zero sform, qform/sform disagreement, complex voxels."""

from __future__ import annotations

import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from medmamba.data import NiftiHeaderWarning, ScanLoadError, load_scan

AFFINE = np.array([[2.0, 0, 0, 10], [0, 2.0, 0, 20], [0, 0, 3.0, 30], [0, 0, 0, 1]])


def _volume() -> np.ndarray:
    return np.random.default_rng(0).random((8, 9, 10)).astype(np.float32) + 1.0


def test_all_zero_sform_uses_the_qform_with_a_warning(tmp_path: Path) -> None:
    hdr = nib.Nifti1Header()
    hdr.set_data_shape((8, 9, 10))
    hdr.set_data_dtype(np.float32)
    hdr.set_qform(AFFINE, code=1)
    hdr.set_zooms((2.0, 2.0, 3.0))
    for row in ("srow_x", "srow_y", "srow_z"):
        hdr[row] = 0.0
    hdr["sform_code"] = 2
    img = nib.Nifti1Image(_volume(), None, header=hdr)
    path = tmp_path / "zero_sform.nii"
    nib.save(img, path)
    with pytest.warns(NiftiHeaderWarning, match="all-zero sform; the qform"):
        out = load_scan(path)
    np.testing.assert_allclose(np.asarray(out.affine), AFFINE, atol=1e-5)
    assert tuple(out.shape) == (1, 8, 9, 10)


def test_qform_sform_disagreement_warns_and_keeps_the_sform(tmp_path: Path) -> None:
    shifted = AFFINE.copy()
    shifted[0, 3] += 5.0
    img = nib.Nifti1Image(_volume(), AFFINE)
    img.set_qform(shifted, code=1)
    img.set_sform(AFFINE, code=2)
    path = tmp_path / "disagree.nii.gz"
    nib.save(img, path)
    with pytest.warns(NiftiHeaderWarning, match=r"disagree \(largest difference 5\)"):
        out = load_scan(path)
    np.testing.assert_allclose(np.asarray(out.affine), AFFINE, atol=1e-5)


def test_agreeing_qform_and_sform_load_without_a_warning(tmp_path: Path) -> None:
    img = nib.Nifti1Image(_volume(), AFFINE)
    img.set_qform(AFFINE, code=1)
    img.set_sform(AFFINE, code=1)
    path = tmp_path / "agree.nii"
    nib.save(img, path)
    with warnings.catch_warnings():
        warnings.simplefilter("error", NiftiHeaderWarning)
        out = load_scan(path)
    np.testing.assert_allclose(np.asarray(out.affine), AFFINE, atol=1e-5)


def test_complex_voxels_are_refused(tmp_path: Path) -> None:
    vol = _volume()
    path = tmp_path / "complex.nii"
    nib.save(nib.Nifti1Image((vol + 1j * vol).astype(np.complex64), AFFINE), path)
    with pytest.raises(ScanLoadError, match=r"complex \(complex64\); expected real intensities"):
        load_scan(path)
