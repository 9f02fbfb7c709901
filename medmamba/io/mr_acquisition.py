"""MR acquisition parameters of a loaded scan, and the image weighting (T1, T2, FLAIR, ...) they imply.

A brain MR study holds several series (T1-, T2-, FLAIR-, diffusion-weighted, ...), and picking the
wrong one is the commonest way to give a T1 model an input it cannot read: it still returns a
number. The image alone does not say reliably which weighting it has, but the acquisition does:

- DICOM headers carry ``EchoTime``, ``RepetitionTime``, ``InversionTime`` (in ms), the
  ``ScanningSequence`` (``SE`` spin echo, ``GR`` gradient echo, ``IR`` inversion recovery, ``EP``
  echo planar), the ``DiffusionBValue`` and the ``ImageType`` (``ADC``, ``TRACEW``, ...); an
  enhanced multi-frame object names its contrast outright (``AcquisitionContrast``: ``T1``,
  ``T2``, ``FLUID_ATTENUATED``, ...) and keeps the times in its shared functional groups;
- a NIfTI file in a BIDS data set is named by its weighting (``sub-01_T1w.nii.gz``,
  ``sub-01_T2w.nii.gz``, ``sub-01_FLAIR.nii.gz``) and has a JSON sidecar beside it with the same
  times in seconds.

:func:`dicom_acquisition` and :func:`bids_acquisition` read them into the loader's metadata (keys
:data:`MR_ACQUISITION_META_KEYS`; none identifies the patient), and :func:`mr_weighting` names the
weighting by the physics of MR contrast: T1 weighting needs a short echo time (the T2 decay must
not dominate: spin echo ``TE`` up to about 20-30 ms, gradient echo a few ms) with a short
repetition time or a T1-preparing inversion (MPRAGE, IR-SPGR, T1-FLAIR: ``TI`` of about 300-1500
ms); a long echo time (40 ms and more) gives T2 weighting, and with a long inversion (1500 ms and
more, fluid nulled) FLAIR; a gradient echo of 15 ms and more gives T2* weighting (SWI); an
inversion shorter than 300 ms nulls fat (STIR). A BIDS
suffix, where given, is taken as it is. Where the parameters are missing or ambiguous (a long
repetition time with a short echo time and no recorded inversion: proton density, or an MPRAGE
whose inversion time was not stored) the weighting is ``"unknown"``. An enhanced object's
``AcquisitionContrast``, like a BIDS suffix, is taken as it is.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from medmamba.io.errors import warn_and_log

__all__ = [
    "ACQUISITION_CONTRAST_WEIGHTING",
    "BIDS_SUFFIX_WEIGHTING",
    "MR_ACQUISITION_META_KEYS",
    "BidsSidecarWarning",
    "bids_acquisition",
    "describe_acquisition",
    "dicom_acquisition",
    "mr_weighting",
]

logger = logging.getLogger(__name__)

#: The metadata keys the loaders fill (``nan`` / ``""`` where unknown); none identifies the patient.
MR_ACQUISITION_META_KEYS: tuple[str, ...] = (
    "echo_time_ms",
    "repetition_time_ms",
    "inversion_time_ms",
    "diffusion_b_value",
    "acquisition_contrast",
    "scanning_sequence",
    "image_type",
    "bids_suffix",
    "acquisition_source",
)

#: BIDS anatomical / diffusion suffixes and the weighting each names.
BIDS_SUFFIX_WEIGHTING: dict[str, str] = {
    "T1w": "T1",
    "inplaneT1": "T1",
    "UNIT1": "T1",
    "T2w": "T2",
    "inplaneT2": "T2",
    "T2starw": "T2*",
    "FLAIR": "FLAIR",
    "PDw": "PD",
    "PDT2": "PD/T2",
    "angio": "angiography",
    "dwi": "diffusion",
    "bold": "BOLD",
    "T1map": "quantitative map",
    "R1map": "quantitative map",
    "T2map": "quantitative map",
    "T2starmap": "quantitative map",
    "R2starmap": "quantitative map",
    "PDmap": "quantitative map",
}

#: DICOM ``AcquisitionContrast`` (0008,9209; enhanced MR objects) defined terms and the weighting
#: each names (``MIXED`` and ``UNKNOWN`` leave it to the acquisition times).
ACQUISITION_CONTRAST_WEIGHTING: dict[str, str] = {
    "T1": "T1",
    "T2": "T2",
    "T2_STAR": "T2*",
    "PROTON_DENSITY": "PD",
    "FLUID_ATTENUATED": "FLAIR",
    "STIR": "STIR",
    "DIFFUSION": "diffusion",
    "PERFUSION": "perfusion",
    "FLOW_ENCODED": "flow",
    "TOF": "angiography",
    "TAGGING": "tagging",
}

#: Echo time (ms) from which an acquisition is T2 weighted.
LONG_ECHO_MS = 40.0
#: Gradient-echo echo time (ms) from which an acquisition is T2* weighted.
LONG_GRADIENT_ECHO_MS = 15.0
#: Inversion time (ms) from which an inversion recovery nulls fluid (FLAIR).
FLUID_INVERSION_MS = 1500.0
#: Shortest inversion time (ms) of a T1-preparing inversion (shorter: fat nulling, STIR).
T1_INVERSION_MS = 300.0
#: Repetition time (ms) below which a short-echo acquisition without inversion is T1 weighted.
SHORT_REPETITION_MS = 1200.0

_DIFFUSION_IMAGE_TYPES = ("ADC", "TRACEW", "DIFFUSION", "FA", "EADC")


class BidsSidecarWarning(UserWarning):
    """A BIDS JSON sidecar beside a NIfTI file could not be read; its acquisition parameters are unknown."""


def _number(value: Any, scale: float = 1.0) -> float:
    """A finite float from a DICOM/JSON value (first of a multi-value), else ``nan``."""
    if isinstance(value, (list, tuple)):
        value = value[0] if len(value) else None
    if value is None or value == "":
        return math.nan
    try:
        out = float(value) * scale
    except (TypeError, ValueError):
        return math.nan
    return out if math.isfinite(out) else math.nan


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        return "\\".join(str(v) for v in value)
    return str(value)


_TIME_KEYS = ("echo_time_ms", "repetition_time_ms", "inversion_time_ms")


def _has_times(found: Mapping[str, Any]) -> bool:
    """Whether any of the echo, repetition or inversion time was recorded."""
    return any(not math.isnan(found[k]) for k in _TIME_KEYS)


def _empty() -> dict[str, Any]:
    return {
        "echo_time_ms": math.nan,
        "repetition_time_ms": math.nan,
        "inversion_time_ms": math.nan,
        "diffusion_b_value": math.nan,
        "acquisition_contrast": "",
        "scanning_sequence": "",
        "image_type": "",
        "bids_suffix": "",
        "acquisition_source": "",
    }


def dicom_acquisition(ds: Any) -> dict[str, Any]:
    """The acquisition parameters of a DICOM header (``pydicom.Dataset``), under
    :data:`MR_ACQUISITION_META_KEYS`.

    Top-level attributes first; for an enhanced multi-frame object the first item of its
    ``SharedFunctionalGroupsSequence`` (``MREchoSequence``, ``MRTimingAndRelatedParametersSequence``,
    ``MRModifierSequence``, ``MRDiffusionSequence``).

    Args:
        ds: the header of one file of the series.

    Returns:
        A dict of the parameters (``nan`` / ``""`` where the header has none); ``acquisition_source``
        is ``"DICOM header"`` when a time or the ``AcquisitionContrast`` was found.
    """
    out = _empty()
    get = getattr(ds, "get", None)
    if get is None:
        return out

    def first(name: str) -> Any:
        value = get(name, None)
        return None if value in (None, "") else value

    out["echo_time_ms"] = _number(first("EchoTime"))
    out["repetition_time_ms"] = _number(first("RepetitionTime"))
    out["inversion_time_ms"] = _number(first("InversionTime"))
    out["diffusion_b_value"] = _number(first("DiffusionBValue"))
    out["acquisition_contrast"] = _text(first("AcquisitionContrast")).strip().upper()
    out["scanning_sequence"] = _text(first("ScanningSequence"))
    out["image_type"] = _text(first("ImageType"))
    shared = first("SharedFunctionalGroupsSequence")
    if shared is not None and len(shared):
        groups = shared[0]

        def nested(sequence: str, name: str) -> Any:
            items = groups.get(sequence, None)
            return items[0].get(name, None) if items is not None and len(items) else None

        if math.isnan(out["echo_time_ms"]):
            out["echo_time_ms"] = _number(nested("MREchoSequence", "EffectiveEchoTime"))
        if math.isnan(out["repetition_time_ms"]):
            out["repetition_time_ms"] = _number(nested("MRTimingAndRelatedParametersSequence", "RepetitionTime"))
        if math.isnan(out["inversion_time_ms"]):
            out["inversion_time_ms"] = _number(nested("MRModifierSequence", "InversionTimes"))
        if math.isnan(out["diffusion_b_value"]):
            out["diffusion_b_value"] = _number(nested("MRDiffusionSequence", "DiffusionBValue"))
    if out["acquisition_contrast"] or _has_times(out):
        out["acquisition_source"] = "DICOM header"
    return out


_NIFTI_EXTENSION = r"\.(?:nii(?:\.gz)?|hdr|img(?:\.gz)?)$"
_BIDS_SUFFIX = re.compile(r"_([A-Za-z0-9]+)" + _NIFTI_EXTENSION)


def bids_acquisition(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The acquisition parameters of a NIfTI file from its BIDS name and JSON sidecar.

    The suffix is the last ``_``-separated entity of the file name (``sub-01_ses-1_T2w.nii.gz`` ->
    ``T2w``), kept only if BIDS names a weighting by it (:data:`BIDS_SUFFIX_WEIGHTING`). The sidecar
    is the file with the same name ending in ``.json``; its ``EchoTime``, ``RepetitionTime`` and
    ``InversionTime`` are in seconds (BIDS) and returned in ms. An unreadable sidecar is reported
    with a :class:`BidsSidecarWarning` and ignored.

    Args:
        path: the NIfTI file.

    Returns:
        A dict under :data:`MR_ACQUISITION_META_KEYS`; ``acquisition_source`` names what was found
        (``"BIDS name"``, ``"BIDS sidecar"`` or both).
    """
    out = _empty()
    p = Path(path)
    sources = []
    match = _BIDS_SUFFIX.search(p.name)
    if match and match.group(1) in BIDS_SUFFIX_WEIGHTING:
        out["bids_suffix"] = match.group(1)
        sources.append("BIDS name")
    stem = re.sub(_NIFTI_EXTENSION, "", p.name)
    sidecar = p.with_name(stem + ".json")
    if sidecar.is_file():
        try:
            fields = json.loads(sidecar.read_text(encoding="utf-8"))
            if not isinstance(fields, Mapping):
                raise ValueError(f"expected a JSON object, got {type(fields).__name__}")
        except (OSError, ValueError) as exc:
            warn_and_log(f"{sidecar}: cannot read the BIDS sidecar ({type(exc).__name__}: {exc}); the acquisition "
                         "parameters are unknown", BidsSidecarWarning, logger, stacklevel=3)
        else:
            out["echo_time_ms"] = _number(fields.get("EchoTime"), 1000.0)
            out["repetition_time_ms"] = _number(fields.get("RepetitionTime"), 1000.0)
            out["inversion_time_ms"] = _number(fields.get("InversionTime"), 1000.0)
            out["scanning_sequence"] = _text(fields.get("ScanningSequence"))
            out["image_type"] = _text(fields.get("ImageType"))
            if _has_times(out):
                sources.append("BIDS sidecar")
    out["acquisition_source"] = " and ".join(sources)
    return out


def _has(value: Any) -> bool:
    try:
        return value is not None and not math.isnan(float(value))
    except (TypeError, ValueError):
        return False


def _value(meta: Mapping[str, Any], key: str) -> float:
    """``meta[key]`` as a float, ``nan`` where missing or not a number."""
    return float(meta[key]) if _has(meta.get(key)) else math.nan


def describe_acquisition(meta: Mapping[str, Any]) -> str:
    """The parameters found, in words: ``"TE 95 ms, TR 6000 ms, TI 2500 ms (DICOM header)"``."""
    parts = []
    for key, name in zip(_TIME_KEYS, ("TE", "TR", "TI")):
        if _has(meta.get(key)):
            parts.append(f"{name} {float(meta[key]):.4g} ms")
    if _has(meta.get("diffusion_b_value")):
        parts.append(f"b = {float(meta['diffusion_b_value']):.4g} s/mm2")
    if meta.get("scanning_sequence"):
        parts.append(f"sequence {meta['scanning_sequence']}")
    if meta.get("acquisition_contrast"):
        parts.append(f"AcquisitionContrast {meta['acquisition_contrast']}")
    if meta.get("bids_suffix"):
        parts.append(f"BIDS suffix {meta['bids_suffix']}")
    if meta.get("image_type") and _diffusion_type(str(meta["image_type"])):
        parts.append(f"image type {meta['image_type']}")
    text = ", ".join(parts) or "no acquisition parameters"
    source = meta.get("acquisition_source")
    return f"{text} ({source})" if source else text


def _diffusion_type(image_type: str) -> bool:
    values = {v.strip().upper() for v in image_type.split("\\")}
    return any(t in values for t in _DIFFUSION_IMAGE_TYPES)


def mr_weighting(meta: Mapping[str, Any]) -> tuple[str, str]:
    """The weighting the acquisition parameters imply (see the module docs for the rules).

    Args:
        meta: a loaded scan's metadata (``MetaTensor.meta``) or any mapping with keys of
            :data:`MR_ACQUISITION_META_KEYS` (missing keys count as unknown).

    Returns:
        ``(weighting, reason)``: weighting ``"T1"``, ``"T2"``, ``"FLAIR"``, ``"T2*"``, ``"PD"``,
        ``"diffusion"``, ``"STIR"``, another name from :data:`BIDS_SUFFIX_WEIGHTING` or
        ``"unknown"``; reason: the rule that decided, in words.
    """
    if not isinstance(meta, Mapping):
        raise TypeError(f"meta must be a mapping of metadata, got {type(meta).__name__}.")
    suffix = str(meta.get("bids_suffix") or "")
    if suffix in BIDS_SUFFIX_WEIGHTING:
        return BIDS_SUFFIX_WEIGHTING[suffix], f"the BIDS file name ends in _{suffix}"
    contrast = str(meta.get("acquisition_contrast") or "").strip().upper()
    if contrast in ACQUISITION_CONTRAST_WEIGHTING:
        return ACQUISITION_CONTRAST_WEIGHTING[contrast], f"the header's AcquisitionContrast is {contrast}"
    b_value = _value(meta, "diffusion_b_value")
    if b_value > 0:
        return "diffusion", f"diffusion b-value {b_value:.4g} s/mm2"
    if _diffusion_type(str(meta.get("image_type") or "")):
        return "diffusion", f"image type {meta.get('image_type')}"
    te, tr, ti = (_value(meta, k) for k in _TIME_KEYS)
    if ti <= 0:  # some vendors write 0 for "no inversion"
        ti = math.nan
    gradient_echo = "GR" in str(meta.get("scanning_sequence") or "").upper().split("\\")
    if te >= LONG_ECHO_MS:
        if ti >= FLUID_INVERSION_MS:
            return "FLAIR", (f"echo time {te:.4g} ms >= {LONG_ECHO_MS:g} ms with an inversion time of {ti:.4g} ms >= "
                             f"{FLUID_INVERSION_MS:g} ms (fluid nulled)")
        return "T2", f"echo time {te:.4g} ms >= {LONG_ECHO_MS:g} ms"
    if ti >= FLUID_INVERSION_MS:  # a short echo after a long inversion: MP2RAGE's second inversion, a T1 map's
        return "unknown", (f"inversion time {ti:.4g} ms with a short or unrecorded echo time: not judged (an MP2RAGE "
                           "inversion image, or a FLAIR whose echo time was not recorded)")
    if gradient_echo and te >= LONG_GRADIENT_ECHO_MS:
        return "T2*", f"gradient echo with echo time {te:.4g} ms >= {LONG_GRADIENT_ECHO_MS:g} ms"
    if ti < T1_INVERSION_MS:
        return "STIR", f"inversion time {ti:.4g} ms < {T1_INVERSION_MS:g} ms (fat nulling)"
    if not math.isnan(te):
        if not math.isnan(ti):
            return "T1", f"echo time {te:.4g} ms with a T1-preparing inversion of {ti:.4g} ms"
        if tr < SHORT_REPETITION_MS:
            return "T1", f"echo time {te:.4g} ms with repetition time {tr:.4g} ms < {SHORT_REPETITION_MS:g} ms"
        if not math.isnan(tr):
            return "unknown", (f"echo time {te:.4g} ms with repetition time {tr:.4g} ms and no inversion time: proton "
                               "density, or an inversion-prepared T1 whose inversion time was not recorded")
    return "unknown", "no echo time recorded"
