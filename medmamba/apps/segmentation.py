"""Support code of the ``mobilemamba_segmentation`` bundle (2.5D brain-tissue segmentation).

The bundle's configs (``bundles/mobilemamba_segmentation/configs``) build everything from MONAI and
medmamba components; this module holds the few pieces that have no ready-made counterpart:

- :class:`FusedMobileMambaSeg`: a :class:`medmamba.apps.deploy.FuseOnLoad` around
  ``MobileMambaSeg`` (BatchNorms folded as soon as its unfused weights are loaded, so that
  ``python -m monai.bundle ckpt_export`` writes the *fused* network); :func:`load_network` (the
  network for inference, from a checkpoint or an exported TorchScript file) and :func:`export_onnx`
  (the fused network to ONNX, both exported files checked against the eager fused network) come
  from :mod:`medmamba.apps.deploy`;
- :class:`VolumeSegmenter` and :func:`segment`: volumes in (found by :func:`medmamba.data.find_scans`),
  masks out, in the input's geometry (NIfTI, and DICOM SEG for DICOM input), one failing case
  never stops the batch;
- :class:`SegmentationMetrics`: per-class Dice and HD95 (mm) per case, flattened into
  ``engine.state.metrics`` and written as a flat JSON (plus a per-case CSV).
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from medmamba.apps.deploy import FuseOnLoad, VolumePredictor, export_onnx, load_network
from medmamba.data.discovery import find_scans
from medmamba.io.segment_codes import CEREBROSPINAL_FLUID, GREY_MATTER, WHITE_MATTER, SegmentCode
from medmamba.training.amp import Autocast  # re-exported: older configs name it here

if TYPE_CHECKING:
    from ignite.engine import Engine

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


# --------------------------------------------------------------------------------------------- networks
class FusedMobileMambaSeg(FuseOnLoad):
    """:class:`FuseOnLoad` around ``MobileMambaSeg(variant, **kwargs)``.

    Takes ``MobileMambaSeg``'s own arguments, so a bundle override such as ``--network_def#variant s6``
    works in ``inference.json`` as in ``train.json``.
    """

    def __init__(self, variant: str | None = "t2", strict: bool = True, **kwargs: Any) -> None:
        from medmamba.networks import MobileMambaSeg

        super().__init__(MobileMambaSeg(variant, **kwargs), strict=strict)


class FlipTTAInferer:
    """Test-time augmentation: average the class probabilities of the volume and its mirror images.

    Runs ``inferer`` on the input and on the input flipped along each of ``spatial_axes`` (flipped
    back afterwards), averages the softmax probabilities and returns their logarithm, so that a
    softmax (or an argmax) downstream gives the averaged probabilities (or their arg-max). Usable
    wherever an inferer is (``SupervisedEvaluator``, :class:`VolumeSegmenter`).

    Args:
        inferer: the inferer to wrap, e.g. :class:`medmamba.inferers.SliceStackInferer`.
        spatial_axes: spatial axes to mirror (0 is the first spatial axis; for RAS volumes 0 is
            left-right). Empty: no augmentation, the wrapped inferer's logits are returned as they are.
    """

    def __init__(self, inferer: Callable[..., Any], spatial_axes: Sequence[int] = (0,)) -> None:
        if not callable(inferer):
            raise TypeError(f"inferer must be callable, got {type(inferer).__name__}.")
        axes = [int(a) for a in spatial_axes]
        if any(a < 0 for a in axes) or len(set(axes)) != len(axes):
            raise ValueError(f"spatial_axes must be distinct non-negative spatial axes, got {spatial_axes!r}.")
        self.inferer = inferer
        self.spatial_axes = axes

    def __call__(self, inputs: torch.Tensor, network: Callable[..., Any], *args: Any, **kwargs: Any) -> torch.Tensor:
        n_spatial = inputs.ndim - 2
        if any(a >= n_spatial for a in self.spatial_axes):
            raise ValueError(f"spatial_axes {self.spatial_axes} do not fit the {n_spatial} spatial dims of the input.")
        out = self.inferer(inputs, network, *args, **kwargs)
        if not self.spatial_axes:
            return out
        probs = torch.softmax(out.float(), dim=1)
        for axis in self.spatial_axes:
            dim = 2 + axis
            flipped = self.inferer(inputs.flip(dim), network, *args, **kwargs)
            probs = probs + torch.softmax(flipped.float(), dim=1).flip(dim)
        probs = probs / (1 + len(self.spatial_axes))
        return torch.log(probs.clamp_min(1e-12))


class VolumeSegmenter(VolumePredictor):
    """A predictor for :func:`medmamba.io.pipeline.segment_scans`: volume in, logit volume out.

    Args:
        network: a 2D network taking ``2k + 1``-slice stacks (eager or TorchScript).
        inferer: e.g. :class:`medmamba.inferers.SliceStackInferer`; any ``inferer(x, network)``.
        device: where the network runs (the volume is moved there).
    """

    def __call__(self, volume: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, K, H, W, D)`` of a batch of volumes ``(B, C, H, W, D)``."""
        return self.predict(volume)


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
    refiner: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
) -> dict[str, Any]:
    """Segment every scan under ``input_path`` and write the masks in each input's geometry.

    Per case ``<output_dir>/<case>/<case>_seg.nii.gz`` (the mask on the input's voxel grid, with its
    affine, whatever the voxel size the network ran at), ``<case>_brain_mask.nii.gz`` (0/1: the
    tissue labels, their largest connected component, holes filled; for skull stripping), for DICOM
    input also ``<case>_seg.dcm`` (a DICOM SEG referencing the source series), optionally
    ``<case>_prob.nii.gz``; and ``segmentation.csv``/``.json`` reports (failed cases are recorded
    there with their reason, the others go on; ``brain_volume_ml`` and ``warnings``: scan
    plausibility flags from the preprocessing and a brain volume outside ``brain_volume_range_ml``).

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
        refiner: applied to the probabilities on the input's grid with the scan as loaded (the
            preprocessing keeps it under ``"source_image"``), e.g.
            :class:`medmamba.transforms.TissueIntensityRefine`; ``None``: no refinement.

    Returns:
        ``{"n_ok", "n_failed", "report", "failed", "seconds"}``.
    """
    from medmamba.io.pipeline import segment_scans

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


# ------------------------------------------------------------------------------------------------ metrics
def _spacing(img: Any, ndim: int) -> list[float] | None:
    affine = getattr(img, "affine", None)
    if affine is None:
        return None
    a = torch.as_tensor(affine, dtype=torch.float64)
    if a.shape[-1] < ndim + 1:
        return None
    return [float(v) for v in torch.linalg.norm(a[:ndim, :ndim], dim=0)]


def _one_hot(t: torch.Tensor, num_classes: int) -> torch.Tensor:
    t = torch.as_tensor(t).detach().cpu()
    if hasattr(t, "as_tensor"):
        t = t.as_tensor()
    if t.shape[0] == num_classes:
        return t.float()
    if t.shape[0] != 1:
        raise ValueError(f"expected a label map (1, *spatial) or one-hot ({num_classes}, *spatial), got {tuple(t.shape)}.")
    return torch.nn.functional.one_hot(t[0].round().long().clamp(0, num_classes - 1), num_classes).movedim(-1, 0).float()


def _finite_mean(values: Sequence[float]) -> float:
    vals = [v for v in values if v is not None and math.isfinite(v)]
    return float(np.mean(vals)) if vals else float("nan")


class SegmentationMetrics:
    """Ignite handler: Dice and HD95 per class and per case, their means, and their JSON/CSV files.

    Reads ``engine.state.output`` after the evaluator's post-processing (a list of per-case dicts
    with ``pred`` and ``label``, label maps ``(1, *spatial)`` or one-hot), computes per case and per
    foreground class the Dice (MONAI ``compute_dice``) and, with ``hd95``, the 95th-percentile
    Hausdorff distance in mm (MONAI ``compute_hausdorff_distance`` with the voxel spacing read from
    the prediction's affine), and at the end of the epoch puts scalars into
    ``engine.state.metrics``: ``<prefix>dice_<class>``, ``<prefix>mean_dice`` (mean over classes of
    the per-class means over cases), ``<prefix>hd95_<class>``, ``<prefix>mean_hd95``. Under
    ``torch.distributed`` the per-case rows of all ranks are gathered first, back in input order
    (the ranks' shares as MONAI's ``DistributedSampler(shuffle=False, even_divisible=False)`` splits
    them; :func:`medmamba.data.distributed_batch.all_gather_in_order`).

    Attach it before the stats / TensorBoard / checkpoint handlers so that they see its metrics.

    Args:
        class_names: foreground class index -> name (default :data:`TISSUE_CLASSES`).
        hd95: also compute HD95 (slower: distance transforms).
        prefix: metric name prefix (e.g. ``"val_"``).
        output_dir: when given, rank 0 writes ``<output_dir>/<metrics_filename>`` (a flat JSON of the
            metrics plus ``extra``, ``num_cases`` and ``wall_time_s``, seconds since this handler was
            built) and ``<output_dir>/<per_case_filename>`` at the end of each epoch.
        extra: more entries for the JSON (e.g. ``{"checkpoint": ...}``).
        id_key: batch key of the case id.
        metrics_filename: file name of the JSON.
        per_case_filename: file name of the per-case CSV (``None``: not written).
    """

    def __init__(
        self,
        class_names: Mapping[int, str] | None = None,
        hd95: bool = True,
        prefix: str = "",
        output_dir: str | os.PathLike[str] | None = None,
        extra: Mapping[str, Any] | None = None,
        id_key: str = "id",
        metrics_filename: str = "metrics.json",
        per_case_filename: str | None = "metrics_per_case.csv",
    ) -> None:
        names = dict(TISSUE_CLASSES if class_names is None else class_names)
        if not names or any(int(k) < 1 for k in names):
            raise ValueError(f"class_names must map foreground class indices (>= 1) to names, got {names!r}.")
        self.class_names = {int(k): str(v) for k, v in sorted(names.items())}
        self.num_classes = max(self.class_names) + 1
        self.hd95 = bool(hd95)
        self.prefix = str(prefix)
        self.output_dir = None if output_dir is None else Path(output_dir)
        self.extra = dict(extra or {})
        self.id_key = id_key
        self.metrics_filename = metrics_filename
        self.per_case_filename = per_case_filename
        self.rows: list[dict[str, Any]] = []
        self.metrics: dict[str, float] = {}
        self._t0 = time.perf_counter()

    def attach(self, engine: Engine) -> None:
        """Register on ``EPOCH_STARTED`` (reset), ``ITERATION_COMPLETED`` and ``EPOCH_COMPLETED``."""
        from ignite.engine import Events

        engine.add_event_handler(Events.EPOCH_STARTED, self.reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self.update)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self.complete)

    def reset(self, engine: Engine | None = None) -> None:
        """Forget the cases of the previous epoch."""
        self.rows = []

    def case_metrics(self, pred: torch.Tensor, label: torch.Tensor) -> dict[str, float]:
        """Dice (and HD95 in mm) per class of one case (label maps or one-hot, channel first)."""
        from monai.metrics import compute_dice, compute_hausdorff_distance

        p = _one_hot(pred, self.num_classes)[None]
        y = _one_hot(label, self.num_classes)[None]
        if p.shape != y.shape:
            raise ValueError(f"pred shape {tuple(p.shape)} != label shape {tuple(y.shape)}.")
        row: dict[str, float] = {}
        dice = compute_dice(p, y, include_background=True, ignore_empty=True)[0]
        for c, name in self.class_names.items():
            row[f"dice_{name}"] = float(dice[c])
        if self.hd95:
            spacing = _spacing(label, p.ndim - 2) or _spacing(pred, p.ndim - 2)
            named = list(self.class_names)  # only the reported classes (the background's is the costliest)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                hd = compute_hausdorff_distance(
                    p[:, named], y[:, named], include_background=True, percentile=95, spacing=spacing
                )[0]
            for j, name in enumerate(self.class_names.values()):
                row[f"hd95_{name}"] = float(hd[j])
        return row

    def update(self, engine: Engine) -> None:
        """Add the cases of the current iteration."""
        output = engine.state.output
        batch = engine.state.batch
        items = output if isinstance(output, list) else [output]
        batches = batch if isinstance(batch, list) else [batch] * len(items)
        for item, b in zip(items, batches):
            if not isinstance(item, Mapping) or "pred" not in item or "label" not in item:
                raise ValueError("SegmentationMetrics needs per-case dicts with 'pred' and 'label' in engine.state.output.")
            row: dict[str, Any] = {"id": str(b.get(self.id_key, len(self.rows))) if isinstance(b, Mapping) else str(len(self.rows))}
            row.update(self.case_metrics(item["pred"], item["label"]))
            self.rows.append(row)

    def _gather(self) -> list[dict[str, Any]]:
        from medmamba.data.distributed_batch import all_gather_in_order

        return all_gather_in_order(self.rows)

    def summarize(self, rows: Sequence[Mapping[str, Any]]) -> dict[str, float]:
        """The flat metrics of per-case rows (means over cases, ignoring undefined values)."""
        out: dict[str, float] = {}
        kinds = ("dice", "hd95") if self.hd95 else ("dice",)
        for kind in kinds:
            per_class = []
            for name in self.class_names.values():
                value = _finite_mean([r.get(f"{kind}_{name}", float("nan")) for r in rows])
                out[f"{self.prefix}{kind}_{name}"] = value
                per_class.append(value)
            out[f"{self.prefix}mean_{kind}"] = _finite_mean(per_class)
        return out

    def complete(self, engine: Engine | None = None) -> dict[str, float]:
        """Compute the epoch's metrics, store them in ``engine.state.metrics`` and write the files."""
        rows = self._gather()
        self.metrics = self.summarize(rows)
        if engine is not None:
            engine.state.metrics.update(self.metrics)
        rank0 = not (torch.distributed.is_available() and torch.distributed.is_initialized()) or torch.distributed.get_rank() == 0
        if self.output_dir is not None and rank0:
            self.write(rows)
        return self.metrics

    def write(self, rows: Sequence[Mapping[str, Any]]) -> Path:
        """Write the flat metrics JSON (and the per-case CSV) to ``output_dir``."""
        from medmamba.io.atomic import atomic_write_text
        from medmamba.io.results import write_results_csv

        if self.output_dir is None:
            raise ValueError("output_dir is not set.")
        self.output_dir.mkdir(parents=True, exist_ok=True)
        doc: dict[str, Any] = {k: (round(v, 6) if math.isfinite(v) else None) for k, v in self.metrics.items()}
        doc["num_cases"] = len(rows)
        doc.update({str(k): (os.fspath(v) if isinstance(v, os.PathLike) else v) for k, v in self.extra.items()})
        doc["wall_time_s"] = round(time.perf_counter() - self._t0, 2)
        path = self.output_dir / self.metrics_filename
        atomic_write_text(path, json.dumps(doc, indent=1) + "\n")
        if self.per_case_filename:
            write_results_csv(self.output_dir / self.per_case_filename, [dict(r) for r in rows])
        logger.info("metrics: %s -> %s", {k: doc[k] for k in self.metrics}, path)
        return path
