"""Stand-ins for the tests of the classification bundle's decision with lesion rules: tiny scans whose values
say what a stand-in network and stand-in rules score (tests/test_bright_outlier.py, tests/test_dark_asymmetry.py),
a predictor chain whose last call kept given records (the rules' and the aligned read-out's tests), and a turned
head with mirror-symmetric structures (tests/test_symmetry.py, tests/test_mirror_contrast.py)."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import torch

from medmamba.inferers import BrainExtractor, ContrastPolarityInferer, MirrorContrastInferer, SkullStrippingInferer


def write_scan(path: Path, value: float, peak: float, dip: float | None = None) -> None:
    """A 4 x 4 x 4 scan of ``value`` (the stand-in network's score: the median) with ``peak`` at one voxel and
    ``dip`` at another (what stand-in rules read)."""
    data = np.full((4, 4, 4), value, dtype=np.float32)
    data[0, 0, 0] = peak
    if dip is not None:
        data[1, 1, 1] = dip
    nib.save(nib.Nifti1Image(data, np.eye(4)), str(path))


def preprocessing(data: dict) -> dict:
    """Loads the scan; keeps it as the unnormalised image too."""
    image = torch.as_tensor(np.asarray(nib.load(data["image"]).dataobj), dtype=torch.float32)[None]
    return {"image": image, "unnormalised_image": image}


def network(volume: torch.Tensor) -> dict:
    """A stand-in predictor: the volume's median is its lesion log-odds."""
    score = volume.median().reshape(1)
    return {"lesion_log_odds": score, "lesion_probability": torch.sigmoid(score.double()),
            "slice_probabilities": torch.sigmoid(volume.median(dim=1).values.flatten(1)[:, :4])}


CLASSIFICATION_BUNDLE = Path(__file__).resolve().parents[1] / "bundles" / "mobilemamba_classification"


def parsed_config(config: str, ckpt_dir: Path, **overrides):
    """The classification bundle's ``config`` parsed with ``ckpt_dir`` (where ``threshold.json`` is read) and overrides."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(CLASSIFICATION_BUNDLE / "configs" / config))
    parser.update({"bundle_root": str(CLASSIFICATION_BUNDLE), "ckpt_dir": str(ckpt_dir), **overrides})
    return parser


def symmetric_head(degrees: float) -> tuple[np.ndarray, np.ndarray]:
    """A brain (ellipsoid) with two 'ventricles' mirror images of each other, a third structure on the plane
    and a fourth on one side only, all turned by ``degrees`` from x = 20 towards axis 1."""
    grid = np.stack(np.meshgrid(*(np.arange(n, dtype=float) for n in (40, 48, 32)), indexing="ij"), axis=-1)
    normal = np.array([np.cos(np.radians(degrees)), np.sin(np.radians(degrees)), 0.0])
    centre = np.array([20.0, 24.0, 16.0])
    tangent = np.array([-normal[1], normal[0], 0.0])
    local = np.stack([(grid - centre) @ normal, (grid - centre) @ tangent, grid[..., 2] - centre[2]], axis=-1)
    brain = ((local**2) / np.array([15.0, 19.0, 13.0]) ** 2).sum(-1) <= 1  # the head turned with its structures
    image = np.where(brain, 1.0, 0.0)
    for spot in (centre + 6 * normal + 5 * tangent, centre - 6 * normal + 5 * tangent, centre - 8 * tangent):
        image[((grid - spot) ** 2).sum(-1) <= 9] = 0.2
    image[((grid - (centre + 6 * normal - 6 * tangent)) ** 2).sum(-1) <= 4] = 0.3  # and one on one side only
    return image, brain


def keep_extraction_records(stripping: SkullStrippingInferer, brain: np.ndarray, white_matter: np.ndarray) -> None:
    """What a brain extraction keeps of a one-volume call: ``brain``, its voxel count, and tissue logits
    (background, CSF, grey, white matter) whose white-matter probability is 0.9999 where ``white_matter`` is 1
    and 1e-4 where it is 0."""
    stripping.last_brains = [torch.from_numpy(brain)]
    stripping.last_brain_voxels = [int(brain.sum())]
    w = torch.as_tensor(np.asarray(white_matter, dtype=np.float32))
    stripping.extractor.last_tissue_logits = 10.0 * torch.stack([1 - w, 0 * w, 0 * w, w])[None]


def recorded_chain(brain: np.ndarray, white_matter: np.ndarray, lesion_map, contrast_map,
                   polarity: str | None = None, plane=None):
    """A predictor chain (mirror read-out -> [polarity check ->] skull stripping) whose last call kept ``brain``,
    tissue logits with ``white_matter`` (:func:`keep_extraction_records`), the dense ``lesion_map``, its
    ``contrast_map`` and the mirror ``plane``; the polarity check, if ``polarity`` is given, analysed it so.

    Returns:
        ``(predictor, readout, stripping)``.
    """
    stripping = SkullStrippingInferer(lambda x, net: x, BrainExtractor(lambda x: x, lambda x, net: x))
    keep_extraction_records(stripping, brain, white_matter)
    inner = stripping
    if polarity is not None:
        inner = ContrastPolarityInferer(stripping, polarity=polarity)
        inner.last_polarities = [polarity]
    readout = MirrorContrastInferer(inner)
    readout.last_lesion_maps = [torch.as_tensor(lesion_map)]
    readout.last_contrast_maps = [torch.as_tensor(contrast_map)]
    readout.last_planes = [plane]

    class _Predictor:
        inferer = readout

    return _Predictor(), readout, stripping

