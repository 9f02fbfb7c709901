"""Refuse (or flag) a scan whose acquisition says it is not the MR weighting a model was trained on.

Both bundles are trained on T1-weighted scans; on an inverted, T2-like contrast the segmentation's
mean Dice is 0.12-0.17 and the classifier ranks at chance (the shift suite, ``docs/real-scans.md``),
and both still return a result. :class:`CheckMRWeighting` reads the weighting the loader's metadata
imply (:func:`medmamba.io.mr_weighting`: DICOM echo, repetition and inversion times, b-value and
image type; a BIDS file name and sidecar) and, where it is known and not an expected one, raises a
:class:`~medmamba.io.errors.ScanLoadError` naming the parameters (the batch pipelines record it as
the case's failure reason) or records a warning. A scan without acquisition parameters (a NIfTI
file outside BIDS, an anonymised export) passes: the weighting is unknown, not wrong.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any, Literal

from monai.config import KeysCollection
from monai.transforms import MapTransform, Transform

from medmamba.io.errors import ScanLoadError
from medmamba.io.mr_acquisition import describe_acquisition, mr_weighting
from medmamba.transforms.scan_checks import scan_source

__all__ = ["CheckMRWeighting", "CheckMRWeightingd", "OnMismatch"]

OnMismatch = Literal["error", "warn", "ignore"]
_ON_MISMATCH = ("error", "warn", "ignore")


class CheckMRWeighting(Transform):
    """Check that a loaded MR scan has one of the ``expected`` weightings; pass it through.

    Args:
        expected: weightings the model was trained on (names of :func:`medmamba.io.mr_weighting`,
            e.g. ``("T1",)``).
        on_mismatch: a known, unexpected weighting: ``"error"`` raises, ``"warn"`` records a warning
            (:meth:`check` returns it; the dictionary version stores it), ``"ignore"`` does neither.

    Raises:
        ValueError: an empty ``expected`` or an unknown ``on_mismatch``.
        TypeError: ``expected`` is not a sequence of strings.
    """

    def __init__(self, expected: Sequence[str] = ("T1",), on_mismatch: OnMismatch = "error") -> None:
        if isinstance(expected, str) or not isinstance(expected, Sequence) or not all(isinstance(e, str) for e in expected):
            raise TypeError(f"expected must be a sequence of weighting names, got {expected!r}.")
        if not expected:
            raise ValueError("expected must name at least one weighting, e.g. ('T1',).")
        if on_mismatch not in _ON_MISMATCH:
            raise ValueError(f"on_mismatch must be one of {_ON_MISMATCH}, got {on_mismatch!r}.")
        self.expected = tuple(expected)
        self.on_mismatch = on_mismatch

    def check(self, img: Any) -> list[str]:
        """The warnings for ``img`` (empty when its weighting is expected or unknown).

        Raises:
            ScanLoadError: see :meth:`inspect`.
        """
        return self.inspect(img)[1]

    def inspect(self, img: Any) -> tuple[str, list[str]]:
        """The weighting of ``img`` (``"unknown"`` without metadata) and its warnings.

        Raises:
            ScanLoadError: with ``on_mismatch="error"``, naming the input, the parameters found, the
                weighting they imply and the expected one.
        """
        meta = getattr(img, "meta", None)
        if not isinstance(meta, Mapping):
            return "unknown", []
        weighting, reason = mr_weighting(meta)
        if self.on_mismatch == "ignore" or weighting == "unknown" or weighting in self.expected:
            return weighting, []
        wanted = " or ".join(f"{e}-weighted" for e in self.expected)
        found = f"a {weighting}-weighted acquisition ({reason}; {describe_acquisition(meta)})"
        if self.on_mismatch == "error":
            raise ScanLoadError(
                f"path={scan_source(img)!r}: {found}; expected a {wanted} scan: choose the {wanted} series "
                "of the study (a model trained on one weighting gives meaningless results on another), or "
                "set on_mismatch='warn' to analyse it anyway (the bundles: --weighting_check warn)"
            )
        return weighting, [f"{found}; the model expects a {wanted} scan, so the result is not valid"]

    def __call__(self, img: Any) -> Any:
        """Check ``img`` (raises on a mismatch with ``on_mismatch="error"``) and return it."""
        self.check(img)
        return img


class CheckMRWeightingd(MapTransform):
    """Dictionary version of :class:`CheckMRWeighting`; warnings are appended to ``warnings_key``.

    Place it after loading (the loaders fill the acquisition metadata) and after
    :class:`medmamba.transforms.CheckScand`, whose plausibility warnings share the list.

    Args:
        keys: keys of the images to check.
        expected: see :class:`CheckMRWeighting`.
        on_mismatch: see :class:`CheckMRWeighting`.
        warnings_key: the list of scan warnings to append to (created if missing; prefixed with the
            key when several keys are checked).
        weighting_key: where to store the weighting found (:func:`medmamba.io.mr_weighting`'s name,
            ``"unknown"`` without parameters; ``"key: name"`` joined by ``"; "`` for several keys),
            which the bundles' reports show per case; ``None``: not stored.
        allow_missing_keys: skip absent keys.
    """

    def __init__(
        self,
        keys: KeysCollection,
        expected: Sequence[str] = ("T1",),
        on_mismatch: OnMismatch = "error",
        warnings_key: str = "scan_warnings",
        weighting_key: str | None = "scan_weighting",
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        if not isinstance(warnings_key, str):
            raise TypeError(f"warnings_key must be a str, got {type(warnings_key).__name__}.")
        if weighting_key is not None and not isinstance(weighting_key, str):
            raise TypeError(f"weighting_key must be a str or None, got {type(weighting_key).__name__}.")
        self.checker = CheckMRWeighting(expected=expected, on_mismatch=on_mismatch)
        self.warnings_key = warnings_key
        self.weighting_key = weighting_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        """Check the images under ``keys``; append their warnings to ``data[warnings_key]`` and store
        their weighting under ``data[weighting_key]``."""
        d = dict(data)
        keys = list(self.key_iterator(d))
        found = list(d.get(self.warnings_key) or [])
        names = []
        for key in keys:
            prefix = f"{key}: " if len(keys) > 1 else ""
            weighting, warnings = self.checker.inspect(d[key])
            found += [prefix + w for w in warnings]
            names.append(prefix + weighting)
        d[self.warnings_key] = found
        if self.weighting_key is not None:
            d[self.weighting_key] = "; ".join(names)
        return d
