"""What a reader returns, and the checks every reader shares.

A point file is a :class:`PointFile`: xyz plus the normals, colours and other per-point
values the file carries (kept even though the model reads xyz only). A mesh is a
``trimesh.Trimesh`` (scenes already flattened). The checks here refuse silent wrong
results: a declared size above the limit (the limits themselves are in ``limits``), a
transposed ``(3, N)`` array, complex or non-numeric values, NaN coordinates, faces pointing
past the vertices.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

import numpy as np

from ...errors import DataError
from .limits import DEFAULT_MAX_POINTS_PER_FILE, MAX_COLUMNS, VALUES_PER_POINT

__all__ = ["PointFile", "DEFAULT_MAX_POINTS_PER_FILE", "MAX_COLUMNS", "VALUES_PER_POINT", "check_declared",
           "check_width", "cloud_columns", "check_points", "check_dtype"]


@dataclass(frozen=True)
class PointFile:
    """Points (n, 3) float64 of one file; ``normals`` (n, 3) and ``colors`` (n, 3 or 4, 0..255)
    when the file has them; ``fields`` holds any other per-point column by name."""

    points: np.ndarray
    normals: np.ndarray | None = None
    colors: np.ndarray | None = None
    fields: Mapping[str, np.ndarray] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.points)


def check_declared(path: Path | str, what: str, count: int, limit: int) -> None:
    """Refuse a declared size above the limit, before anything is read or allocated."""
    if count < 0:
        raise DataError(f"{what}: negative count {count} declared", str(path))
    if count > limit:
        raise DataError(f"{what}: {count:,} declared, above data.max_points_per_file={limit:,} "
                        "(raise the limit if the file is genuine)", str(path))


def check_dtype(path: Path | str, what: str, dtype: np.dtype) -> None:
    """Real numbers only: complex values would lose their imaginary part, strings and
    booleans are not coordinates."""
    dtype = np.dtype(dtype)
    if dtype.kind not in "iuf":
        kind = "complex" if dtype.kind == "c" else str(dtype)
        raise DataError(f"{what} holds {kind} values ({dtype}); expected real numbers (integer or float)",
                        str(path))


def check_width(path: Path | str, what: str, rows: int, cols: int, limit: int) -> None:
    """Refuse records wider than :data:`MAX_COLUMNS` values, or more than
    ``VALUES_PER_POINT * limit`` values in all, before anything is read."""
    if cols > MAX_COLUMNS:
        raise DataError(f"{what} has {cols:,} values per row; expected at most {MAX_COLUMNS} (xyz plus per-point "
                        "values such as normals)", str(path))
    if rows * cols > VALUES_PER_POINT * limit:
        raise DataError(f"{what} holds {rows:,} x {cols} = {rows * cols:,} values, above {VALUES_PER_POINT} x "
                        f"data.max_points_per_file={VALUES_PER_POINT * limit:,} (raise the limit if the file is "
                        "genuine)", str(path))


def cloud_columns(path: Path | str, what: str, shape: tuple[int, ...], dtype: np.dtype, limit: int) -> int:
    """Check a declared array shape is one cloud ``(num_points, 3+)`` (or ``(1, num_points, 3+)``)
    before reading it; returns the number of points.

    ``(3, N)`` and other arrays with no more rows than columns are refused rather than read
    as a handful of points with N values each."""
    check_dtype(path, what, dtype)
    shape = tuple(int(s) for s in shape)
    core = shape[1:] if len(shape) == 3 and shape[0] == 1 else shape
    if len(core) != 2 or core[1] < 3:
        raise DataError(f"{what} has shape {shape}; expected one cloud of shape (num_points, 3) "
                        "(extra columns such as normals are kept as fields)", str(path))
    rows, cols = core
    check_declared(path, f"{what} points", rows, limit)
    if rows <= cols:
        hint = " (transposed? use array.T)" if cols > 3 and rows <= 6 else ""
        raise DataError(f"{what} has shape {shape}: ambiguous, {rows} points of {cols} values each{hint}; "
                        "expected (num_points, 3+) with more points than values per point", str(path))
    check_width(path, what, rows, cols, limit)
    return rows


def check_points(path: Path | str, points: np.ndarray) -> np.ndarray:
    """Non-empty, finite (n, 3) float64 coordinates."""
    with np.errstate(invalid="ignore", over="ignore"):  # non-finite values are reported below
        points = np.asarray(points, dtype=np.float64)
    if points.ndim != 2 or points.shape[1] != 3:
        raise DataError(f"points have shape {points.shape}; expected (num_points, 3)", str(path))
    if len(points) == 0:
        raise DataError("empty: the file holds no vertices or points", str(path))
    bad = ~np.isfinite(points).all(axis=1)
    if bad.any():
        raise DataError(f"point {int(np.argmax(bad))} has a NaN or infinite coordinate "
                        f"({int(bad.sum())} such points)", str(path))
    return points
