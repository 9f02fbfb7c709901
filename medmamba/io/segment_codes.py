"""SNOMED CT codes of the segments the project's networks produce, for DICOM SEG objects.

A DICOM Segmentation describes what each segment *is* by two coded concepts, its Segmented Property
Category (context group CID 7150) and its Segmented Property Type (a group that depends on the
category). A viewer or a PACS tells segments apart by these codes, not by their free-text labels, so
each tissue gets its own concept: grey matter, white matter and cerebrospinal fluid are "Anatomical
Structure" types (CID 7192), a lesion is a "Morphologically Abnormal Structure" type (CID 7194). The
concepts are pydicom's (``pydicom.sr.codedict.codes``), so their values and meanings are those of the
DICOM standard's tables.

The recommended display colours are CIE L*a*b* values (what ``RecommendedDisplayCIELabValue`` holds),
made from sRGB colours close to the usual anatomical conventions (CSF blue, grey matter grey, white
matter light, lesion red).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code

__all__ = [
    "BRAIN",
    "CEREBROSPINAL_FLUID",
    "GENERIC_TISSUE",
    "GREY_MATTER",
    "LESION",
    "SegmentCode",
    "WHITE_MATTER",
    "segment_codes_metadata",
]


@dataclass(frozen=True)
class SegmentCode:
    """What a segment is, in DICOM terms: category, type and a recommended display colour.

    Attributes:
        category: Segmented Property Category (CID 7150), e.g. SCT 91723000 "Anatomical Structure".
        property_type: Segmented Property Type, e.g. SCT 389080008 "White Matter".
        rgb: Recommended display colour, sRGB 0-255 (written as CIE L*a*b*).
    """

    category: Code
    property_type: Code
    rgb: tuple[int, int, int] = (128, 174, 128)

    def __post_init__(self) -> None:
        for name in ("category", "property_type"):
            if not isinstance(getattr(self, name), Code):
                raise TypeError(f"{name} must be a pydicom.sr.coding.Code, got {type(getattr(self, name)).__name__}")
        if len(self.rgb) != 3 or any(not isinstance(v, int) or not 0 <= v <= 255 for v in self.rgb):
            raise ValueError(f"rgb must be three integers in 0..255, got {self.rgb!r}")

    def to_dict(self) -> dict[str, dict[str, str]]:
        """The codes as plain data (as written in a bundle's metadata)."""
        def one(code: Code) -> dict[str, str]:
            return {"scheme": code.scheme_designator, "value": code.value, "meaning": code.meaning}

        return {"category": one(self.category), "type": one(self.property_type)}


#: Cerebrospinal fluid (SCT 65216001; category Anatomical Structure).
CEREBROSPINAL_FLUID = SegmentCode(codes.SCT.AnatomicalStructure, codes.SCT.CerebrospinalFluid, (70, 130, 220))
#: Grey matter (SCT 389081007; category Anatomical Structure).
GREY_MATTER = SegmentCode(codes.SCT.AnatomicalStructure, codes.SCT.GrayMatter, (150, 150, 150))
#: White matter (SCT 389080008; category Anatomical Structure).
WHITE_MATTER = SegmentCode(codes.SCT.AnatomicalStructure, codes.SCT.WhiteMatter, (235, 230, 210))
#: Brain (SCT 12738006; category Anatomical Structure): a brain mask.
BRAIN = SegmentCode(codes.SCT.AnatomicalStructure, codes.SCT.Brain, (250, 200, 160))
#: Lesion (SCT 52988006; category Morphologically Abnormal Structure, SCT 49755003).
LESION = SegmentCode(codes.SCT.MorphologicallyAbnormalStructure, codes.SCT.Lesion, (220, 40, 40))
#: The generic "Tissue" / "Tissue" (SCT 85756007) for a segment the caller gives no code for.
GENERIC_TISSUE = SegmentCode(codes.SCT.Tissue, codes.SCT.Tissue)


def segment_codes_metadata(
    labels: Mapping[int, str], segment_codes: Mapping[int, SegmentCode]
) -> dict[str, dict[str, object]]:
    """Label value -> ``{"label", "category", "type"}``: what a bundle's metadata records.

    Args:
        labels: Label value -> segment label.
        segment_codes: Label value -> code, for every value of ``labels``.

    Returns:
        Plain data keyed by the label value as a string (JSON object keys).

    Raises:
        ValueError: If a label has no code.
    """
    missing = sorted(set(labels) - set(segment_codes))
    if missing:
        raise ValueError(f"segment_codes has no code for label values {missing} (labels={dict(labels)!r})")
    return {str(k): {"label": labels[k], **segment_codes[k].to_dict()} for k in sorted(labels)}
