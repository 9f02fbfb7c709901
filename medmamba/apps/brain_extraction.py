"""The segmentation bundle as the brain-extraction step of another bundle.

:func:`load_brain_extractor` reads the segmentation bundle's ``inference.json`` (MONAI's
``ConfigParser``, so the network, its weights, its inferer, voxel size and opening radius are the
ones the segmentation bundle itself runs with) and returns a
:class:`medmamba.inferers.BrainExtractor`; the classification bundle wraps its inferer in a
:class:`medmamba.inferers.SkullStrippingInferer` with it, so a whole head is classified as its brain.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from monai.bundle import ConfigParser
from monai.bundle.reference_resolver import ReferenceResolver

from medmamba.bundle.flags import flag
from medmamba.inferers.brain_extraction import BrainExtractor, SkullStrippingInferer
from medmamba.inferers.chain import find_inferer
from medmamba.inferers.contrast_polarity import POLARITIES, ContrastPolarityInferer

__all__ = [
    "contrast_polarity_inferer",
    "load_brain_extractor",
    "single_pass_extractor",
    "skull_stripping_inferer",
    "skull_stripping_of",
]


def load_brain_extractor(
    bundle_root: str | os.PathLike[str],
    device: str | torch.device | None = None,
    config_file: str = "inference.json",
    weights_item: str = "model_file",
    spacing: Sequence[float] | None = None,
    inferer_item: str = "brain_normalizing_inferer",
    closing_mm: float = 0.0,
) -> BrainExtractor:
    """The brain extractor of a tissue segmentation bundle, as that bundle runs it.

    Args:
        bundle_root: the segmentation bundle's folder (``bundles/mobilemamba_segmentation``).
        device: where its network runs (``None``: the bundle config's ``device``).
        config_file: the config under ``configs/`` that defines ``network``, ``inferer_item``,
            ``pixdim`` and ``brain_opening_mm``.
        weights_item: the config item naming the weights file (checked before loading, for a clear
            error).
        spacing: voxel size in mm of the volumes the extractor will be given (the calling bundle's
            ``pixdim``), for the opening's radius; ``None``: the segmentation bundle's ``pixdim``
            (its network was trained at that voxel size, which the calling bundle should match).
        inferer_item: the config item (``#``-path) of the inferer the network runs with:
            ``"brain_normalizing_inferer"`` (the default: the segmentation bundle's own inference,
            a tissue pass, the brain-normalised pass, each with flip TTA) or ``"inferer#inferer"``
            (its single slice-stack pass, about a third of the time; what the classification bundle
            uses, chosen on validation data: its docs).
        closing_mm: radius in mm of a closing of the brain mask after the bundle's own steps
            (:func:`medmamba.transforms.close_brain`); 0: none (the mask the segmentation bundle
            writes). The classification bundle closes by 8 mm (its docs, version 0.13.1).

    Returns:
        A :class:`medmamba.inferers.BrainExtractor` with the bundle's network, weights, opening
        radius, the inferer ``inferer_item`` and the closing ``closing_mm``.

    Raises:
        ValueError: ``bundle_root`` has no such config, the config lacks an item, or its weights are
            missing (the segmentation bundle is not trained yet).
    """
    root = Path(bundle_root)
    config = root / "configs" / config_file
    if not config.is_file():
        raise ValueError(f"bundle_root={os.fspath(bundle_root)!r} has no configs/{config_file}; expected the "
                         f"segmentation bundle's folder (bundles/mobilemamba_segmentation).")
    parser = ConfigParser()
    parser.read_config(str(config))
    parser["bundle_root"] = str(root)
    if device is not None:
        parser["device"] = f"$torch.device({str(device)!r})"
    for item in ("network", inferer_item, "pixdim", "brain_opening_mm", weights_item):
        if item not in parser:
            raise ValueError(f"{config} has no {item!r}: not a segmentation bundle config medmamba can extract brains with.")
    if "inferer#inferer#progress" in parser:  # no per-case slice progress bar inside another bundle's run
        parser["inferer#inferer#progress"] = False
    weights = Path(parser.get_parsed_content(weights_item))
    if not weights.is_file():
        raise ValueError(f"the segmentation bundle's weights {weights} are missing: train it first "
                         f"(python -m monai.bundle run --config_file {root / 'configs' / 'train.json'}), "
                         f"or run without brain extraction (--brain_extraction false).")
    return BrainExtractor(
        network=parser.get_parsed_content("network"),
        inferer=parser.get_parsed_content(inferer_item),
        spacing=[float(v) for v in (parser.get_parsed_content("pixdim") if spacing is None else spacing)],
        opening_mm=float(parser.get_parsed_content("brain_opening_mm")),
        device=parser.get_parsed_content("device"),
        closing_mm=float(closing_mm),
    )


def skull_stripping_inferer(
    inferer: Any,
    brain_extraction: bool | str,
    segmentation_bundle_root: str | os.PathLike[str],
    device: str | torch.device | None = None,
    spacing: Sequence[float] | None = None,
    inferer_item: str = "brain_normalizing_inferer",
    closing_mm: float = 0.0,
) -> Any:
    """A bundle's inferer with the segmentation bundle's brain extraction before it, or as it is.

    Args:
        inferer: the bundle's own inferer (e.g. :class:`medmamba.inferers.SliceStackInferer`).
        brain_extraction: whether to strip; a bool or the strings ``"true"``/``"false"`` that a
            command-line override gives (:func:`medmamba.bundle.flag`).
        segmentation_bundle_root: the segmentation bundle's folder (:func:`load_brain_extractor`).
        device: where the segmentation network runs.
        spacing: voxel size in mm of the volumes ``inferer`` is given (the bundle's ``pixdim``).
        inferer_item: which of the segmentation bundle's inferers finds the brain (:func:`load_brain_extractor`).
        closing_mm: radius in mm of the closing of the brain mask (:func:`load_brain_extractor`).

    Returns:
        ``SkullStrippingInferer(inferer, load_brain_extractor(...))`` with brain extraction, else
        ``inferer`` itself (the segmentation bundle is then not read).
    """
    if not flag(brain_extraction, "brain_extraction"):
        return inferer
    return SkullStrippingInferer(inferer, load_brain_extractor(
        segmentation_bundle_root, device=device, spacing=spacing, inferer_item=inferer_item, closing_mm=closing_mm))


def skull_stripping_of(predictor: Any, max_depth: int = 8) -> SkullStrippingInferer | None:
    """The skull-stripping inferer inside a predictor's chain of inferers, or ``None``.

    Follows ``.inferer`` from ``predictor`` (e.g. a :class:`medmamba.inferers.VolumeClassifier`, then the
    mirror read-out, the contrast-polarity check, ...) to the first
    :class:`medmamba.inferers.SkullStrippingInferer`: the classification bundle reports the brain that
    inferer extracted. A chain without one (``--brain_extraction false``, a predictor given in its
    place) gives ``None``.

    Args:
        predictor: the object whose ``.inferer`` chain is searched.
        max_depth: how many links are followed at most.

    Returns:
        The skull-stripping inferer, or ``None``.
    """
    return find_inferer(predictor, SkullStrippingInferer, int(max_depth))


def single_pass_extractor(inferer: Any, inferer_item: str) -> BrainExtractor | None:
    """The brain extractor of a skull-stripping inferer when it runs the segmentation network's single
    slice-stack pass (``inferer_item`` ``"inferer#inferer"``), else ``None``.

    That is the pass the contrast-polarity probe runs (:func:`contrast_polarity_inferer`); sharing the
    extractor's network and inferer lets the extraction reuse the probe's pass over the volume as given
    (``reuse_last_pass`` of the segmentation bundle's :class:`medmamba.inferers.SliceStackInferer`).

    Args:
        inferer: the bundle's inferer (:func:`skull_stripping_inferer`'s result).
        inferer_item: the segmentation bundle's inferer item the extractor was loaded with (``#`` or
            MONAI's ``::`` as the separator: a config gives the latter).
    """
    extractor = getattr(inferer, "extractor", None)
    single_pass = ReferenceResolver.normalize_id(str(inferer_item)) == ReferenceResolver.normalize_id("inferer#inferer")
    if isinstance(inferer, SkullStrippingInferer) and isinstance(extractor, BrainExtractor) and single_pass:
        return extractor
    return None


def contrast_polarity_inferer(
    inferer: Any,
    polarity: str,
    segmentation_bundle_root: str | os.PathLike[str],
    device: str | torch.device | None = None,
    spacing: Sequence[float] | None = None,
    extractor: BrainExtractor | None = None,
    probe_slice_step: int = 1,
) -> Any:
    """A bundle's inferer behind the segmentation network's choice of contrast polarity.

    The segmentation network's tissue map (its single slice-stack pass) on the volume as given and
    inverted decides whether an inverted, T2-like contrast goes on inverted
    (:class:`medmamba.inferers.ContrastPolarityInferer`); a lesion-map classifier's own tissue classes
    tell the two apart less well (``docs/real-scans.md``).

    Args:
        inferer: the bundle's own inferer (e.g. the skull-stripping one).
        polarity: ``"auto"``, ``"given"`` (``inferer`` itself is returned) or ``"inverted"``; only
            ``"auto"`` reads the segmentation bundle.
        segmentation_bundle_root: the segmentation bundle's folder (:func:`load_brain_extractor`).
        device: where the segmentation network runs.
        spacing: voxel size in mm of the volumes (the calling bundle's ``pixdim``).
        extractor: the segmentation network's single-pass brain extractor that the bundle already
            loaded (:func:`single_pass_extractor`); the probe then runs its network and inferer, so
            that the extraction of a volume left as given reuses the probe's pass. ``None``: the
            probe's network is loaded from ``segmentation_bundle_root``.
        probe_slice_step: the inverted volume is run on every ``probe_slice_step``-th slice stack
            (:class:`medmamba.inferers.ContrastPolarityInferer`); 1: on every one.

    Returns:
        ``inferer`` or a :class:`medmamba.inferers.ContrastPolarityInferer` around it.

    Raises:
        ValueError: an unknown ``polarity``, or no usable segmentation bundle (:func:`load_brain_extractor`).
    """
    if polarity not in POLARITIES:
        raise ValueError(f"polarity must be one of {POLARITIES}, got {polarity!r}.")
    if polarity == "given":
        return inferer
    if polarity == "inverted":  # no probe to run
        return ContrastPolarityInferer(inferer, polarity=polarity)
    if extractor is not None:
        if not isinstance(extractor, BrainExtractor):
            raise TypeError(f"extractor must be a BrainExtractor or None, got {type(extractor).__name__}.")
        return ContrastPolarityInferer(inferer, probe_inferer=extractor.inferer, probe_network=extractor.network,
                                       polarity=polarity, probe_slice_step=probe_slice_step)
    try:
        probe = load_brain_extractor(segmentation_bundle_root, device=device, spacing=spacing, inferer_item="inferer#inferer")
    except ValueError as err:
        raise ValueError(f"{err} The contrast-polarity check runs the segmentation network too; "
                         f"--contrast_polarity given skips it (T1-weighted scans only).") from err
    return ContrastPolarityInferer(inferer, probe_inferer=probe.inferer, probe_network=probe.network, polarity=polarity,
                                   probe_slice_step=probe_slice_step)
