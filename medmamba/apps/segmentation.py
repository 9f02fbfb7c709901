"""The ``mobilemamba_segmentation`` bundle's task: 2.5D brain-tissue segmentation.

The bundle's configs (``bundles/mobilemamba_segmentation/configs``) build everything from MONAI and
medmamba components; this module holds the task itself:

- :func:`segment`: volumes in (found by :func:`medmamba.data.find_scans`), masks out, in the input's
  geometry (NIfTI, and DICOM SEG for DICOM input), one failing case never stops the batch;
- :func:`collate_slices`: the collate function of the 2.5D training samples;
- the task constants: the default data set's tissue classes (:data:`TISSUE_CLASSES`,
  :data:`TISSUE_LABELS`, :data:`TISSUE_SEGMENT_CODES`), and :class:`SegmentationMetrics` with them
  as its default classes.

The generic pieces live in the package's kind folders and are re-exported here, because the
bundle's configs name them ``medmamba.apps.segmentation.<name>``: :class:`FusedMobileMambaSeg` and
:class:`FuseOnLoad` (:mod:`medmamba.networks.fuse_on_load`), :class:`FlipTTAInferer`
(:mod:`medmamba.inferers.flip_tta`), :class:`VolumeSegmenter`
(:mod:`medmamba.inferers.volume_predictor`), :func:`load_network` and :func:`export_onnx`
(:mod:`medmamba.apps.deploy`), and :class:`medmamba.training.Autocast`.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

from medmamba.apps.deploy import export_onnx, load_network
from medmamba.data.discovery import find_scans
from medmamba.handlers.segmentation_metrics import SegmentationMetrics as _SegmentationMetrics
from medmamba.inferers.flip_tta import FlipTTAInferer
from medmamba.inferers.volume_predictor import VolumeSegmenter
from medmamba.io.segment_codes import CEREBROSPINAL_FLUID, GREY_MATTER, WHITE_MATTER, SegmentCode
from medmamba.networks.fuse_on_load import FusedMobileMambaSeg, FuseOnLoad
from medmamba.training.amp import Autocast  # re-exported: older configs name it here

__all__ = [
    "Autocast",
    "TISSUE_CLASSES",
    "TISSUE_LABELS",
    "TISSUE_SEGMENT_CODES",
    "FlipTTAInferer",
    "FuseOnLoad",
    "FusedMobileMambaSeg",
    "SegmentationMetrics",
    "VolumeSegmenter",
    "collate_slices",
    "export_onnx",
    "find_scans",
    "load_network",
    "segment",
]

logger = logging.getLogger(__name__)

#: Short names of the foreground classes of ``tissue.nii.gz`` (metric names: ``dice_csf`` ...).
TISSUE_CLASSES: dict[int, str] = {1: "csf", 2: "gm", 3: "wm"}
#: Segment labels written into DICOM SEG objects.
TISSUE_LABELS: dict[int, str] = {1: "CSF and other brain tissue", 2: "Grey matter", 3: "White matter"}
#: SNOMED CT codes of the segments in DICOM SEG objects (recorded in the bundle's metadata.json,
#: ``dicom_segment_codes``). Label 1 holds the CSF and the little non-grey/non-white tissue inside the
#: brain mask; it is coded as cerebrospinal fluid, its main content.
TISSUE_SEGMENT_CODES: dict[int, SegmentCode] = {1: CEREBROSPINAL_FLUID, 2: GREY_MATTER, 3: WHITE_MATTER}


class SegmentationMetrics(_SegmentationMetrics):
    """:class:`medmamba.handlers.SegmentationMetrics` with the bundle's tissue classes by default.

    Args:
        class_names: foreground class index -> name (default :data:`TISSUE_CLASSES`).
        args, kwargs: the other arguments of :class:`medmamba.handlers.SegmentationMetrics`
            (``hd95``, ``prefix``, ``output_dir``, ``extra``...).
    """

    def __init__(self, class_names: Mapping[int, str] | None = None, *args: Any, **kwargs: Any) -> None:
        super().__init__(TISSUE_CLASSES if class_names is None else class_names, *args, **kwargs)


def collate_slices(batch: Sequence[Any]) -> Any:
    """Collate 2.5D training samples of volumes whose padded in-plane sizes may differ.

    ``SliceStackd`` turns each volume into a list of slice samples; this flattens those lists (as
    ``monai.data.list_data_collate`` does) and then pads every sample to the largest in-plane size of
    the batch (``monai.data.pad_list_data_collate``), so volumes padded to different multiples of 64
    can share a batch.

    Args:
        batch: the items of one batch (dicts, or lists of dicts from multi-sample transforms).

    Returns:
        The collated batch.
    """
    from monai.data import pad_list_data_collate

    flat = [s for item in batch for s in (item if isinstance(item, list) else [item])]
    return pad_list_data_collate(flat)


# ---------------------------------------------------------------------------------------------- inference
def segment(
    input_path: str | os.PathLike[str],
    output_dir: str | os.PathLike[str],
    predictor: Callable[[torch.Tensor], torch.Tensor],
    preprocessing: Any,
    labels: Mapping[int, str] | None = None,
    device: str | torch.device = "cpu",
    write_probabilities: bool = False,
    write_seg: bool = True,
    segment_codes: Mapping[int, SegmentCode] | None = None,
    anonymous_seg: bool = False,
    write_brain_mask: bool = True,
    brain_volume_range_ml: Sequence[float] | None = (700.0, 2200.0),
    keep_largest_component: bool = True,
    brain_opening_mm: float = 0.0,
    refiner: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
) -> dict[str, Any]:
    """Segment every scan under ``input_path`` and write the masks in each input's geometry.

    Per case ``<output_dir>/<case>/<case>_seg.nii.gz`` (the mask on the input's voxel grid, with its
    affine, whatever the voxel size the network ran at), ``<case>_brain_mask.nii.gz`` (0/1: the
    tissue labels, their largest connected component, holes filled; for skull stripping), for DICOM
    input also ``<case>_seg.dcm`` (a DICOM SEG referencing the source series), optionally
    ``<case>_prob.nii.gz``; and ``segmentation.csv``/``.json`` reports (failed cases are recorded
    there with their reason, the others go on; ``brain_volume_ml``; ``contrast_polarity``:
    ``inverted`` where the predictor's contrast-polarity check analysed a T2-like scan inverted, else
    ``given`` (:func:`medmamba.inferers.analysed_polarity`); and ``warnings``: scan plausibility flags
    from the preprocessing and a brain volume outside ``brain_volume_range_ml``).

    Args:
        input_path: see :func:`find_scans`.
        output_dir: output folder.
        predictor: e.g. :class:`VolumeSegmenter`.
        preprocessing: the invertible preprocessing, starting by loading ``"image"``.
        labels: segment number -> name (default :data:`TISSUE_LABELS`).
        device: device of the predictor's input.
        write_probabilities: also write class probabilities.
        write_seg: write DICOM SEG for DICOM inputs.
        segment_codes: segment number -> SNOMED CT code in the DICOM SEG (default: those of
            :data:`TISSUE_SEGMENT_CODES` whose label in ``labels`` is the default one; a segment
            without a code is coded as generic "Tissue", with a warning).
        anonymous_seg: empty the Type 2 patient/study identifiers of the SEG.
        write_brain_mask: write the brain mask and report the brain volume.
        brain_volume_range_ml: plausible ``(low, high)`` brain volume in ml (``None``: not checked);
            outside it the case is flagged in its ``warnings``, not failed.
        keep_largest_component: set tissue labels outside the largest connected component of the
            brain (the union of ``labels``) to background before writing
            (:class:`medmamba.transforms.KeepBrainComponent`; islands in the scalp, eyes or neck).
        brain_opening_mm: detach tissue joined to the brain by bridges thinner than about twice this
            radius in mm (face, tongue and neck reached through the brainstem) before the largest
            component is taken, for the brain mask and ``keep_largest_component``
            (:func:`medmamba.transforms.detach_brain`; 0: none).
        refiner: applied to the probabilities on the input's grid with the scan as loaded (the
            preprocessing keeps it under ``"source_image"``), e.g.
            :class:`medmamba.transforms.TissueIntensityRefine`; ``None``: no refinement.

    Returns:
        ``{"n_ok", "n_failed", "report", "failed", "seconds"}``.
    """
    from medmamba.apps.pipeline import segment_scans

    if input_path is None:
        raise ValueError("input_path is required: a NIfTI file, a DICOM series folder or a folder of them (--input_path ...).")
    start = time.perf_counter()
    cases = find_scans(input_path)
    tissue = sorted(int(k) for k in (labels or TISSUE_LABELS))  # the labels that make up the brain
    logger.info("segmenting %d case(s) from %s into %s", len(cases), os.fspath(input_path), os.fspath(output_dir))
    report = segment_scans(
        cases,
        predictor,
        output_dir,
        preprocessing,
        dict(labels or TISSUE_LABELS),
        segment_codes=_segment_codes(labels, segment_codes),
        write_probabilities=write_probabilities,
        write_seg=write_seg,
        anonymous_seg=anonymous_seg,
        device=device,
        brain_labels=tissue if write_brain_mask else None,
        brain_volume_range_ml=brain_volume_range_ml if write_brain_mask else None,
        keep_components=tissue if keep_largest_component else None,
        brain_opening_mm=brain_opening_mm,
        refiner=refiner,
    )
    summary = report.summary(time.perf_counter() - start)
    logger.info("segmentation: %d ok, %d failed (%.1f s); report %s", report.n_ok, report.n_failed, summary["seconds"], report.csv_path)
    return summary


def _segment_codes(
    labels: Mapping[int, str] | None, segment_codes: Mapping[int, SegmentCode] | None
) -> dict[int, SegmentCode]:
    """The given codes, or the default tissue codes of the labels that keep their default names."""
    if segment_codes is not None:
        return {int(k): v for k, v in segment_codes.items()}
    names = TISSUE_LABELS if labels is None else {int(k): v for k, v in labels.items()}
    return {k: code for k, code in TISSUE_SEGMENT_CODES.items() if names.get(k) == TISSUE_LABELS[k]}
