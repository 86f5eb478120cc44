"""LAS / LAZ lidar through laspy (the ``any2point[lidar]`` extra, with the lazrs backend for
LAZ). The point count of the header is checked before laspy reads the points."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ...errors import DataError
from .records import PointFile, check_declared, check_points

__all__ = ["read_las"]

_EXTRA = "pip install 'any2point[lidar]'"


def read_las(path: Path, limit: int) -> PointFile:
    try:
        import laspy
    except ImportError:
        raise DataError(f"reading {path.suffix} files needs laspy: {_EXTRA}", str(path)) from None
    try:
        with laspy.open(str(path)) as reader:
            check_declared(path, "LAS points", int(reader.header.point_count), limit)
            if path.suffix.lower() == ".laz" and not laspy.LazBackend.detect_available():
                raise DataError(f"reading .laz files needs a LAZ backend: {_EXTRA}", str(path))
            las = reader.read()
    except DataError:
        raise
    except Exception as exc:  # laspy.LaspyException, struct / numpy errors on short files
        raise DataError(f"cannot read this {path.suffix} file (laspy: {type(exc).__name__}: {exc}); expected a valid "
                        "LAS 1.0-1.4 or LAZ file", str(path)) from None
    points = check_points(path, np.stack([np.asarray(las.x), np.asarray(las.y), np.asarray(las.z)], axis=1))
    names = list(las.point_format.dimension_names)
    colors = None
    if all(k in names for k in ("red", "green", "blue")):  # 16-bit colour, or 8-bit values in 16-bit fields
        rgb = np.stack([np.asarray(las[k]) for k in ("red", "green", "blue")], axis=1)
        colors = (rgb >> 8 if rgb.size and rgb.max() > 255 else rgb).astype(np.uint8)
    skip = {"X", "Y", "Z", "red", "green", "blue"}
    return PointFile(points, None, colors, {k: np.asarray(las[k]) for k in names if k not in skip})
