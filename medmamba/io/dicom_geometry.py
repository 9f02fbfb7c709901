"""Slice geometry of DICOM images: ordering along the slice normal, spacing checks, affines.

DICOM patient coordinates are LPS. A volume is built with index ``i`` along a row (increasing
column number), ``j`` down the columns (increasing row number) and ``k`` along the slice normal
``row_dir x col_dir`` (slices sorted by their position on it, never by file name or
``InstanceNumber``). Its affine maps ``(i, j, k)`` to LPS millimetres; :data:`LPS_TO_RAS` turns it into
the RAS affine that NIfTI and MONAI use.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from medmamba.io.errors import ScanLoadError

__all__ = [
    "LPS_TO_RAS",
    "PlaneGeometry",
    "SliceSpacing",
    "affine_lps",
    "check_slice_spacing",
    "sort_by_position",
]

#: Flips x and y: LPS <-> RAS (the matrix is its own inverse).
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


@dataclass(frozen=True)
class PlaneGeometry:
    """In-plane geometry shared by all slices of a stack.

    Attributes:
        row_dir: Unit LPS direction of increasing column index (``ImageOrientationPatient[:3]``).
        col_dir: Unit LPS direction of increasing row index (``ImageOrientationPatient[3:]``).
        row_spacing: Distance between rows in mm (``PixelSpacing[0]``).
        col_spacing: Distance between columns in mm (``PixelSpacing[1]``).
    """

    row_dir: np.ndarray
    col_dir: np.ndarray
    row_spacing: float
    col_spacing: float

    @property
    def normal(self) -> np.ndarray:
        """Unit slice normal ``row_dir x col_dir``."""
        n = np.cross(self.row_dir, self.col_dir)
        return n / np.linalg.norm(n)

    @classmethod
    def from_values(cls, iop: Sequence[float], pixel_spacing: Sequence[float], where: str) -> PlaneGeometry:
        """Build from ``ImageOrientationPatient`` and ``PixelSpacing`` values.

        Args:
            iop: Six direction cosines.
            pixel_spacing: ``(row spacing, column spacing)`` in mm.
            where: File or series named in error messages.

        Returns:
            The plane geometry (directions normalised).

        Raises:
            ScanLoadError: If the values are malformed, degenerate or not finite.
        """
        vals = np.asarray([float(v) for v in iop], dtype=float)
        if vals.shape != (6,) or not np.all(np.isfinite(vals)):
            raise ScanLoadError(f"{where}: ImageOrientationPatient={list(iop)!r}; expected 6 finite direction cosines")
        row, col = vals[:3], vals[3:]
        nr, nc = np.linalg.norm(row), np.linalg.norm(col)
        if nr < 1e-6 or nc < 1e-6 or abs(float(np.dot(row / nr, col / nc))) > 1e-3:
            raise ScanLoadError(
                f"{where}: ImageOrientationPatient={list(iop)!r}; expected two orthogonal unit vectors"
            )
        sp = np.asarray([float(v) for v in pixel_spacing], dtype=float)
        if sp.shape != (2,) or not np.all(np.isfinite(sp)) or np.any(sp <= 0):
            raise ScanLoadError(f"{where}: PixelSpacing={list(pixel_spacing)!r}; expected two positive numbers (mm)")
        return cls(row_dir=row / nr, col_dir=col / nc, row_spacing=float(sp[0]), col_spacing=float(sp[1]))

    def same_as(self, other: PlaneGeometry, tol: float = 1e-3) -> bool:
        """Whether two planes have the same orientation and pixel spacing (within ``tol``)."""
        return (
            np.allclose(self.row_dir, other.row_dir, atol=tol)
            and np.allclose(self.col_dir, other.col_dir, atol=tol)
            and abs(self.row_spacing - other.row_spacing) <= tol * max(1.0, self.row_spacing)
            and abs(self.col_spacing - other.col_spacing) <= tol * max(1.0, self.col_spacing)
        )


@dataclass(frozen=True)
class SliceSpacing:
    """Spacing of sorted slices along the normal.

    Attributes:
        distances: Sorted positions along the normal (mm).
        spacing: The median distance between neighbours (mm), or ``None`` for a single slice.
        uneven: Whether some neighbour distance differs from the median by more than the tolerance.
        message: Human-readable description of the irregularities ("" when even).
    """

    distances: np.ndarray
    spacing: float | None
    uneven: bool
    message: str


def sort_by_position(positions: np.ndarray, normal: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Order slices by the projection of their ``ImagePositionPatient`` on the slice normal.

    Args:
        positions: ``(n, 3)`` LPS positions of the slices' first voxel.
        normal: Unit slice normal.

    Returns:
        ``(order, distances)``: indices that sort the slices, and the sorted distances (mm).
    """
    pos = np.asarray(positions, dtype=float).reshape(-1, 3)
    dist = pos @ np.asarray(normal, dtype=float)
    order = np.argsort(dist, kind="stable")
    return order, dist[order]


def check_slice_spacing(distances: np.ndarray, where: str, tolerance: float = 0.05) -> SliceSpacing:
    """Check sorted slice distances for duplicates, gaps and uneven spacing.

    Args:
        distances: Sorted positions along the normal (mm).
        where: Series named in messages.
        tolerance: Relative tolerance on each neighbour distance against the median (plus 0.01 mm).

    Returns:
        The spacing report (``uneven`` set for gaps and irregular spacing).

    Raises:
        ScanLoadError: If two slices share a position (several stacks or echoes in one series).
        ValueError: If ``tolerance`` is negative.
    """
    if tolerance < 0:
        raise ValueError(f"tolerance must be >= 0, got {tolerance!r}")
    d = np.asarray(distances, dtype=float)
    if d.size < 2:
        return SliceSpacing(distances=d, spacing=None, uneven=False, message="")
    steps = np.diff(d)
    dup = np.flatnonzero(steps < 1e-3)
    if dup.size:
        raise ScanLoadError(
            f"{where}: {dup.size} pair(s) of slices share a position along the slice normal "
            f"(e.g. {d[dup[0]]:.3f} mm); the series holds several stacks (echoes, phases or repeated acquisitions) "
            "- split it or pick one stack"
        )
    median = float(np.median(steps))
    bad = np.flatnonzero(np.abs(steps - median) > tolerance * median + 0.01)
    if bad.size == 0:
        return SliceSpacing(distances=d, spacing=median, uneven=False, message="")
    parts = []
    for b in bad[:5]:
        missing = steps[b] / median - 1.0
        hint = f" (~{missing:.0f} slice(s) missing)" if missing >= 0.5 else ""
        parts.append(f"{steps[b]:.3f} mm between slices {b} and {b + 1} at {d[b]:.3f} and {d[b + 1]:.3f} mm{hint}")
    more = f" and {bad.size - 5} more" if bad.size > 5 else ""
    message = (
        f"{where}: uneven slice spacing: median {median:.3f} mm, but " + "; ".join(parts) + more
    )
    return SliceSpacing(distances=d, spacing=median, uneven=True, message=message)


def affine_lps(plane: PlaneGeometry, first_position: np.ndarray, step: np.ndarray) -> np.ndarray:
    """The 4x4 affine from voxel ``(i, j, k)`` to LPS mm.

    Args:
        plane: In-plane geometry.
        first_position: ``ImagePositionPatient`` of the first sorted slice.
        step: LPS vector from one slice to the next (normal x spacing, or sheared for gantry tilt).

    Returns:
        The affine.
    """
    aff = np.eye(4)
    aff[:3, 0] = plane.row_dir * plane.col_spacing
    aff[:3, 1] = plane.col_dir * plane.row_spacing
    aff[:3, 2] = np.asarray(step, dtype=float)
    aff[:3, 3] = np.asarray(first_position, dtype=float)
    return aff
