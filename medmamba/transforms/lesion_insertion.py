"""Synthetic lesion insertion: random white-matter lesions in training volumes and 2.5D slice stacks.

The tissue label values default to those of the default data set's ``tissue.nii.gz`` (white matter
3, :data:`medmamba.data.synthetic.TISSUE_LABELS`); the classification bundle passes ``wm_label``
explicitly (:data:`medmamba.apps.classification.WHITE_MATTER_LABEL`).
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform, Randomizable

from medmamba.transforms.lesion_labels import as_type_of, check_positive_int

__all__ = ["RandLesionInsertd", "RandStackLesionInsertd", "intensity_white_matter"]


def intensity_white_matter(
    image: np.ndarray, tissue: np.ndarray, wm_label: int = 3, other_labels: Sequence[int] = (1, 2), sigma: float = 1.0
) -> np.ndarray:
    """Brain voxels that an intensity mixture would call white matter, whatever their label.

    The image is smoothed (Gaussian, ``sigma`` voxels, against noise) and each brain voxel
    (``tissue > 0``) goes to the label whose median smoothed intensity is nearest to its own, among
    ``wm_label`` and ``other_labels`` (CSF and grey matter): a nearest-mean rule, for any contrast;
    a binary opening by one voxel then drops the thin bands that smoothing leaves along the borders
    of white matter.
    On the MNI152 template's labels the brainstem, the thalamus and parts of the cerebellum are grey
    matter although they are as bright as white matter on T1; an intensity-mixture reference of a
    real scan (:func:`medmamba.data.fsl_template.intensity_mixture_labels`) calls them white matter.

    Args:
        image: Intensities, the shape of ``tissue`` (a volume or a slice).
        tissue: Tissue labels (0 outside the brain).
        wm_label: The white-matter label.
        other_labels: The other tissue labels whose medians compete (labels absent from ``tissue`` are skipped).
        sigma: Smoothing in voxels (0: none).

    Returns:
        Boolean mask, the shape of ``tissue``: the labels' white matter, and the brain voxels
        nearest the white-matter median (opened) where another label is present.

    Raises:
        ValueError: If the shapes differ.
    """
    from scipy import ndimage

    image = np.asarray(image, dtype=np.float32)
    tissue = np.asarray(tissue)
    if image.shape != tissue.shape:
        raise ValueError(f"image shape {image.shape} and tissue shape {tissue.shape} differ")
    wm = tissue == wm_label
    others = [c for c in other_labels if c != wm_label and np.any(tissue == c)]
    if not wm.any() or not others:
        return wm
    smooth = ndimage.gaussian_filter(image, sigma) if sigma > 0 else image
    medians = np.array([np.median(smooth[tissue == c]) for c in (wm_label, *others)], dtype=np.float32)
    nearest = np.argmin(np.abs(smooth[..., None] - medians), axis=-1)
    return ndimage.binary_opening((tissue > 0) & (nearest == 0)) | wm


class RandLesionInsertd(Randomizable, MapTransform):
    """Insert random synthetic lesions into the white matter of a training volume (augmentation).

    With probability ``prob`` a volume receives 1 .. ``max_lesions`` lesions. Each one is an
    irregular blob (a sphere of radius ``radius`` voxels, stretched per axis and distorted by smooth
    noise) centred on a white-matter voxel (``tissue == wm_label``) and clipped to the white matter
    and its one-voxel rim (:func:`medmamba.data.synthetic.white_matter_rim`: a dark blob running into
    grey matter or CSF is invisible there, and labelling it lesion teaches false positives on normal
    cortex); its voxels take ``ref + factor * (wm - ref)``, where ``wm`` is the volume's
    white-matter median, ``ref`` the volume's lowest intensity (the air after MR normalisation, so
    ``factor`` acts as an intensity ratio) and ``factor`` is drawn from ``dark_factor``
    (hypointense, probability ``dark_prob``) or ``bright_factor`` (hyperintense), with a soft edge,
    a 5 % texture and noise of the image's own level. The result is clipped to the input's own value
    range (``clip=True``). The lesion mask is updated, so the slice labels (and
    :class:`medmamba.transforms.SliceStackd`'s foreground sampling) follow.

    When to clip: the insertion runs after intensity normalisation, so a synthetic lesion should look
    like a real one after that normalisation. If the scans are clipped at an upper percentile
    (:class:`medmamba.transforms.MRNormalize` with ``upper`` set, the slice-label recipe), a real
    hyperintense lesion is never brighter than the scan's clip value, and unclipped synthetic lesions
    would reach values no real voxel has: a network then learns that shortcut ("the brightest voxels
    are lesions"); in a measured run it put confident outputs on clip-level voxels of lesion-free
    scans (see the classification bundle's README). Keep ``clip=True`` there. If the scans are not
    clipped at the top (``upper=None``, the lesion-map recipe), a real hyperintense lesion keeps its
    1.3-1.6x white-matter intensity; use ``clip=False`` so the synthetic ones do too (clipping them
    to the stack's maximum would flatten them to the brightest white matter).

    Seventeen lesions in 14 training subjects are too few to learn "abnormal blob in white matter"
    rather than those lesions; inserting new ones every epoch is the copy-paste / synthetic-lesion
    augmentation used for lesion detection with small training sets. It needs tissue labels (the
    default data set's ``tissue.nii.gz``); it is only used for training.

    Args:
        keys: the image key (one).
        mask_key: the lesion mask key (updated).
        tissue_key: the tissue label key (read); ``None`` disables the transform (no tissue labels).
        wm_label: white-matter label value (3: the default data set's ``tissue.nii.gz``).
        prob: probability of inserting lesions into a volume.
        max_lesions: most lesions per volume (at least 1 when inserting).
        radius: range of the lesion radius in voxels.
        dark_factor: range of the intensity ratio of hypointense lesions.
        bright_factor: range of the intensity ratio of hyperintense lesions.
        dark_prob: probability that a lesion is hypointense.
        white_matter_by_intensity: also centre lesions on brain voxels that an intensity mixture would
            call white matter: whose smoothed intensity lies nearer the white-matter median than the
            CSF and grey-matter medians of the tissue labels (any contrast). On the MNI152 template's
            labels the brainstem, the thalamus and parts of the cerebellum are grey matter although
            they are as bright as white matter on T1, so without it no lesion is ever inserted there,
            and lesions planted there in real scans are missed. ``False`` (default): the labels' white
            matter only, as before.
        near_csf_prob: probability that a lesion is centred on white matter next to CSF (at most
            ``near_csf_distance`` voxels from a ``csf_label`` voxel: around the ventricles and deep
            sulci) instead of anywhere in the white matter. 0 (default) draws nothing extra, so the
            results are those of the transform without it.
        near_csf_distance: how near to CSF (voxels) such a centre lies.
        csf_label: the CSF label value of the tissue labels (1: the default data set's).
        clip: clip the result to the input's ``[min, max]`` (per channel of a volume, over the whole
            stack for :class:`RandStackLesionInsertd`).
        allow_missing_keys: leave volumes without the tissue or mask key unchanged.
    """

    def __init__(
        self,
        keys: KeysCollection,
        mask_key: str = "lesion",
        tissue_key: str | None = "tissue",
        wm_label: int = 3,
        prob: float = 0.5,
        max_lesions: int = 3,
        radius: Sequence[float] = (2.0, 4.5),
        dark_factor: Sequence[float] = (0.35, 0.6),
        bright_factor: Sequence[float] = (1.3, 1.6),
        dark_prob: float = 0.5,
        clip: bool = True,
        allow_missing_keys: bool = False,
        white_matter_by_intensity: bool = False,
        near_csf_prob: float = 0.0,
        near_csf_distance: float = 2.0,
        csf_label: int = 1,
    ) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        if len(self.keys) != 1:
            raise ValueError(f"keys must name one image, got {list(self.keys)}.")
        for name, value in (("prob", prob), ("dark_prob", dark_prob), ("near_csf_prob", near_csf_prob)):
            if not 0.0 <= float(value) <= 1.0:
                raise ValueError(f"{name} must be a probability in [0, 1], got {value!r}.")
        for name, rng_ in (("radius", radius), ("dark_factor", dark_factor), ("bright_factor", bright_factor)):
            if len(rng_) != 2 or not 0 < float(rng_[0]) <= float(rng_[1]):
                raise ValueError(f"{name} must be a (low, high) pair with 0 < low <= high, got {rng_!r}.")
        self.mask_key = mask_key
        self.tissue_key = tissue_key
        self.wm_label = int(wm_label)
        self.prob = float(prob)
        self.max_lesions = check_positive_int("max_lesions", max_lesions)
        self.radius = (float(radius[0]), float(radius[1]))
        self.dark_factor = (float(dark_factor[0]), float(dark_factor[1]))
        self.bright_factor = (float(bright_factor[0]), float(bright_factor[1]))
        self.dark_prob = float(dark_prob)
        self.clip = bool(clip)
        self.white_matter_by_intensity = bool(white_matter_by_intensity)
        if not float(near_csf_distance) > 0:
            raise ValueError(f"near_csf_distance must be a positive number of voxels, got {near_csf_distance!r}.")
        self.near_csf_prob = float(near_csf_prob)
        self.near_csf_distance = float(near_csf_distance)
        self.csf_label = int(csf_label)

    def randomize(self, data: Any = None) -> int:  # type: ignore[override]
        """The number of lesions to insert this time (0: none)."""
        if self.R.rand() >= self.prob:
            return 0
        return int(self.R.randint(1, self.max_lesions + 1))

    def _placement_tissue(self, tissue: np.ndarray, image: np.ndarray) -> np.ndarray:
        """The tissue labels lesions are placed by: with ``white_matter_by_intensity``, brain voxels of
        white-matter intensity (:func:`intensity_white_matter`) relabelled ``wm_label``."""
        if not self.white_matter_by_intensity:
            return tissue
        out = tissue.copy()
        out[intensity_white_matter(image, tissue, self.wm_label)] = self.wm_label
        return out

    def _lesion_region(self, tissue: np.ndarray) -> np.ndarray:
        """Where an inserted lesion may lie: the white matter and its one-voxel rim in the brain."""
        from medmamba.data.synthetic import white_matter_rim

        return white_matter_rim(tissue, self.wm_label)

    def _near_csf(self, tissue: np.ndarray, wm: np.ndarray) -> np.ndarray | None:
        """White matter at most ``near_csf_distance`` voxels from CSF; ``None`` when ``near_csf_prob`` is 0."""
        from scipy import ndimage

        if self.near_csf_prob <= 0.0:
            return None
        csf = tissue == self.csf_label
        if not csf.any():
            return np.zeros_like(wm)
        return wm & (ndimage.distance_transform_edt(~csf) <= self.near_csf_distance)

    def _blob(
        self, wm: np.ndarray, brain: np.ndarray, near_csf: np.ndarray | None = None
    ) -> tuple[tuple[slice, ...], np.ndarray] | None:
        from scipy import ndimage

        centres = np.argwhere(wm)
        # drawn only when asked for, so that without it the random stream is the one it always was
        if near_csf is not None and self.R.rand() < self.near_csf_prob and near_csf.any():
            centres = np.argwhere(near_csf)
        if len(centres) == 0:
            return None
        centre = centres[self.R.randint(len(centres))]
        r = float(self.R.uniform(*self.radius))
        half = int(np.ceil(r * 1.8)) + 1
        lo = np.maximum(centre - half, 0)
        hi = np.minimum(centre + half + 1, wm.shape)
        box = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))
        idx = np.indices(tuple(int(b - a) for a, b in zip(lo, hi)), dtype=np.float32)
        anis = self.R.uniform(0.7, 1.3, 3)
        dist = np.sqrt(sum(((idx[d] + lo[d] - centre[d]) * anis[d]) ** 2 for d in range(3))) / r
        noise = ndimage.gaussian_filter(self.R.normal(size=dist.shape), sigma=max(r / 2.5, 0.8))
        noise /= noise.std() + 1e-6
        blob = ((dist + 0.3 * noise) < 1.0) & brain[box]
        return (box, blob) if blob.any() else None

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        """Insert lesions into the volumes under ``keys`` (see the class description)."""
        return self._insert(dict(data), self.randomize())

    def _insert(self, d: dict[Hashable, Any], n: int, relabel: bool = True) -> dict[Hashable, Any]:
        """Insert ``n`` lesions (drawn by :meth:`randomize`) into ``d`` in place of its volumes
        (``relabel``: apply :meth:`_placement_tissue`; off when the caller did)."""
        from scipy import ndimage

        if n == 0 or self.tissue_key is None:
            return d
        for key in self.key_iterator(d):
            if self.mask_key not in d or self.tissue_key not in d:
                if self.allow_missing_keys:
                    continue
                raise KeyError(f"RandLesionInsertd needs {self.mask_key!r} and {self.tissue_key!r} in the data.")
            img = d[key]
            x = torch.as_tensor(img).detach().cpu().float().numpy()
            if x.ndim != 4:
                raise ValueError(f"data[{key!r}] must be a channel-first volume (C, H, W, D), got shape {x.shape}.")
            tissue = torch.as_tensor(d[self.tissue_key]).detach().cpu().numpy()[0]
            if relabel:
                tissue = self._placement_tissue(tissue, x[0])
            wm = tissue == self.wm_label
            if not wm.any():
                continue
            brain = self._lesion_region(tissue)
            near_csf = self._near_csf(tissue, wm)
            out = x.copy()
            ref = float(np.percentile(x[0], 0.1))
            wm_level = float(np.median(x[0][wm]))
            pairs = np.diff(x[0], axis=0)[wm[1:] & wm[:-1]]  # noise level from neighbouring white-matter voxels
            sigma = float(np.std(pairs) / np.sqrt(2.0)) if pairs.size > 1 else 0.0
            mask = torch.as_tensor(d[self.mask_key]).detach().cpu().numpy().copy()
            for _ in range(n):
                found = self._blob(wm, brain, near_csf)
                if found is None:
                    continue
                box, blob = found
                if self.R.rand() < self.dark_prob:
                    factor = float(self.R.uniform(*self.dark_factor))
                else:
                    factor = float(self.R.uniform(*self.bright_factor))
                value = ref + factor * (wm_level - ref)
                soft = ndimage.gaussian_filter(blob.astype(np.float32), sigma=0.6)
                soft = np.maximum(soft, blob.astype(np.float32) * 0.9)
                texture = value * (1.0 + 0.05 * self.R.normal(size=blob.shape)) + sigma * self.R.normal(size=blob.shape)
                for c in range(out.shape[0]):
                    region = out[(c, *box)]
                    out[(c, *box)] = region * (1.0 - soft) + texture.astype(np.float32) * soft
                mask[(slice(None), *box)] = np.maximum(mask[(slice(None), *box)], blob[None].astype(mask.dtype))
            if self.clip:
                lo = x.reshape(x.shape[0], -1).min(axis=1).reshape(-1, 1, 1, 1)
                hi = x.reshape(x.shape[0], -1).max(axis=1).reshape(-1, 1, 1, 1)
                out = np.clip(out, lo, hi)
            d[key] = as_type_of(img, out)
            d[self.mask_key] = as_type_of(d[self.mask_key], mask)
        return d


class RandStackLesionInsertd(RandLesionInsertd):
    """Insert a random synthetic lesion into a 2.5D slice stack, centred on its middle slice.

    The stack-level form of :class:`RandLesionInsertd`, applied after
    :class:`medmamba.transforms.SliceStackd`: the image is a stack ``(2k+1, H, W)`` of neighbouring
    slices, the lesion mask and the tissue labels are the middle slice ``(1, H, W)``. With
    probability ``prob`` one lesion (up to ``max_lesions``) is placed on a white-matter voxel of the
    middle slice, extends into the neighbouring slices as a 3D blob would (clipped to the middle
    slice's brain), and the middle slice's lesion mask is updated.

    Why at the stack level: a volume-level insertion makes the mid-brain slices (where white matter
    is) positive far more often than the others, and a network can reach a low loss by learning
    *where* a slice is instead of *what* a lesion looks like. Inserting into a sampled stack with
    probability 0.5 gives every white-matter slice the same chance to be positive, so only the lesion
    itself separates the classes.

    Args:
        keys: the image key (one).
        mask_key: the lesion mask key (middle slice, ``(1, H, W)``; updated).
        tissue_key: the tissue label key (middle slice, ``(1, H, W)``; read).
        kwargs: the other arguments of :class:`RandLesionInsertd` (``prob``, ``max_lesions`` (default
            1 here), ``radius``, ``dark_factor``, ``bright_factor``, ``dark_prob``, ``wm_label``...).
    """

    def __init__(self, keys: KeysCollection, mask_key: str = "lesion", tissue_key: str | None = "tissue", **kwargs: Any) -> None:
        kwargs.setdefault("max_lesions", 1)
        super().__init__(keys, mask_key=mask_key, tissue_key=tissue_key, **kwargs)
        #: the label the side slices' white matter gets, so that lesion centres lie on the middle slice
        self._side_label = self.wm_label + 1 if self.wm_label != 1 else 2

    def _lesion_region(self, tissue: np.ndarray) -> np.ndarray:
        """The white matter (side slices' included) and its one-voxel rim."""
        return super()._lesion_region(np.where(tissue == self._side_label, self.wm_label, tissue))

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        if self.tissue_key is None:
            return d
        key = self.keys[0]
        if key not in d or self.mask_key not in d or self.tissue_key not in d:
            if self.allow_missing_keys:
                return d
            raise KeyError(f"RandStackLesionInsertd needs {key!r}, {self.mask_key!r} and {self.tissue_key!r} in the data.")
        img, mask, tissue = (torch.as_tensor(d[k]).detach().cpu() for k in (key, self.mask_key, self.tissue_key))
        if img.ndim != 3:
            raise ValueError(f"data[{key!r}] must be a slice stack (2k+1, H, W), got shape {tuple(img.shape)}.")
        depth = img.shape[0]
        if depth % 2 != 1:
            raise ValueError(f"data[{key!r}] must hold an odd number of slices (2k+1), got {depth}.")
        for name, t in ((self.mask_key, mask), (self.tissue_key, tissue)):
            if tuple(t.shape) != (1, *img.shape[1:]):
                raise ValueError(f"data[{name!r}] must be the middle slice (1, H, W) = {(1, *img.shape[1:])}, got {tuple(t.shape)}.")
        n = self.randomize()  # the same first draw as the volume form's
        if n == 0:
            return d
        mid = depth // 2
        # placed by the middle slice's labels (and intensities), as a (1, H, W, 2k+1) volume: white
        # matter only on the middle slice (lesion centres), brain on all
        tissue = torch.as_tensor(self._placement_tissue(tissue[0].numpy(), img[mid].float().numpy())[None])
        tissue_vol = tissue[..., None].repeat(1, 1, 1, depth).clone()
        others = [i for i in range(depth) if i != mid]
        side = tissue_vol[..., others]
        side[side == self.wm_label] = self._side_label
        tissue_vol[..., others] = side
        mask_vol = torch.zeros(1, *img.shape[1:], depth, dtype=mask.dtype)
        mask_vol[..., mid] = mask
        vol = {key: img.permute(1, 2, 0)[None], self.mask_key: mask_vol, self.tissue_key: tissue_vol}
        out = self._insert(vol, n, relabel=False)
        d[key] = as_type_of(d[key], torch.as_tensor(out[key])[0].permute(2, 0, 1).numpy())
        d[self.mask_key] = as_type_of(d[self.mask_key], torch.as_tensor(out[self.mask_key])[..., mid].numpy())
        return d
