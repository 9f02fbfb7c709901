"""``load_scan``: one call from a DICOM folder, a DICOM file or a NIfTI file to a ``MetaTensor``.

DICOM goes through :class:`~medmamba.data.dicom_reader.DicomSeriesReader`, NIfTI through MONAI's
``NibabelReader``; both via ``monai.transforms.LoadImage``, so the result is what a MONAI pipeline
expects: channel-first, float32, with a RAS ``affine`` and ``meta`` (``filename_or_obj``,
``spatial_shape``, ``original_affine``, ``space``, plus safe DICOM keys). Non-finite voxels and
unexpected modalities are refused with a :class:`~medmamba.io.errors.ScanLoadError`, and so is a
gzip-compressed NIfTI whose stream is truncated or fails its CRC (:mod:`medmamba.data.gzip_integrity`;
nibabel alone reads such a file without error when the voxel data are complete).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Collection
from pathlib import Path

import numpy as np
import torch
from monai.data import MetaTensor
from monai.data.image_reader import ImageReader, NibabelReader
from monai.transforms.io.array import switch_endianness
from monai.transforms import EnsureChannelFirst
from monai.utils import ImageMetaKey

from medmamba.data.dicom_reader import DicomSeriesReader, OnGap, OnMixed
from medmamba.io.errors import ScanLoadError, warn_and_log
from medmamba.io.mr_acquisition import bids_acquisition
from medmamba.data.gzip_integrity import check_gzip_integrity

__all__ = [
    "NIFTI_SUFFIXES",
    "NiftiHeaderWarning",
    "check_affine",
    "check_scan",
    "is_nifti_path",
    "load_scan",
    "read_to_metatensor",
]

logger = logging.getLogger(__name__)

#: Largest difference (mm for the origin, unitless for the axes) tolerated between a NIfTI file's
#: sform and qform when both are set; a quaternion cannot hold shears, so tiny differences are normal.
QFORM_SFORM_TOLERANCE = 1e-3


class NiftiHeaderWarning(UserWarning):
    """A NIfTI header whose geometry had to be chosen between its sform and qform."""

#: File-name endings read as NIfTI.
NIFTI_SUFFIXES: tuple[str, ...] = (".nii", ".nii.gz", ".hdr", ".img", ".img.gz")


def read_to_metatensor(reader: ImageReader, path: str) -> MetaTensor:
    """Read ``path`` with a MONAI reader into a channel-first float32 ``MetaTensor``.

    Does what ``monai.transforms.LoadImage`` does with one given reader (read, ``get_data``,
    ``MetaTensor``, ``EnsureChannelFirst``) without instantiating every registered reader.

    Args:
        reader: A MONAI ``ImageReader``.
        path: The file or folder.

    Returns:
        The image.
    """
    data = reader.read(path)
    arr, meta = reader.get_data(data)
    meta = switch_endianness(meta, "<")
    meta[ImageMetaKey.FILENAME_OR_OBJ] = path
    img = MetaTensor.ensure_torch_and_prune_meta(np.asarray(arr, dtype=np.float32), meta)
    return EnsureChannelFirst()(img, meta_dict=meta)


def is_nifti_path(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` names a NIfTI (or Analyze) file by its suffix."""
    name = Path(path).name.lower()
    return any(name.endswith(s) for s in NIFTI_SUFFIXES)


def check_scan(
    img: torch.Tensor | np.ndarray,
    where: str,
    modality: str = "",
    expected_modalities: Collection[str] | None = None,
    allow_nonfinite: bool = False,
) -> None:
    """Refuse empty volumes, non-finite voxels and unexpected modalities.

    Args:
        img: The loaded image.
        where: The path named in error messages.
        modality: The image's modality ("" if unknown, e.g. NIfTI).
        expected_modalities: Accepted DICOM modalities (``None`` accepts any). NIfTI images, which
            carry no modality, are accepted.
        allow_nonfinite: Accept NaN/inf voxels.

    Raises:
        ScanLoadError: With the reason.
    """
    n_voxels = img.numel() if isinstance(img, torch.Tensor) else img.size
    if n_voxels == 0:
        raise ScanLoadError(f"path={where!r}: the image is empty (shape {tuple(img.shape)})")
    if expected_modalities is not None and modality and modality.upper() not in {m.upper() for m in expected_modalities}:
        raise ScanLoadError(
            f"path={where!r}: modality {modality!r} is not one of the expected modalities {sorted(expected_modalities)}"
        )
    if not allow_nonfinite:
        t = torch.as_tensor(img)
        if t.is_floating_point():
            bad = int((~torch.isfinite(t)).sum())
            if bad:
                raise ScanLoadError(
                    f"path={where!r}: {bad} of {t.numel()} voxels are NaN or infinite; expected finite intensities"
                )


def load_scan(
    path: str | os.PathLike[str],
    series_uid: str | None = None,
    *,
    on_gap: OnGap = "error",
    expected_modalities: Collection[str] | None = None,
    allow_nonfinite: bool = False,
    on_mixed: OnMixed = "error",
) -> MetaTensor:
    """Load a DICOM series folder, a single (multi-frame) DICOM file or a NIfTI file.

    Args:
        path: Folder of DICOM files, a DICOM file, or a ``.nii``/``.nii.gz`` file.
        series_uid: ``SeriesInstanceUID`` to pick when a folder holds several series.
        on_gap: What to do with missing slices / uneven spacing in DICOM series: ``"error"`` or
            ``"warn"`` (see :func:`medmamba.data.read_dicom`).
        expected_modalities: Refuse DICOM objects whose ``Modality`` is not listed.
        allow_nonfinite: Accept NaN/inf voxels (refused by default).
        on_mixed: A DICOM series of several geometries: ``"error"`` or ``"largest"`` (its largest
            consistent stack, see :func:`medmamba.data.read_dicom`).

    Returns:
        A float32 channel-first ``MetaTensor`` (``(C, X, Y[, Z])``) whose ``affine`` is RAS.

    Raises:
        ScanLoadError: If the path is missing, unreadable, ambiguous or holds an unusable image.
    """
    p = Path(path)
    where = str(p)
    if not p.exists():
        raise ScanLoadError(f"path={where!r} does not exist; expected a DICOM folder, DICOM file or NIfTI file")
    if is_nifti_path(p):
        if series_uid is not None:
            raise ScanLoadError(f"series_uid={series_uid!r} given for NIfTI file {where!r}; it applies to DICOM only")
        for part in _gzip_parts(p):
            check_gzip_integrity(part, where if part == p else os.fspath(part))
        # checked on the file's own affine: MONAI's reader replaces one whose zooms disagree with pixdim
        check_affine(_nifti_affine(where), where)
        try:
            img = read_to_metatensor(NibabelReader(), where)
        except Exception as exc:
            raise ScanLoadError(f"path={where!r}: cannot read NIfTI file ({type(exc).__name__}: {exc})") from None
        img.meta["source_format"] = "NIfTI"
        img.meta.update(bids_acquisition(where))
        modality = ""
    else:
        img = read_to_metatensor(DicomSeriesReader(series_uid=series_uid, on_gap=on_gap, on_mixed=on_mixed), where)
        modality = str(img.meta.get("modality", ""))
    check_scan(img, where, modality, expected_modalities, allow_nonfinite)
    check_affine(getattr(img, "affine", None), where)
    return img


def _nifti_affine(where: str) -> np.ndarray:
    """The NIfTI file's own voxel-to-world affine (to check before MONAI's reader corrects it), or a
    ``ScanLoadError``.

    Complex voxels are refused (a cast to float would keep the real part silently). The sform/qform
    choice is MONAI's (``correct_nifti_header_if_necessary``: the form whose voxel sizes match the
    header's pixdim); what it does silently is reported here with a :class:`NiftiHeaderWarning`: an
    all-zero sform flagged valid (the qform gives the geometry), and a qform and sform that disagree
    beyond :data:`QFORM_SFORM_TOLERANCE` (naming which one is used).
    """
    try:
        import nibabel as nib
        from monai.data.utils import correct_nifti_header_if_necessary

        img = nib.load(where)  # lazy: the header only
        dtype = np.dtype(img.header.get_data_dtype())
        hdr = img.header
        forms = None
        if isinstance(hdr, nib.Nifti1Header):  # Analyze has one affine from pixdim, nothing to choose
            forms = int(hdr["sform_code"]), int(hdr["qform_code"]), hdr.get_sform(), hdr.get_qform()
        own = np.array(img.affine, dtype=np.float64)  # the file's best affine, before MONAI's correction
    except Exception as exc:
        raise ScanLoadError(f"path={where!r}: cannot read NIfTI file ({type(exc).__name__}: {exc})") from None
    if dtype.kind == "c":
        raise ScanLoadError(
            f"path={where!r}: the voxels are complex ({dtype}); expected real intensities: save the magnitude "
            "(numpy.abs) as the image, or the real and imaginary parts as separate images"
        )
    if forms is None:
        return own
    s_code, q_code, sform, qform = forms
    if s_code > 0 and q_code > 0 and not np.any(sform[:3, :3]):
        _warn_header(f"{where}: sform_code {s_code} with an all-zero sform; the qform (code {q_code}) gives the geometry")
        return np.asarray(qform, dtype=np.float64)
    if s_code > 0 and q_code > 0:
        diff = float(np.abs(sform[:3] - qform[:3]).max())
        if diff > QFORM_SFORM_TOLERANCE:
            chosen = np.asarray(correct_nifti_header_if_necessary(img).affine, dtype=np.float64)
            which = f"sform (code {s_code})" if np.allclose(chosen, sform, atol=QFORM_SFORM_TOLERANCE) else f"qform (code {q_code})"
            _warn_header(
                f"{where}: the qform (code {q_code}) and the sform (code {s_code}) disagree (largest difference "
                f"{diff:.4g}); the {which} gives the geometry (MONAI's reader keeps the form whose voxel sizes "
                "match pixdim, the sform when both do)"
            )
    return own


def _warn_header(msg: str) -> None:
    warn_and_log(msg, NiftiHeaderWarning, logger)


def _gzip_parts(path: Path) -> list[Path]:
    """The gzip files a NIfTI path reads: itself (``.nii.gz``, ``.img.gz``) or, for an Analyze-style
    ``.hdr``, its ``.img.gz`` data file."""
    name = path.name.lower()
    if name.endswith(".gz"):
        return [path]
    if name.endswith(".hdr"):
        data = path.with_name(path.name[:-4] + ".img.gz")
        return [data] if data.is_file() else []
    return []


def check_affine(affine: torch.Tensor | np.ndarray | None, where: str) -> None:
    """Refuse a voxel-to-world affine that is not finite or maps the voxel grid onto fewer than
    three dimensions (a zero or degenerate column: the orientation cannot be found).

    Raises:
        ScanLoadError: naming the path, the affine and what is wrong with it.
    """
    if affine is None:
        return
    a = np.asarray(torch.as_tensor(affine).detach().cpu(), dtype=np.float64)
    if a.ndim != 2 or a.shape[0] != a.shape[1] or a.shape[0] not in (3, 4) or not np.all(np.isfinite(a)):
        raise ScanLoadError(
            f"path={where!r}: the affine is not a finite 3x3 or 4x4 matrix ({a.tolist()}); expected the voxel-to-world geometry"
        )
    linear = a[:-1, :-1]
    sizes = np.linalg.norm(linear, axis=0)
    if np.any(sizes <= 1e-6) or abs(np.linalg.det(linear)) <= 1e-9 * max(float(np.prod(sizes)), 1e-30):
        raise ScanLoadError(
            f"path={where!r}: the affine is singular (voxel sizes {np.round(sizes, 6).tolist()}, determinant "
            f"{np.linalg.det(linear):.3g}); its orientation cannot be determined. Fix the header (e.g. the sform "
            "or qform of a NIfTI file)"
        )
