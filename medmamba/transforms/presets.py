"""Ready-made preprocessing pipelines built from MONAI transforms and this package's transforms.

``scan_preprocessing`` composes: load (:class:`LoadScand`), ``Orientationd`` to RAS, optional
resampling (:class:`AntiAliasedSpacingd`: MONAI's ``Spacingd`` after an anti-aliasing blur of the
image on the axes it makes coarser), ``CropForegroundd`` on the raw intensities, intensity normalisation (CT windows or MR
normalisation), and :class:`PadToMultipled` to the network stride. Every spatial step is a MONAI
invertible transform, so predictions go back to the input geometry with ``monai.transforms.Invertd``
(see :func:`medmamba.io.invert_prediction`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.transforms import Compose, CropForegroundd, EnsureTyped, Orientationd

from medmamba.transforms.anti_aliasing import AntiAliasedSpacingd
from medmamba.transforms.ct_window import CTWindowd, WindowSpec
from medmamba.transforms.loading import LoadScand
from medmamba.transforms.mr_normalize import MRNormalized, foreground_threshold
from medmamba.transforms.padding import NETWORK_STRIDE, PadToMultipled

__all__ = ["ForegroundSelector", "scan_preprocessing"]


class ForegroundSelector:
    """Picklable ``select_fn`` for ``CropForegroundd``: voxels above a threshold.

    Args:
        threshold: Absolute threshold (e.g. -500 HU for the body in CT); ``None`` uses
            ``fraction`` of the image's 99th percentile (MR).
        fraction: See ``threshold``.
    """

    def __init__(self, threshold: float | None = None, fraction: float = 0.1) -> None:
        self.threshold = threshold
        self.fraction = fraction

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        """Boolean foreground of ``img``."""
        x = torch.as_tensor(img).float()
        thr = self.threshold
        if thr is None:
            thr = foreground_threshold(x, self.fraction)
        return x > thr


def scan_preprocessing(
    image_key: str = "image",
    label_keys: Sequence[str] = (),
    *,
    modality: str = "MR",
    windows: WindowSpec | Sequence[WindowSpec] = ("brain", "subdural", "bone"),
    pixdim: Sequence[float] | None = None,
    crop_foreground: bool = True,
    margin: int = 4,
    k: int | Sequence[int] = NETWORK_STRIDE,
    load: bool = True,
    on_gap: str = "error",
    expected_modalities: Sequence[str] | None = None,
) -> Compose:
    """The standard preprocessing of a scan (and its labels) for MobileMamba networks.

    Args:
        image_key: Key of the image path (or image, with ``load=False``).
        label_keys: Keys of label maps resampled alongside (nearest neighbour).
        modality: ``"CT"`` (window presets stacked as channels) or ``"MR"`` (percentile clipping and
            foreground z-score).
        windows: CT windows (preset names or ``(level, width)``).
        pixdim: Target voxel spacing in mm; ``None`` keeps the native spacing.
        crop_foreground: Crop to the foreground (body for CT, above 10 % of the 99th percentile for MR).
        margin: Voxels kept around the foreground.
        k: Pad spatial sizes to a multiple of this (MobileMamba: 64).
        load: Start with :class:`LoadScand` (else the data already hold images).
        on_gap: Passed to the loader.
        expected_modalities: Passed to the loader: refuse DICOM inputs of other modalities.

    Returns:
        A MONAI ``Compose``.

    Raises:
        ValueError: For an unknown ``modality``.
    """
    modality = modality.upper()
    if modality not in ("CT", "MR"):
        raise ValueError(f"modality must be 'CT' or 'MR', got {modality!r}")
    keys = [image_key, *label_keys]
    steps: list = []
    if load:
        steps.append(LoadScand(keys, on_gap=on_gap, expected_modalities=expected_modalities))  # type: ignore[arg-type]
    steps.append(EnsureTyped(keys, dtype=torch.float32, track_meta=True))
    steps.append(Orientationd(keys, axcodes="RAS", labels=None))
    if pixdim is not None:
        modes = ["bilinear"] + ["nearest"] * len(label_keys)
        steps.append(AntiAliasedSpacingd(keys, pixdim=pixdim, smooth_keys=image_key, mode=modes, dtype=torch.float32))
    if crop_foreground:
        selector = ForegroundSelector(threshold=-500.0) if modality == "CT" else ForegroundSelector(fraction=0.1)
        steps.append(CropForegroundd(keys, source_key=image_key, select_fn=selector, margin=margin, allow_smaller=True))
    if modality == "CT":
        steps.append(CTWindowd(image_key, windows))
    else:
        steps.append(MRNormalized(image_key))
    steps.append(PadToMultipled(keys, k=k))
    return Compose(steps)
