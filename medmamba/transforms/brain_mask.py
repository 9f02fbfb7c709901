"""A brain mask from a tissue label map: the brain labels, their largest connected part, holes filled.

The segmentation bundle labels CSF (1), grey matter (2) and white matter (3) inside the brain and
everything else (air, scalp, skull, eyes, neck) 0. :class:`BrainMask` turns that label map into a
0/1 mask usable for skull stripping: voxels with a brain label, reduced to the largest connected
component (stray voxels labelled as tissue outside the brain go) with enclosed holes filled
(``scipy.ndimage``; MONAI's ``KeepLargestConnectedComponent`` needs scikit-image, which the project
does not require). :class:`KeepBrainComponent` cleans the label map itself the same way: tissue
labels outside the largest connected brain component become background.

On real whole-head scans whose field of view reaches far below the brain, the network also labels
parts of the face, tongue and neck as tissue, and they join the brain through the brainstem, so
the largest component alone keeps them (a brain volume 1.3-1.4x too large on two real 1 mm heads).
``opening_mm`` detaches them first (:func:`detach_brain`): the brain eroded by that radius in mm, its
largest connected part, dilated back by the radius and one voxel inside the labels; parts joined
to the brain only by bridges thinner than twice the radius are cut off.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform, Transform
from monai.utils import convert_to_dst_type

__all__ = ["BrainMask", "BrainMaskd", "KeepBrainComponent", "KeepBrainComponentd", "close_brain", "detach_brain"]


def _largest_component(mask: np.ndarray, structure: np.ndarray | None = None) -> np.ndarray:
    """The largest connected component of a boolean mask (``mask`` itself with fewer than two)."""
    from scipy import ndimage

    components, n = ndimage.label(mask, structure=structure)
    if n < 2:
        return mask
    sizes = np.bincount(components.ravel())
    sizes[0] = 0
    return components == int(np.argmax(sizes))


def _bounding_box(mask: np.ndarray, margin: int = 0) -> tuple[slice, ...]:
    """Slices of the bounding box of a non-empty boolean mask, grown by ``margin`` voxels inside the array."""
    box = []
    for axis in range(mask.ndim):
        hit = np.flatnonzero(mask.any(axis=tuple(a for a in range(mask.ndim) if a != axis)))
        box.append(slice(max(int(hit[0]) - margin, 0), min(int(hit[-1]) + 1 + margin, mask.shape[axis])))
    return tuple(box)


def _checked_ball_arguments(brain: np.ndarray, spacing: Sequence[float], radius_mm: float) -> tuple[np.ndarray, list[float]]:
    """``(brain as bool, spacing as floats)`` for :func:`detach_brain` / :func:`close_brain`; ``ValueError``
    for a spacing of the wrong length or not positive, or a radius that is not positive."""
    brain = np.asarray(brain, dtype=bool)
    spacing = [float(v) for v in spacing]
    if len(spacing) != brain.ndim or any(not v > 0 for v in spacing):
        raise ValueError(f"spacing must hold {brain.ndim} positive voxel sizes in mm, got {spacing!r}.")
    if not float(radius_mm) > 0:
        raise ValueError(f"radius_mm must be > 0, got {radius_mm!r}.")
    return brain, spacing


def detach_brain(brain: np.ndarray, spacing: Sequence[float], radius_mm: float, crop: bool = True) -> np.ndarray:
    """The part of a boolean brain mask that survives an opening of ``radius_mm`` around its core.

    The mask is eroded by a ball of ``radius_mm`` (Euclidean distance in mm, so anisotropic voxels are
    handled), the largest connected part of what remains is the brain's core, and the result is every
    voxel of ``brain`` within ``radius_mm`` plus one voxel of that core. Tissue joined to the brain only
    through bridges thinner than about ``2 * radius_mm`` (face, tongue and neck reached through the
    brainstem) is dropped; the brain's own outline comes back to within a voxel.

    Args:
        brain: Boolean mask, any number of spatial dimensions.
        spacing: Voxel size in mm per axis of ``brain``.
        radius_mm: Radius of the erosion in mm (> 0).
        crop: Compute on the mask's bounding box grown by one voxel (the default; the same result,
            2.4-4.7x faster on head grids, ``benchmarks/bench_brain_mask.py``); ``False``: on the
            whole array, as up to segmentation 0.6.13 (the benchmark's baseline).

    Returns:
        A boolean mask inside ``brain`` (``brain`` itself when nothing survives the erosion).

    Raises:
        ValueError: For a spacing of the wrong length or not positive, or a radius that is not positive.
    """
    from scipy import ndimage

    brain, spacing = _checked_ball_arguments(brain, spacing, radius_mm)
    if not brain.any():
        return brain
    # both distance transforms on the mask's bounding box grown by one voxel where the array allows:
    # the nearest non-brain voxel of a box voxel is in that box (clamping a farther one into the box
    # lands on its outer, non-brain layer, nearer), and every core voxel is in it; so the result is
    # the full grid's, with a head's face, neck and air left out of the work
    box = _bounding_box(brain, margin=1) if crop else tuple(slice(None) for _ in brain.shape)
    part = brain[box]
    core = ndimage.distance_transform_edt(part, sampling=spacing) > float(radius_mm)
    if not core.any():
        return brain
    core = _largest_component(core)
    reach = float(radius_mm) + max(spacing)
    out = np.zeros_like(brain)
    out[box] = part & (ndimage.distance_transform_edt(~core, sampling=spacing) <= reach)
    return out


def close_brain(brain: np.ndarray, spacing: Sequence[float], radius_mm: float) -> np.ndarray:
    """``brain`` with the notches in its outline closed: a morphological closing by a ball of ``radius_mm``.

    The mask is dilated by ``radius_mm`` and the dilation eroded by the same ball (Euclidean distance
    in mm, so anisotropic voxels are handled; the array is padded so that its border does not stop
    the erosion); the result is that closing joined with ``brain``. Clefts and notches narrower than
    about ``2 * radius_mm`` that open to the outside are filled, e.g. where a segmentation network
    called a bright lesion at the brain's edge non-brain tissue.

    Args:
        brain: Boolean mask, any number of spatial dimensions.
        spacing: Voxel size in mm per axis of ``brain``.
        radius_mm: Radius of the closing in mm (> 0).

    Returns:
        A boolean mask that contains ``brain``.

    Raises:
        ValueError: For a spacing of the wrong length or not positive, or a radius that is not positive.
    """
    from scipy import ndimage

    brain, spacing = _checked_ball_arguments(brain, spacing, radius_mm)
    if not brain.any():
        return brain
    # work on the mask's bounding box grown by a margin that the dilation cannot cross (same result,
    # a third of the voxels of a head grid); the margin may reach past the array, hence the padding
    pad = [int(np.ceil(float(radius_mm) / v)) + 1 for v in spacing]
    box = _bounding_box(brain)
    crop = np.pad(brain[box], [(q, q) for q in pad])
    dilated = ndimage.distance_transform_edt(~crop, sampling=spacing) <= float(radius_mm)
    closed = ndimage.distance_transform_edt(dilated, sampling=spacing) > float(radius_mm)
    out = brain.copy()
    out[box] |= closed[tuple(slice(q, q + b.stop - b.start) for q, b in zip(pad, box))]
    return out


def _label_array(img: Any) -> np.ndarray:
    """A channel-first label map ``(1, *spatial)`` as a NumPy array; ``ValueError`` for another shape."""
    if len(img.shape) < 2 or int(img.shape[0]) != 1:
        raise ValueError(f"img must be a channel-first label map (1, *spatial), got shape {tuple(img.shape)}.")
    return img.detach().cpu().numpy() if isinstance(img, torch.Tensor) else np.asarray(img)


class BrainMask(Transform):
    """Label map ``(1, *spatial)`` to a 0/1 brain mask of the same shape, type and metadata.

    Args:
        labels: the labels that make up the brain (``None``: every label > 0).
        largest_component: keep only the largest connected component.
        fill_holes: fill the holes enclosed by the mask (``scipy.ndimage.binary_fill_holes``).
        connectivity: neighbourhood of the components, 1 (faces, the default: thin bridges through
            the skull do not join a blob to the brain) to the number of spatial dimensions (corners).
        opening_mm: radius in mm of the opening that detaches tissue joined to the brain by thin
            bridges before the largest component is taken (:func:`detach_brain`); 0 (the default):
            none. Needs the voxel size: from a ``MetaTensor``'s affine, or ``spacing``.
        spacing: voxel size in mm when the input carries no affine (``None``: from the affine).
        closing_mm: radius in mm of a closing applied last (:func:`close_brain`: notches in the
            outline narrower than about twice the radius filled); 0 (the default): none. Needs the
            voxel size, as ``opening_mm``.

    Raises:
        ValueError: for invalid arguments.
    """

    def __init__(
        self,
        labels: Sequence[int] | None = None,
        largest_component: bool = True,
        fill_holes: bool = True,
        connectivity: int = 1,
        opening_mm: float = 0.0,
        spacing: Sequence[float] | None = None,
        closing_mm: float = 0.0,
    ) -> None:
        if labels is not None and (isinstance(labels, (str, bytes)) or not len(labels)):
            raise ValueError(f"labels must be a non-empty sequence of label values or None, got {labels!r}.")
        valid_int = not isinstance(connectivity, bool) and isinstance(connectivity, (int, np.integer))
        if not valid_int or not 1 <= connectivity <= 3:
            raise ValueError(f"connectivity must be 1, 2 or 3, got {connectivity!r}.")
        if isinstance(opening_mm, bool) or not isinstance(opening_mm, (int, float)) or not opening_mm >= 0:
            raise ValueError(f"opening_mm must be a radius in mm >= 0 (0: no opening), got {opening_mm!r}.")
        if isinstance(closing_mm, bool) or not isinstance(closing_mm, (int, float)) or not closing_mm >= 0:
            raise ValueError(f"closing_mm must be a radius in mm >= 0 (0: no closing), got {closing_mm!r}.")
        if spacing is not None and (len(spacing) == 0 or any(not float(v) > 0 for v in spacing)):
            raise ValueError(f"spacing must be positive voxel sizes in mm or None, got {spacing!r}.")
        self.labels = None if labels is None else [int(v) for v in labels]
        self.largest_component = bool(largest_component)
        self.fill_holes = bool(fill_holes)
        self.connectivity = int(connectivity)
        self.opening_mm = float(opening_mm)
        self.closing_mm = float(closing_mm)
        self.spacing = None if spacing is None else tuple(float(v) for v in spacing)

    def voxel_size(self, img: Any, ndim: int) -> tuple[float, ...] | None:
        """The voxel size of a channel-first input: ``spacing`` if given, else its affine's (``None`` without one)."""
        if self.spacing is not None:
            return self.spacing
        if getattr(img, "affine", None) is not None:
            from medmamba.transforms.scan_checks import voxel_spacing

            return voxel_spacing(img, ndim)
        return None

    def brain_voxels(self, labels: np.ndarray) -> np.ndarray:
        """The voxels carrying a brain label (``labels``, or every label > 0), any shape."""
        lab = np.rint(np.asarray(labels)).astype(np.int64)
        return lab > 0 if self.labels is None else np.isin(lab, self.labels)

    def mask(self, labels: np.ndarray, spacing: Sequence[float] | None = None) -> np.ndarray:
        """The boolean brain mask of a label array without channel dimension.

        Args:
            labels: The label map.
            spacing: Its voxel size in mm (``None``: the ``spacing`` argument); needed when ``opening_mm``
                or ``closing_mm`` > 0.

        Raises:
            ValueError: ``opening_mm`` or ``closing_mm`` > 0 and no voxel size is known.
        """
        from scipy import ndimage

        brain = self.brain_voxels(labels)
        if not brain.any():
            return brain
        spacing = spacing if spacing is not None else self.spacing
        for name, radius in (("opening_mm", self.opening_mm), ("closing_mm", self.closing_mm)):
            if radius > 0 and spacing is None:
                raise ValueError(f"{name}={radius} needs the voxel size: give the label map as a "
                                 "MetaTensor with its affine, or pass spacing (mm per spatial axis).")
        if self.opening_mm > 0:
            brain = detach_brain(brain, spacing, self.opening_mm)
        structure = ndimage.generate_binary_structure(brain.ndim, min(self.connectivity, brain.ndim))
        if self.largest_component:
            brain = _largest_component(brain, structure)
        if self.fill_holes:
            brain = ndimage.binary_fill_holes(brain)
        if self.closing_mm > 0:
            brain = close_brain(brain, spacing, self.closing_mm)
        return brain

    def __call__(self, img: Any) -> Any:
        """The 0/1 mask of a channel-first label map ``(1, *spatial)`` (float32, metadata kept).

        Raises:
            ValueError: if ``img`` does not have exactly one channel.
        """
        arr = _label_array(img)
        out = self.mask(arr[0], self.voxel_size(img, arr.ndim - 1))[None].astype(np.float32)
        return convert_to_dst_type(out, img, dtype=torch.float32 if isinstance(img, torch.Tensor) else np.float32)[0]


class BrainMaskd(MapTransform):
    """Dictionary version of :class:`BrainMask`.

    Args:
        keys: keys of the label maps.
        output_key_postfix: the mask of ``key`` goes to ``f"{key}_{output_key_postfix}"``
            (``None``: replace the label map).
        allow_missing_keys: skip absent keys.
        **kwargs: arguments of :class:`BrainMask`.
    """

    def __init__(
        self,
        keys: KeysCollection,
        output_key_postfix: str | None = "brain_mask",
        allow_missing_keys: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.output_key_postfix = output_key_postfix
        self.masker = BrainMask(**kwargs)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        """Add (or replace by) the brain mask of each label map under ``keys``."""
        d = dict(data)
        for key in self.key_iterator(d):
            out_key = key if self.output_key_postfix is None else f"{key}_{self.output_key_postfix}"
            d[out_key] = self.masker(d[key])
        return d


class KeepBrainComponent(Transform):
    """Label map ``(1, *spatial)``: every brain label outside the largest connected brain component set to 0.

    A network that predicts at full resolution also labels small islands outside the brain (in the
    scalp, the eyes, the neck) as tissue; they add little to the Dice but inflate the brain volume
    and the Hausdorff distance. The brain is the union of ``labels`` (all labels > 0 by default) and
    its largest component is found as in :class:`BrainMask` (no hole filling: holes keep their labels).

    Args:
        labels: the labels that make up the brain (``None``: every label > 0).
        connectivity: neighbourhood of the components (1: faces, the default; up to the number of
            spatial dimensions).
        opening_mm: detach tissue joined to the brain by bridges thinner than about twice this
            radius first (:func:`detach_brain`; 0: no opening).
        spacing: voxel size in mm when the input carries no affine.

    Raises:
        ValueError: for invalid arguments.
    """

    def __init__(
        self,
        labels: Sequence[int] | None = None,
        connectivity: int = 1,
        opening_mm: float = 0.0,
        spacing: Sequence[float] | None = None,
    ) -> None:
        self.masker = BrainMask(labels=labels, largest_component=True, fill_holes=False, connectivity=connectivity,
                                opening_mm=opening_mm, spacing=spacing)

    def __call__(self, img: Any) -> Any:
        """The label map with the voxels outside the largest brain component set to 0 (same type and metadata).

        Raises:
            ValueError: if ``img`` does not have exactly one channel.
        """
        arr = _label_array(img)
        clear = self.masker.brain_voxels(arr) & ~self.masker.mask(arr[0], self.masker.voxel_size(img, arr.ndim - 1))[None]
        if isinstance(img, torch.Tensor):  # a MetaTensor keeps its metadata and applied operations
            out = img.clone()
            out[torch.as_tensor(clear, device=img.device)] = 0
            return out
        return np.where(clear, np.zeros((), dtype=arr.dtype), arr)


class KeepBrainComponentd(MapTransform):
    """Dictionary version of :class:`KeepBrainComponent` (the label maps under ``keys`` replaced).

    Args:
        keys: keys of the label maps.
        allow_missing_keys: skip absent keys.
        **kwargs: arguments of :class:`KeepBrainComponent`.
    """

    def __init__(self, keys: KeysCollection, allow_missing_keys: bool = False, **kwargs: Any) -> None:
        super().__init__(keys, allow_missing_keys)
        self.cleaner = KeepBrainComponent(**kwargs)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        """Clean each label map under ``keys``."""
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.cleaner(d[key])
        return d
