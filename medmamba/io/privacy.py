"""Keeping patient-identifying DICOM values out of metadata, logs and written files.

* :data:`IDENTIFYING_KEYWORDS` - DICOM attributes that identify a patient, a person or a visit
  (after the PS3.15 Basic Application Level Confidentiality Profile).
* :func:`scrub_meta` - a copy of a metadata dict (MONAI, pydicom-JSON or keyword style, nested)
  without those attributes.
* :class:`Redactor` - replaces known identifying values (taken from the DICOM headers of a case)
  in any text, e.g. an exception message before it is logged or written to a report.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from typing import Any

from pydicom.datadict import tag_for_keyword
from pydicom.dataset import Dataset

__all__ = [
    "IDENTIFYING_KEYWORDS",
    "REDACTED",
    "Redactor",
    "identifying_values",
    "is_identifying_key",
    "scrub_meta",
]

#: DICOM keywords whose values identify the patient or people/places of the visit.
IDENTIFYING_KEYWORDS: frozenset[str] = frozenset(
    {
        "PatientName", "PatientID", "PatientBirthDate", "PatientBirthTime", "PatientSex", "PatientAge",
        "PatientAddress", "PatientTelephoneNumbers", "PatientMotherBirthName", "OtherPatientIDs",
        "OtherPatientNames", "OtherPatientIDsSequence", "IssuerOfPatientID", "PatientBirthName",
        "PatientSize", "PatientWeight", "MedicalRecordLocator", "EthnicGroup", "Occupation",
        "AdditionalPatientHistory", "PatientComments", "PatientReligiousPreference", "MilitaryRank",
        "BranchOfService", "CountryOfResidence", "RegionOfResidence", "ResponsiblePerson",
        "ResponsibleOrganization", "PatientInsurancePlanCodeSequence", "InsurancePlanIdentification",
        "ReferringPhysicianName", "ReferringPhysicianAddress", "ReferringPhysicianTelephoneNumbers",
        "PerformingPhysicianName", "NameOfPhysiciansReadingStudy", "PhysiciansOfRecord", "OperatorsName",
        "RequestingPhysician", "ScheduledPerformingPhysicianName", "InstitutionName", "InstitutionAddress",
        "InstitutionalDepartmentName", "StationName", "DeviceSerialNumber", "AccessionNumber", "StudyID",
        "AdmissionID", "AdmittingDiagnosesDescription", "RequestAttributesSequence", "PerformedProcedureStepID",
        "ScheduledProcedureStepID", "RequestedProcedureID", "FillerOrderNumberImagingServiceRequest",
        "PlacerOrderNumberImagingServiceRequest", "PersonName", "PersonAddress", "PersonTelephoneNumbers",
        "ContentCreatorName", "VerifyingObserverName", "PatientState", "PregnancyStatus",
        "CurrentPatientLocation", "PatientInstitutionResidence", "SpecialNeeds", "Allergies",
    }
)
REDACTED = "[REDACTED]"
#: Identifying attributes whose values are distinctive enough to search for in text.
_REDACT_KEYWORDS: frozenset[str] = IDENTIFYING_KEYWORDS - {
    "PatientSex", "PatientAge", "PatientSize", "PatientWeight", "PregnancyStatus", "PatientState", "EthnicGroup",
    "SpecialNeeds", "Allergies", "StudyID", "RequestAttributesSequence", "OtherPatientIDsSequence",
    "PatientInsurancePlanCodeSequence",
}
_REDACT_TAGS: frozenset[int] = frozenset(t for t in (tag_for_keyword(k) for k in _REDACT_KEYWORDS) if t is not None)

_IDENT_TAGS: frozenset[int] = frozenset(t for t in (tag_for_keyword(k) for k in IDENTIFYING_KEYWORDS) if t is not None)
_HEX_KEY = re.compile(r"^\(?\s*([0-9A-Fa-f]{4})\s*[,|]?\s*([0-9A-Fa-f]{4})\s*\)?$")
_MIN_TOKEN = 3


def is_identifying_key(key: object) -> bool:
    """Whether a metadata key names an identifying attribute.

    Recognises keywords (``PatientName``), MONAI/pydicom-JSON hex keys (``00100010``), ITK style
    (``0010|0010``) and ``(0010,0010)``; any key in the patient group 0x0010 counts.

    Args:
        key: A metadata key.

    Returns:
        True for identifying keys.
    """
    if isinstance(key, int):
        return key in _IDENT_TAGS or (key >> 16) == 0x0010
    if not isinstance(key, str):
        return False
    if key in IDENTIFYING_KEYWORDS:
        return True
    m = _HEX_KEY.match(key)
    if m:
        tag = int(m.group(1) + m.group(2), 16)
        return tag in _IDENT_TAGS or (tag >> 16) == 0x0010
    return False


def scrub_meta(meta: Mapping[Any, Any]) -> dict[Any, Any]:
    """Return a copy of ``meta`` without identifying keys, recursing into dicts and lists.

    Args:
        meta: Metadata (e.g. ``MetaTensor.meta``, a pydicom ``to_json_dict()``, a keyword dict).

    Returns:
        The scrubbed copy (values are not copied deeper than containers).

    Raises:
        TypeError: If ``meta`` is not a mapping.
    """
    if not isinstance(meta, Mapping):
        raise TypeError(f"meta must be a mapping, got {type(meta).__name__}")
    return _scrub(meta)


def _scrub(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _scrub(v) for k, v in value.items() if not is_identifying_key(k)}
    if isinstance(value, list):
        return [_scrub(v) for v in value]
    if isinstance(value, tuple):
        return tuple(_scrub(v) for v in value)
    return value


_SEPARATORS = r"[\W_]*"
_DATE_SEPARATORS = r"[-./ ]?"


def _value_patterns(value: str) -> list[str]:
    """Regular expressions for one identifying value: its letter/digit runs with any separators
    between them, and for an 8-digit date the usual date layouts."""
    runs = re.findall(r"[^\W\d_]+|\d+", value)
    if not runs:
        return [re.escape(value)]
    out = [_SEPARATORS.join(re.escape(r) for r in runs)]
    digits = value.strip()
    if re.fullmatch(r"\d{8}", digits):
        year, month, day = digits[:4], digits[4:6], digits[6:]
        if 1 <= int(month) <= 12 and 1 <= int(day) <= 31:
            m, d = f"0?{int(month)}", f"0?{int(day)}"
            sep = _DATE_SEPARATORS
            out += [f"{year}{sep}{m}{sep}{d}(?!\\d)", f"(?<!\\d){d}{sep}{m}{sep}{year}", f"(?<!\\d){m}{sep}{d}{sep}{year}"]
    return out


def identifying_values(datasets: Iterable[Dataset]) -> set[str]:
    """Collect the identifying values found in DICOM datasets (top level and nested sequences).

    Only distinctive attributes count (names, IDs, dates of birth, addresses, institutions,
    accession numbers, ...; not sex, age, weight). Person names contribute the whole value and
    each name component of 3+ characters.

    Args:
        datasets: Headers of the files of a case.

    Returns:
        The distinct non-empty values, as strings.
    """
    found: set[str] = set()

    def visit(ds: Dataset) -> None:
        for elem in ds:
            if elem.VR == "SQ":
                for item in elem.value or []:
                    visit(item)
                continue
            if elem.tag not in _REDACT_TAGS:
                continue
            values = elem.value if isinstance(elem.value, (list, tuple)) or getattr(elem, "VM", 1) > 1 else [elem.value]
            try:
                values = list(values)
            except TypeError:
                values = [elem.value]
            for v in values:
                text = str(v).strip() if v is not None else ""
                if len(text) < _MIN_TOKEN:
                    continue
                found.add(text)
                if elem.VR == "PN":
                    found.update(p.strip() for p in re.split(r"[\^=]", text) if len(p.strip()) >= _MIN_TOKEN)

    for ds in datasets:
        visit(ds)
    return found


class Redactor:
    """Replace known identifying values in text (case-insensitive), in any common formatting.

    A value matches however its letter and digit runs are separated: a patient ID ``PID12345`` is
    also found as ``pid-12345`` or ``PID_12345``, a name ``DOE^JOHN`` as ``Doe John``; a date of
    birth ``19700131`` (DICOM DA) also as ``1970-01-31``, ``31.01.1970``, ``01/31/1970`` and
    ``31/1/1970``. Matching ignores word boundaries: a value inside a longer token is hidden too
    (hiding too much is the safe side).

    Args:
        values: The values to hide (e.g. from :func:`identifying_values`); values shorter than
            3 characters are ignored (they would hide ordinary text).
        paths: Path text -> what to write instead (e.g. the inputs' common folder -> ``<inputs>``),
            replaced first, exactly: folder names above a case often carry the patient's name or ID.
    """

    def __init__(self, values: Iterable[str] = (), paths: Mapping[str, str] | None = None) -> None:
        vals = sorted({v for v in values if isinstance(v, str) and len(v.strip()) >= _MIN_TOKEN}, key=len, reverse=True)
        self.values: tuple[str, ...] = tuple(vals)
        self.paths: dict[str, str] = {str(k): str(v) for k, v in (paths or {}).items() if str(k) not in ("", ".", os.sep)}
        patterns = [p for v in vals for p in _value_patterns(v)]
        self._pattern = re.compile("|".join(patterns), re.IGNORECASE) if patterns else None
        ordered = sorted(self.paths, key=len, reverse=True)
        # whole paths only: not inside a longer name (a relative "y" must not hit "KeyError")
        alternatives = "|".join(re.escape(p) for p in ordered)
        self._path_pattern = re.compile(rf"(?<![\w.-])(?:{alternatives})(?![\w.-])") if ordered else None

    def __call__(self, text: str) -> str:
        """``text`` with the known paths replaced and every known value replaced by :data:`REDACTED`."""
        out = str(text)
        if self._path_pattern is not None:
            out = self._path_pattern.sub(lambda m: self.paths[m.group(0)], out)
        if self._pattern is None:
            return out
        return self._pattern.sub(REDACTED, out)

    def merged(self, other: Redactor) -> Redactor:
        """A redactor hiding the values and paths of both."""
        return Redactor((*self.values, *other.values), {**self.paths, **other.paths})
