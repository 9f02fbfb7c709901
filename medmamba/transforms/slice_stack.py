"""2.5D slice stacks: turn a 3D volume into 2D samples with neighbouring slices as channels.

A 2D network sees one slice of a 3D scan at a time. Feeding it the ``2k + 1`` neighbouring slices of
every slice as channels ("2.5D") gives it some through-plane context at 2D cost. This module holds
the stacking itself (:func:`stack_slices`, shared with :class:`medmamba.inferers.SliceStackInferer`
so that training and inference see the same channel order) and the dictionary transform
:class:`SliceStackd` that cuts training samples out of a volume, favouring slices that contain
foreground at a configurable ratio.

Channel order (modality-major): for ``C`` modalities and context ``k`` the stack has
``C * (2k + 1)`` channels and channel ``c * (2k + 1) + j`` holds modality ``c`` at slice offset
``j - k``. So with two modalities (T1, T2) and ``k = 1`` the channels are
``T1[s-1], T1[s], T1[s+1], T2[s-1], T2[s], T2[s+1]``; the centre slice of modality ``c`` is channel
``c * (2k + 1) + k``. Slices beyond the volume are replaced by the nearest edge slice (edge
replication).

The 2D plane keeps the order of the two remaining spatial axes: slicing ``(C, H, W, D)`` along
``spatial_axis=2`` gives ``(C', H, W)``, along ``0`` gives ``(C', W, D)``, along ``1`` gives
``(C', H, D)``, as :class:`monai.inferers.SliceInferer` does.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform, Randomizable
from monai.transforms.traits import MultiSampleTrait
from monai.utils import convert_to_dst_type, convert_to_tensor, ensure_tuple

__all__ = ["SliceStackd", "neighbour_slice_indices", "stack_slices"]


def _check_context(context: Any) -> int:
    if isinstance(context, bool) or not isinstance(context, (int, np.integer)):
        raise TypeError(f"context must be a non-negative int, got {context!r} ({type(context).__name__}).")
    if context < 0:
        raise ValueError(f"context must be a non-negative int, got {context}.")
    return int(context)


def _check_spatial_axis(spatial_axis: Any, name: str = "spatial_axis") -> int:
    if isinstance(spatial_axis, bool) or not isinstance(spatial_axis, (int, np.integer)):
        raise TypeError(f"{name} must be an int in [-3, 2], got {spatial_axis!r} ({type(spatial_axis).__name__}).")
    if not -3 <= spatial_axis <= 2:
        raise ValueError(
            f"{name} must index one of the 3 spatial axes (H, W, D): 0, 1, 2 (or -3..-1), got {spatial_axis}."
        )
    return int(spatial_axis) % 3


def neighbour_slice_indices(
    indices: torch.Tensor | Sequence[int], num_slices: int, context: int, device: torch.device | None = None
) -> torch.Tensor:
    """The slice indices of the ``2k + 1``-slice stack around each index, edges replicated.

    Args:
        indices: centre slice indices, shape ``(N,)``.
        num_slices: number of slices ``S`` along the axis.
        context: ``k``, the number of neighbours on each side.
        device: device of the result.

    Returns:
        Long tensor ``(N, 2k + 1)``; row ``i`` is ``clamp(indices[i] - k .. indices[i] + k, 0, S - 1)``.
    """
    idx = torch.as_tensor(indices, dtype=torch.long, device=device).reshape(-1)
    offsets = torch.arange(-context, context + 1, dtype=torch.long, device=idx.device)
    return (idx[:, None] + offsets[None, :]).clamp_(0, num_slices - 1)


def stack_slices(
    volume: torch.Tensor, indices: torch.Tensor | Sequence[int], spatial_axis: int, context: int
) -> torch.Tensor:
    """Gather the ``2k + 1``-slice stacks of some slices of a batch of channel-first volumes.

    Args:
        volume: ``(B, C, S0, S1, S2)`` tensor.
        indices: centre slice indices along ``spatial_axis`` (``N`` of them).
        spatial_axis: the spatial axis to slice along, 0, 1 or 2 (``S0``, ``S1``, ``S2``).
        context: ``k``; each stack holds ``2k + 1`` slices, edges replicated.

    Returns:
        ``(B, N, C * (2k + 1), P0, P1)`` where ``(P0, P1)`` are the two other spatial sizes in their
        original order; channels are modality-major (see the module docstring).

    Raises:
        ValueError: if ``volume`` is not 5D or an index lies outside the volume.
    """
    if volume.ndim != 5:
        raise ValueError(f"volume must have shape (B, C, S0, S1, S2), got shape {tuple(volume.shape)}.")
    axis = _check_spatial_axis(spatial_axis)
    context = _check_context(context)
    num_slices = volume.shape[2 + axis]
    idx = torch.as_tensor(indices, dtype=torch.long, device=volume.device).reshape(-1)
    if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= num_slices):
        raise ValueError(
            f"indices must lie in [0, {num_slices - 1}] (the {num_slices} slices along spatial axis {axis}), "
            f"got min {int(idx.min())}, max {int(idx.max())}."
        )
    n, w = idx.numel(), 2 * context + 1
    gather = neighbour_slice_indices(idx, num_slices, context).reshape(-1)
    picked = volume.index_select(2 + axis, gather).movedim(2 + axis, 2)  # (B, C, N*w, P0, P1)
    b, c, _, p0, p1 = picked.shape
    picked = picked.reshape(b, c, n, w, p0, p1).transpose(1, 2)  # (B, N, C, w, P0, P1)
    return picked.reshape(b, n, c * w, p0, p1)


def _slice_affine(affine: torch.Tensor, axis: int, index: int) -> torch.Tensor:
    """The 2D (3x3) affine of slice ``index`` along spatial ``axis`` of a 3D (4x4) affine.

    The origin is moved to the slice, then the row and column of ``axis`` are dropped so that the
    affine stays square (MONAI's ``SqueezeDim`` convention; exact for axis-aligned volumes). The full
    3D geometry is kept in the meta dict as ``volume_affine``.
    """
    affine = torch.as_tensor(affine, dtype=torch.float64)
    if affine.shape != (4, 4):
        return affine.clone()
    moved = affine.clone()
    moved[:, 3] = affine[:, 3] + affine[:, axis] * index  # origin moved to the slice
    keep = [i for i in range(4) if i != axis]
    return moved[keep][:, keep]


class SliceStackd(Randomizable, MapTransform, MultiSampleTrait):
    """Cut 2.5D training samples out of channel-first 3D volumes.

    Every image under ``keys`` (shape ``(C, H, W, D)``) becomes, for each chosen slice ``s`` along
    ``spatial_axis``, a 2D image of ``C * (2 * context + 1)`` channels holding slices
    ``s - context .. s + context`` (edges replicated; modality-major channel order, see the module
    docstring). Every label under ``label_keys`` becomes its centre slice ``s`` only (channels
    unchanged). Other entries of the dictionary are copied into each sample (shallow copies).

    Slices are chosen as follows:

    * ``slices`` given: exactly those slices, in that order (deterministic);
    * else ``num_samples=None``: every slice, in order (deterministic; e.g. for validation);
    * else ``num_samples`` slices drawn independently (with replacement): with probability
      ``pos / (pos + neg)`` a foreground slice (one with at least ``min_foreground`` voxels of
      ``fg_key`` above ``fg_threshold``), otherwise a background slice (none). When one kind does
      not exist in the volume the other is used, as in :class:`monai.transforms.RandCropByPosNegLabeld`.
      Without a foreground label, slices are drawn uniformly.

    The result is always a list of dictionaries (one per slice), as MONAI's multi-sample crops return,
    which :class:`monai.transforms.Compose` and MONAI's datasets flatten into samples. Each sample
    records its slice: MetaTensors get ``slice_index``, ``slice_axis``, ``slice_context`` and
    ``volume_affine`` in their meta dict and a 2D (3x3) affine with the origin moved to the slice,
    and the dictionary gets ``slice_index_key`` (default ``"slice_index"``) unless it is ``None``.

    Args:
        keys: image keys to stack (``(C, H, W, D)`` arrays or tensors).
        label_keys: label keys, sliced at the centre slice only. May be empty or ``None``.
        spatial_axis: the spatial axis to slice along: 0 (H), 1 (W) or 2 (D, default; negative allowed).
        context: ``k``, the number of neighbouring slices on each side (0: plain 2D slices).
        num_samples: slices per volume to draw at random, or ``None`` for every slice.
        pos: weight of foreground slices in the random draw (``>= 0``).
        neg: weight of background slices in the random draw (``>= 0``; ``pos + neg > 0``).
        fg_key: label that defines foreground; default: the first of ``label_keys``.
        fg_threshold: a voxel is foreground where the label is greater than this.
        min_foreground: number of foreground voxels that makes a slice a foreground slice.
        slices: fixed slice indices to return instead of drawing (negative indices count from the end).
        slice_index_key: dictionary key to store the slice index under, or ``None``.
        allow_missing_keys: do not raise if a key is missing.

    Raises:
        ValueError: on invalid arguments, on volumes whose slice counts disagree, or when the stack
            of ``2 * context + 1`` slices is larger than the volume.

    Example::

        stack = SliceStackd(keys="image", label_keys="label", spatial_axis=2, context=2,
                            num_samples=4, pos=2, neg=1)
        stack.set_random_state(seed=0)
        samples = stack({"image": ct, "label": seg})  # 4 dicts, image (5, H, W), label (1, H, W)
    """

    def __init__(
        self,
        keys: KeysCollection,
        label_keys: KeysCollection | None = (),
        spatial_axis: int = 2,
        context: int = 1,
        num_samples: int | None = 1,
        pos: float = 1.0,
        neg: float = 1.0,
        fg_key: Hashable | None = None,
        fg_threshold: float = 0.0,
        min_foreground: int = 1,
        slices: Sequence[int] | None = None,
        slice_index_key: Hashable | None = "slice_index",
        allow_missing_keys: bool = False,
    ) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        self.label_keys: tuple[Hashable, ...] = () if label_keys is None else ensure_tuple(label_keys)
        overlap = set(self.keys) & set(self.label_keys)
        if overlap:
            raise ValueError(f"keys and label_keys must be disjoint, both contain {sorted(map(str, overlap))}.")
        self.spatial_axis = _check_spatial_axis(spatial_axis)
        self.context = _check_context(context)
        if num_samples is not None and (
            isinstance(num_samples, bool) or not isinstance(num_samples, (int, np.integer)) or num_samples < 1
        ):
            raise ValueError(f"num_samples must be a positive int or None, got {num_samples!r}.")
        self.num_samples = None if num_samples is None else int(num_samples)
        if pos < 0 or neg < 0 or pos + neg <= 0:
            raise ValueError(f"pos and neg must be >= 0 with a positive sum, got pos={pos}, neg={neg}.")
        self.pos_ratio = float(pos) / float(pos + neg)
        if fg_key is None and self.label_keys:
            fg_key = self.label_keys[0]
        self.fg_key = fg_key
        self.fg_threshold = float(fg_threshold)
        if min_foreground < 1:
            raise ValueError(f"min_foreground must be >= 1, got {min_foreground}.")
        self.min_foreground = int(min_foreground)
        self.slices = None if slices is None else [int(s) for s in slices]
        self.slice_index_key = slice_index_key
        self._chosen: list[int] = []

    def randomize(self, fg_slices: np.ndarray, bg_slices: np.ndarray) -> None:  # type: ignore[override]
        """Draw ``num_samples`` slice indices from the foreground / background slice indices."""
        chosen = []
        for _ in range(self.num_samples or 1):
            use_fg = self.R.rand() < self.pos_ratio
            pool = fg_slices if (use_fg and len(fg_slices)) or not len(bg_slices) else bg_slices
            chosen.append(int(pool[self.R.randint(len(pool))]))
        self._chosen = chosen

    def _num_slices(self, d: Mapping) -> int:
        sizes = {}
        for key in (*self.keys, *self.label_keys):
            if key in d:
                shape = d[key].shape
                if len(shape) != 4:
                    raise ValueError(
                        f"data[{key!r}] must be a channel-first 3D volume (C, H, W, D), got shape {tuple(shape)}."
                    )
                sizes[key] = int(shape[1 + self.spatial_axis])
            elif not self.allow_missing_keys:
                raise KeyError(f"key {key!r} not found in the data (keys: {list(d)}).")
        if not sizes:
            raise ValueError(f"none of keys {list(self.keys)} or label_keys {list(self.label_keys)} is in the data.")
        if len(set(sizes.values())) != 1:
            raise ValueError(f"volumes disagree on the number of slices along spatial axis {self.spatial_axis}: {sizes}.")
        num = next(iter(sizes.values()))
        if 2 * self.context + 1 > num:
            raise ValueError(
                f"context={self.context} needs a stack of {2 * self.context + 1} slices, larger than the volume "
                f"({num} slices along spatial axis {self.spatial_axis})."
            )
        return num

    def _select(self, d: Mapping, num_slices: int) -> list[int]:
        if self.slices is not None:
            out = []
            for s in self.slices:
                if not -num_slices <= s < num_slices:
                    raise ValueError(f"slices contains {s}, outside the {num_slices} slices of the volume.")
                out.append(s % num_slices)
            return out
        if self.num_samples is None:
            return list(range(num_slices))
        if self.fg_key is not None and self.fg_key in d:
            label = convert_to_tensor(d[self.fg_key], track_meta=False)
            fg = (label > self.fg_threshold).movedim(1 + self.spatial_axis, 0).reshape(num_slices, -1)
            is_fg = (fg.sum(dim=1) >= self.min_foreground).cpu().numpy()
            self.randomize(np.flatnonzero(is_fg), np.flatnonzero(~is_fg))
        else:
            self.randomize(np.zeros(0, dtype=int), np.arange(num_slices))
        return self._chosen

    def _cut(self, img: Any, indices: list[int], context: int) -> list[Any]:
        """The stacks of ``img`` centred on ``indices``, gathered in one call (meta data per slice)."""
        if not indices:
            return []
        t = convert_to_tensor(img, track_meta=False)
        stacks = stack_slices(t[None], indices, self.spatial_axis, context)[0]
        out: list[Any] = []
        for index, stack in zip(indices, stacks):
            if isinstance(img, MetaTensor):
                meta = dict(img.meta)
                meta.update(
                    slice_index=index,
                    slice_axis=self.spatial_axis,
                    slice_context=context,
                    volume_affine=img.affine.clone(),
                )
                meta["affine"] = _slice_affine(img.affine, self.spatial_axis, index)
                meta["spatial_shape"] = np.asarray(stack.shape[1:])
                out.append(MetaTensor(stack, meta=meta, applied_operations=list(img.applied_operations)))
            else:
                out.append(convert_to_dst_type(stack, img)[0])
        return out

    def __call__(self, data: Mapping[Hashable, Any]) -> list[dict[Hashable, Any]]:
        """Cut the samples.

        Args:
            data: dictionary holding the volumes under ``keys`` / ``label_keys``.

        Returns:
            A list of dictionaries, one per chosen slice.
        """
        d = dict(data)
        num_slices = self._num_slices(d)
        chosen = self._select(d, num_slices)
        cuts = {key: self._cut(d[key], chosen, self.context) for key in self.key_iterator(d)}
        cuts.update({key: self._cut(d[key], chosen, 0) for key in self.label_keys if key in d})
        samples: list[dict[Hashable, Any]] = []
        for i, index in enumerate(chosen):
            sample = dict(d)
            sample.update({key: stacks[i] for key, stacks in cuts.items()})
            if self.slice_index_key is not None:
                sample[self.slice_index_key] = index
            samples.append(sample)
        return samples
