"""Scans in, predictions out: batch segmentation and classification over DICOM/NIfTI inputs.

Both functions run on :func:`medmamba.data.batch.run_batch` (a failing case is recorded and the
batch goes on) and take any ``predictor``: a callable from a batched, preprocessed image
``(1, C, *spatial)`` to logits or probabilities (``(1, K, *spatial)`` for segmentation, ``(1, K)``
for classification), e.g. a MobileMamba network in eval mode or a MONAI sliding-window inferer.

Per case, segmentation writes ``<case>/<case>_seg.nii.gz`` (labels on the input's grid), optionally
``<case>_prob.nii.gz`` (probabilities) and, for DICOM inputs, ``<case>_seg.dcm`` (a DICOM SEG that
references the source series); classification adds ``label``/``probabilities`` to the report.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import torch
from monai.data import MetaTensor
from monai.transforms import Compose

from medmamba.data.batch import BatchCase, BatchReport, run_batch
from medmamba.data.loading import is_nifti_path
from medmamba.io.dicom_seg import write_dicom_seg
from medmamba.io.prediction import invert_prediction, write_mask_nifti, write_probabilities_nifti

__all__ = ["Predictor", "classify_scans", "segment_scans"]

Predictor = Callable[[torch.Tensor], torch.Tensor]


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


def segment_scans(
    cases: Iterable[str | os.PathLike[str] | Mapping[str, Any]],
    predictor: Predictor,
    out_dir: str | os.PathLike[str],
    preprocessing: Compose,
    labels: Mapping[int, str],
    *,
    image_key: str = "image",
    outputs_logits: bool = True,
    write_probabilities: bool = False,
    write_seg: bool = True,
    anonymous_seg: bool = False,
    device: str | torch.device = "cpu",
    report_name: str = "segmentation",
) -> BatchReport:
    """Segment every case and write the results in each input's own geometry.

    Args:
        cases: Input paths or datalist items with ``image_key``.
        predictor: Batched image -> ``(1, K, *spatial)`` logits (or probabilities).
        out_dir: Output folder.
        preprocessing: Invertible MONAI pipeline that starts by loading ``image_key`` (e.g.
            :func:`medmamba.transforms.scan_preprocessing`).
        labels: Label value -> name for the non-background classes (used by DICOM SEG and the report).
        image_key: Key of the image.
        outputs_logits: Apply softmax (sigmoid for one channel) to the predictor's output.
        write_probabilities: Also write the probabilities (float32 NIfTI).
        write_seg: Write a DICOM SEG for DICOM inputs.
        anonymous_seg: Empty the Type 2 patient/study identifiers of the SEG.
        device: Device for the predictor's input.
        report_name: Base name of the report files.

    Returns:
        The batch report (per case: output files and voxel counts per label).
    """

    def process(case: BatchCase) -> dict[str, Any]:
        data = _prepare(case, preprocessing, image_key)
        img = data[image_key]
        with torch.no_grad():
            out = predictor(img.as_tensor()[None].to(device) if isinstance(img, MetaTensor) else img[None].to(device))
        probs = _probabilities(out, outputs_logits)[0].cpu()
        if tuple(probs.shape[1:]) != tuple(img.shape[1:]):
            raise ValueError(f"predictor output spatial shape {tuple(probs.shape[1:])} != input {tuple(img.shape[1:])}")
        data["pred"] = torch.argmax(probs, dim=0, keepdim=True).to(torch.float32)
        mask = invert_prediction(data, preprocessing, "pred", image_key, nearest=True)
        outputs = {"seg_nifti": write_mask_nifti(case.out_dir / f"{case.case_id}_seg.nii.gz", mask).name}
        if write_probabilities:
            data["prob"] = probs
            inv = invert_prediction(data, preprocessing, "prob", image_key, nearest=False)
            outputs["prob_nifti"] = write_probabilities_nifti(case.out_dir / f"{case.case_id}_prob.nii.gz", inv).name
        if write_seg and not is_nifti_path(case.input):
            uid = str(mask.meta.get("series_instance_uid", "") or "") or None
            outputs["seg_dicom"] = write_dicom_seg(
                case.out_dir / f"{case.case_id}_seg.dcm",
                mask.numpy().round().astype("int64"),
                case.input,
                {int(k): v for k, v in labels.items()},
                series_uid=uid,
                anonymous=anonymous_seg,
            ).name
        counts = torch.bincount(mask.as_tensor().flatten().round().long(), minlength=max(labels, default=0) + 1)
        return {"outputs": outputs, "voxels": {str(i): int(c) for i, c in enumerate(counts.tolist())}}

    return run_batch(cases, process, out_dir, input_key=image_key, report_name=report_name)


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

    return run_batch(cases, process, out_dir, input_key=image_key, report_name=report_name)
