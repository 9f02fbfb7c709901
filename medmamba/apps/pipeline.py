"""Scans in, predictions out: batch segmentation and classification over DICOM/NIfTI inputs.

Both functions run on :func:`medmamba.data.batch.run_batch` (a failing case is recorded and the
batch goes on; under ``torchrun`` with an initialised process group the cases are split over the
ranks and rank 0 merges the reports, :func:`medmamba.data.distributed_batch.run_batch_distributed`)
and take any ``predictor``: a callable from a batched, preprocessed image
``(1, C, *spatial)`` to logits or probabilities (``(1, K, *spatial)`` for segmentation, ``(1, K)``
for classification), e.g. a MobileMamba network in eval mode or a MONAI sliding-window inferer.

Per case, segmentation writes ``<case>/<case>_seg.nii.gz`` (labels on the input's grid), optionally
``<case>_prob.nii.gz`` (probabilities), ``<case>_brain_mask.nii.gz`` (a 0/1 brain mask) and, for
DICOM inputs, ``<case>_seg.dcm`` (a DICOM SEG that references the source series); classification
adds ``label``/``probabilities`` to the report.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import torch
from monai.data import MetaTensor
from monai.transforms import Compose

from medmamba.data.batch import BatchCase, BatchReport
from medmamba.data.distributed_batch import run_batch_distributed
from medmamba.data.loading import is_nifti_path
from medmamba.io.dicom_seg import write_dicom_seg
from medmamba.io.segment_codes import SegmentCode
from medmamba.io.geometry import voxel_volume_ml
from medmamba.io.prediction import invert_prediction, write_mask_nifti, write_probabilities_nifti
from medmamba.inferers.contrast_polarity import analysed_polarity
from medmamba.transforms.brain_mask import BrainMask, KeepBrainComponent
from medmamba.transforms.label_map import channel_argmax
from medmamba.transforms.stripped_input import BRAIN_SOURCE_KEY

__all__ = ["Predictor", "brain_transforms", "brain_volume_warning", "classify_scans", "segment_scans"]

Predictor = Callable[[torch.Tensor], torch.Tensor]

logger = logging.getLogger(__name__)


def brain_volume_warning(volume_ml: float, volume_range_ml: Sequence[float], what: str = "predicted brain volume",
                         consequence: str = "") -> str | None:
    """The warning for a brain volume outside its plausible range, or ``None`` inside it.

    Args:
        volume_ml: the brain's volume in ml.
        volume_range_ml: plausible ``(low, high)`` in ml (bounds included).
        what: what the volume is, as the warning names it (the segmentation's predicted brain, the
            classifier's extracted brain).
        consequence: appended to the warning (e.g. what the result then covers).

    Returns:
        ``"<what> <volume> ml is outside the plausible <low>-<high> ml: not a whole brain, or not a brain
        MR<consequence>"``, or ``None``.
    """
    low, high = (float(v) for v in volume_range_ml)
    if low <= volume_ml <= high:
        return None
    return (f"{what} {volume_ml:.0f} ml is outside the plausible {low:.0f}-{high:.0f} ml: not a whole brain, "
            f"or not a brain MR{consequence}")


def _probabilities(out: torch.Tensor, outputs_logits: bool) -> torch.Tensor:
    out = torch.as_tensor(out).float()
    if not outputs_logits:
        return out
    if out.shape[1] == 1:
        return torch.cat([1 - torch.sigmoid(out), torch.sigmoid(out)], dim=1)
    return torch.softmax(out, dim=1)


def _prepare(case: BatchCase, preprocessing: Compose, image_key: str) -> dict[str, Any]:
    data = preprocessing({image_key: os.fspath(case.input)})
    if not isinstance(data, Mapping) or image_key not in data:
        raise TypeError("preprocessing must return a dict holding the image key")
    return dict(data)


def brain_transforms(
    brain_labels: Sequence[int] | None, keep_components: Sequence[int] | None, opening_mm: float = 0.0
) -> tuple[KeepBrainComponent | None, BrainMask | None]:
    """The clean-up of the label map and the brain mask of :func:`segment_scans`.

    When the clean-up keeps the detached brain of the same labels as the mask, the mask is that
    brain with its holes filled (no second opening: the opening costs seconds on a 1 mm head, and on
    the 136 validation cases of segmentation 0.6.9, the shift suite and the registry scans, the second
    opening changed no voxel).

    Args:
        brain_labels: labels of the brain mask (``None``: no mask).
        keep_components: labels whose largest component the clean-up keeps (``None``: no clean-up).
        opening_mm: radius of the opening that detaches face and neck (:func:`medmamba.transforms.detach_brain`).

    Returns:
        ``(cleaner, masker)``, each ``None`` when not asked for.
    """
    cleaner = None if keep_components is None else KeepBrainComponent(labels=list(keep_components), opening_mm=opening_mm)
    if brain_labels is None:
        return cleaner, None
    same_brain = cleaner is not None and set(brain_labels) == set(keep_components or ())
    return cleaner, BrainMask(labels=list(brain_labels), opening_mm=0.0 if same_brain else opening_mm)


def segment_scans(
    cases: Iterable[str | os.PathLike[str] | Mapping[str, Any]],
    predictor: Predictor,
    out_dir: str | os.PathLike[str],
    preprocessing: Compose,
    labels: Mapping[int, str],
    *,
    segment_codes: Mapping[int, SegmentCode] | None = None,
    image_key: str = "image",
    outputs_logits: bool = True,
    write_probabilities: bool = False,
    write_seg: bool = True,
    anonymous_seg: bool = False,
    device: str | torch.device = "cpu",
    report_name: str = "segmentation",
    brain_labels: Sequence[int] | None = None,
    brain_volume_range_ml: Sequence[float] | None = None,
    keep_components: Sequence[int] | None = None,
    brain_opening_mm: float = 0.0,
    warnings_key: str = "scan_warnings",
    weighting_key: str = "scan_weighting",
    refiner: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    | Sequence[Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None]
    | None = None,
    source_key: str = "source_image",
) -> BatchReport:
    """Segment every case and write the results in each input's own geometry.

    The class probabilities are mapped back to the input's grid (``Invertd``: crop, padding,
    resampling and orientation undone, probabilities interpolated linearly) before the arg-max, so
    the label map has the input's exact shape and affine whatever its voxel size.

    Args:
        cases: Input paths or datalist items with ``image_key``.
        predictor: Batched image -> ``(1, K, *spatial)`` logits (or probabilities).
        out_dir: Output folder.
        preprocessing: Invertible MONAI pipeline that starts by loading ``image_key`` (e.g.
            :func:`medmamba.transforms.scan_preprocessing`).
        labels: Label value -> name for the non-background classes (used by DICOM SEG and the report).
        segment_codes: Label value -> SNOMED CT code of the segment in the DICOM SEG
            (:mod:`medmamba.io.segment_codes`); a label without one is coded as generic "Tissue".
        image_key: Key of the image.
        outputs_logits: Apply softmax (sigmoid for one channel) to the predictor's output.
        write_probabilities: Also write the probabilities (float32 NIfTI).
        write_seg: Write a DICOM SEG for DICOM inputs.
        anonymous_seg: Empty the Type 2 patient/study identifiers of the SEG.
        device: Device for the predictor's input.
        report_name: Base name of the report files.
        brain_labels: Labels that make up the brain: when given, also write
            ``<case>_brain_mask.nii.gz`` (0/1 on the input's grid: these labels, their largest
            connected component, holes filled; :class:`medmamba.transforms.BrainMask`; with
            ``keep_components`` of the same labels, the written segmentation's brain, holes filled)
            and report ``brain_volume_ml``.
        brain_volume_range_ml: Plausible ``(low, high)`` brain volume in ml; a case outside it is
            flagged in its ``warnings`` (still written, not failed). Needs ``brain_labels``.
        keep_components: Labels whose union's largest connected component is kept: labelled voxels
            outside it become background before anything is written
            (:class:`medmamba.transforms.KeepBrainComponent`); ``None`` keeps the arg-max as it is.
        brain_opening_mm: before the largest component is taken (brain mask and ``keep_components``),
            detach tissue joined to the brain by bridges thinner than about twice this radius in mm
            (:func:`medmamba.transforms.detach_brain`; 0: none).
        warnings_key: Key under which the preprocessing leaves a list of warnings about the scan
            (:class:`medmamba.transforms.CheckScand`); they go into the case's ``warnings``.
        weighting_key: Key under which the preprocessing leaves the scan's MR weighting
            (:class:`medmamba.transforms.CheckMRWeightingd`); it goes into the case's ``weighting``
            (empty without it).
        refiner: Applied to the probabilities on the input's grid with the scan as loaded, before
            the arg-max (e.g. :class:`medmamba.transforms.TissueIntensityRefine`: detail finer than
            the network's spacing from the scan's own intensities); a sequence: applied in order
            (``None`` entries skipped, e.g. :class:`medmamba.transforms.StrippedInputBrain` first);
            ``None``: no refinement. A ``"brain_source"`` that one leaves in the probabilities'
            metadata is reported per case (``brain_source``; ``"network"`` otherwise).
        source_key: Key under which the preprocessing keeps a copy of the scan as loaded (a
            ``CopyItemsd`` right after loading); needed by ``refiner``. Not ``"<image_key>_..."``:
            MONAI's ``Spacingd`` takes such keys for metadata dictionaries.

    Returns:
        The batch report (per case: output files, voxel counts per label, ``weighting``,
        ``contrast_polarity`` (:func:`medmamba.inferers.analysed_polarity` of ``predictor``),
        ``warnings`` (sentences joined by "; ", empty when none) and with ``brain_labels`` the brain volume).
    """
    if brain_volume_range_ml is not None:
        if brain_labels is None:
            raise ValueError("brain_volume_range_ml needs brain_labels (the labels whose volume is checked).")
        if len(brain_volume_range_ml) != 2 or not float(brain_volume_range_ml[0]) < float(brain_volume_range_ml[1]):
            raise ValueError(f"brain_volume_range_ml must be a (low, high) range in ml, got {brain_volume_range_ml!r}.")
    cleaner, brain_masker = brain_transforms(brain_labels, keep_components, brain_opening_mm)
    if refiner is None or callable(refiner):
        refiners = [] if refiner is None else [refiner]
    else:
        refiners = [step for step in refiner if step is not None]
        if not all(callable(step) for step in refiners):
            raise TypeError(f"refiner must be a callable (prob, image) -> prob, a sequence of them or None, got {refiner!r}.")

    def process(case: BatchCase) -> dict[str, Any]:
        data = _prepare(case, preprocessing, image_key)
        img = data[image_key]
        warnings = [str(w) for w in (data.get(warnings_key) or [])]
        with torch.no_grad():
            out = predictor(img.as_tensor()[None].to(device) if isinstance(img, MetaTensor) else img[None].to(device))
        probs = _probabilities(out, outputs_logits)[0].cpu()
        if tuple(probs.shape[1:]) != tuple(img.shape[1:]):
            raise ValueError(f"predictor output spatial shape {tuple(probs.shape[1:])} != input {tuple(img.shape[1:])}")
        data["prob"] = probs
        inv = invert_prediction(data, preprocessing, "prob", image_key, nearest=False)
        if refiners:
            if source_key not in data:
                raise KeyError(f"refiner needs the scan as loaded under source_key={source_key!r}: add "
                               f"CopyItemsd(keys={image_key!r}, names={source_key!r}) right after loading in the "
                               f"preprocessing; the data hold {sorted(map(str, data))}")
            source = data.pop(source_key)
            if tuple(source.shape[1:]) != tuple(inv.shape[1:]):
                raise ValueError(f"{source_key!r} has spatial shape {tuple(source.shape[1:])}, the inverted "
                                 f"probabilities {tuple(inv.shape[1:])}: copy the scan before any spatial transform")
            for step in refiners:
                inv = step(inv, source)
        brain_source = str(inv.meta.get(BRAIN_SOURCE_KEY, "network")) if isinstance(inv, MetaTensor) else "network"
        mask = MetaTensor(channel_argmax(inv.as_tensor()).to(torch.float32), affine=inv.affine,
                          meta=dict(inv.meta))
        if cleaner is not None:
            mask = cleaner(mask)
        outputs = {"seg_nifti": write_mask_nifti(case.out_dir / f"{case.case_id}_seg.nii.gz", mask).name}
        if write_probabilities:
            outputs["prob_nifti"] = write_probabilities_nifti(case.out_dir / f"{case.case_id}_prob.nii.gz", inv).name
        del inv, data["prob"]
        extra: dict[str, Any] = {"brain_source": brain_source}
        if brain_masker is not None:
            brain = brain_masker(mask)
            brain_path = case.out_dir / f"{case.case_id}_brain_mask.nii.gz"
            outputs["brain_mask_nifti"] = write_mask_nifti(brain_path, brain).name
            extra["brain_volume_ml"] = round(float(brain.sum()) * voxel_volume_ml(mask.affine), 1)
            flag = None if brain_volume_range_ml is None else brain_volume_warning(extra["brain_volume_ml"], brain_volume_range_ml)
            if flag is not None:
                warnings.append(flag)
        if write_seg and not is_nifti_path(case.input):
            uid = str(mask.meta.get("series_instance_uid", "") or "") or None
            outputs["seg_dicom"] = write_dicom_seg(
                case.out_dir / f"{case.case_id}_seg.dcm",
                mask.numpy().round().astype("int64"),
                case.input,
                {int(k): v for k, v in labels.items()},
                segment_codes=None if segment_codes is None else {int(k): v for k, v in segment_codes.items()},
                series_uid=uid,
                anonymous=anonymous_seg,
            ).name
        counts = torch.bincount(mask.as_tensor().flatten().round().long(), minlength=max(labels, default=0) + 1)
        for w in warnings:
            logger.warning("case %s: %s", case.case_id, case.redact(w))
        return {"outputs": outputs, "voxels": {str(i): int(c) for i, c in enumerate(counts.tolist())}, **extra,
                "weighting": str(data.get(weighting_key) or ""), "contrast_polarity": analysed_polarity(predictor),
                "warnings": "; ".join(warnings)}

    return run_batch_distributed(cases, process, out_dir, input_key=image_key, report_name=report_name)


def classify_scans(
    cases: Iterable[str | os.PathLike[str] | Mapping[str, Any]],
    predictor: Predictor,
    out_dir: str | os.PathLike[str],
    preprocessing: Compose,
    class_names: Sequence[str],
    *,
    image_key: str = "image",
    outputs_logits: bool = True,
    device: str | torch.device = "cpu",
    report_name: str = "classification",
) -> BatchReport:
    """Classify every case; results go to ``<report_name>.csv``/``.json``.

    Args:
        cases: Input paths or datalist items with ``image_key``.
        predictor: Batched image -> ``(1, K)`` logits (or probabilities).
        out_dir: Output folder.
        preprocessing: MONAI pipeline that starts by loading ``image_key``.
        class_names: Name of each class index.
        image_key: Key of the image.
        outputs_logits: Apply softmax (sigmoid for one output) to the predictor's output.
        device: Device for the predictor's input.
        report_name: Base name of the report files.

    Returns:
        The batch report (per case: ``label``, ``class_name``, ``probabilities``).
    """

    def process(case: BatchCase) -> dict[str, Any]:
        data = _prepare(case, preprocessing, image_key)
        img = data[image_key]
        with torch.no_grad():
            out = predictor(img.as_tensor()[None].to(device) if isinstance(img, MetaTensor) else img[None].to(device))
        probs = _probabilities(torch.as_tensor(out).reshape(1, -1), outputs_logits)[0].cpu()
        if probs.numel() != len(class_names):
            raise ValueError(f"predictor gave {probs.numel()} scores for {len(class_names)} classes")
        label = int(torch.argmax(probs))
        return {"label": label, "class_name": class_names[label], "probabilities": [round(float(p), 6) for p in probs]}

    return run_batch_distributed(cases, process, out_dir, input_key=image_key, report_name=report_name)
