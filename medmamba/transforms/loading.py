"""MONAI transforms that load scans with :func:`medmamba.data.load_scan`."""

from __future__ import annotations

import os
from collections.abc import Collection, Hashable, Mapping
from typing import Any

from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform, Transform

from medmamba.data.dicom_reader import OnGap, OnMixed
from medmamba.data.loading import load_scan

__all__ = ["LoadScan", "LoadScand"]


class LoadScan(Transform):
    """Load a DICOM folder, a DICOM file or a NIfTI file into a channel-first ``MetaTensor``.

    Args:
        series_uid: ``SeriesInstanceUID`` to pick from folders with several series.
        on_gap: ``"error"`` or ``"warn"`` for missing slices / uneven spacing.
        expected_modalities: Refuse DICOM data of other modalities.
        allow_nonfinite: Accept NaN/inf voxels.
        on_mixed: A DICOM series of several geometries (a localizer, two matrix sizes): ``"error"``
            refuses it, ``"largest"`` loads its largest consistent stack with a warning.
    """

    def __init__(
        self,
        series_uid: str | None = None,
        on_gap: OnGap = "error",
        expected_modalities: Collection[str] | None = None,
        allow_nonfinite: bool = False,
        on_mixed: OnMixed = "error",
    ) -> None:
        if on_gap not in ("error", "warn"):
            raise ValueError(f"on_gap must be 'error' or 'warn', got {on_gap!r}")
        if on_mixed not in ("error", "largest"):
            raise ValueError(f"on_mixed must be 'error' or 'largest', got {on_mixed!r}")
        self.series_uid = series_uid
        self.on_gap = on_gap
        self.on_mixed = on_mixed
        self.expected_modalities = expected_modalities
        self.allow_nonfinite = allow_nonfinite

    def __call__(self, path: str | os.PathLike[str], series_uid: str | None = None) -> MetaTensor:
        """Load ``path`` (``series_uid`` overrides the one given at construction)."""
        if not isinstance(path, (str, os.PathLike)):
            raise TypeError(f"path must be a str or os.PathLike, got {type(path).__name__}")
        return load_scan(
            path,
            series_uid if series_uid is not None else self.series_uid,
            on_gap=self.on_gap,
            expected_modalities=self.expected_modalities,
            allow_nonfinite=self.allow_nonfinite,
            on_mixed=self.on_mixed,
        )


class LoadScand(MapTransform):
    """Dictionary version of :class:`LoadScan`.

    Args:
        keys: Keys of the paths to load.
        series_uid_key: Optional key of the data dict holding a ``SeriesInstanceUID`` per item.
        on_gap: ``"error"`` or ``"warn"``.
        expected_modalities: Refuse DICOM data of other modalities.
        allow_nonfinite: Accept NaN/inf voxels.
        on_mixed: ``"error"`` or ``"largest"`` (see :class:`LoadScan`).
        allow_missing_keys: Skip keys that are absent.
    """

    def __init__(
        self,
        keys: KeysCollection,
        series_uid_key: str | None = None,
        on_gap: OnGap = "error",
        expected_modalities: Collection[str] | None = None,
        allow_nonfinite: bool = False,
        allow_missing_keys: bool = False,
        on_mixed: OnMixed = "error",
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.loader = LoadScan(
            on_gap=on_gap, expected_modalities=expected_modalities, allow_nonfinite=allow_nonfinite, on_mixed=on_mixed
        )
        self.series_uid_key = series_uid_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        """Replace each path under ``keys`` by its loaded image."""
        d = dict(data)
        uid = d.get(self.series_uid_key) if self.series_uid_key is not None else None
        for key in self.key_iterator(d):
            d[key] = self.loader(d[key], series_uid=uid)
        return d
