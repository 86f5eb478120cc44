"""Labelled HDF5 collections (the ModelNet40 and ScanObjectNN releases): read, check, pool.

A file holds ``data`` (n, P, >=3) and ``label`` (n,) or (n, 1). Every problem (unreadable
file, wrong shapes or dtypes, sizes above the limits, NaN / infinite coordinates, a label
outside the class list) is a ``DataError`` naming the file and, where it applies, the
sample index. Shapes are checked against ``data.max_points_per_file`` (per cloud) and
``data.max_points_per_collection`` (the whole file) before anything is read or decompressed.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import DataError
from .formats.records import DEFAULT_MAX_POINTS_PER_FILE, check_declared, check_dtype
from .fps_cache import ArrayCache, cached_fps_indices, file_digest
from .options import DataOptions, optional_limit

__all__ = ["H5Options", "read_labelled_h5", "pool_points", "check_labels", "limits_of", "DEFAULT_MAX_POINTS_PER_COLLECTION"]

# Fallback of data.max_points_per_collection (the YAMLs state it): the largest official file,
# ScanObjectNN PB-T50-RS training, holds 11,416 x 2,048 = 23.4 M points.
DEFAULT_MAX_POINTS_PER_COLLECTION = 50_000_000


@dataclass
class H5Options(DataOptions):
    """The keys of a format of labelled HDF5 collections (null: the default limit)."""

    max_points_per_file: int | None = None  # points of one cloud, checked before reading
    max_points_per_collection: int | None = None  # clouds x points of one file, checked before reading

    def __post_init__(self) -> None:
        super().__post_init__()
        optional_limit("data.max_points_per_file", self.max_points_per_file)
        optional_limit("data.max_points_per_collection", self.max_points_per_collection)


def limits_of(options: H5Options) -> dict[str, int]:
    """The size limits of the data options, as keyword arguments of ``read_labelled_h5``."""
    return {"max_points": options.max_points_per_file or DEFAULT_MAX_POINTS_PER_FILE,
            "max_total": options.max_points_per_collection or DEFAULT_MAX_POINTS_PER_COLLECTION}


def read_labelled_h5(path: Path, data_key: str = "data", label_key: str = "label",
                     max_points: int = DEFAULT_MAX_POINTS_PER_FILE,
                     max_total: int = DEFAULT_MAX_POINTS_PER_COLLECTION) -> tuple[np.ndarray, np.ndarray]:
    """(points (n, P, 3) float32, labels (n,) int64) of one file."""
    import h5py

    try:
        with h5py.File(path, "r") as f:
            missing = [k for k in (data_key, label_key) if k not in f]
            if missing:
                raise DataError(f"missing dataset(s) {missing}; found {sorted(f.keys())}, expected "
                                f"'{data_key}' (n, P, 3) and '{label_key}' (n,)", str(path))
            data, label = f[data_key], f[label_key]
            if data.ndim != 3 or data.shape[2] < 3:
                raise DataError(f"'{data_key}' has shape {data.shape}; expected (num_clouds, num_points, 3)", str(path))
            if label.ndim not in (1, 2) or (label.ndim == 2 and label.shape[1] != 1):
                raise DataError(f"'{label_key}' has shape {label.shape}; expected (num_clouds,) or (num_clouds, 1)",
                                str(path))
            if label.shape[0] != data.shape[0]:
                raise DataError(f"'{data_key}' holds {data.shape[0]} clouds but '{label_key}' holds "
                                f"{label.shape[0]} labels", str(path))
            check_dtype(path, f"'{data_key}'", data.dtype)
            check_dtype(path, f"'{label_key}'", label.dtype)
            check_declared(path, f"'{data_key}' points per cloud", data.shape[1], max_points)
            if data.shape[0] * data.shape[1] > max_total:
                raise DataError(f"'{data_key}' declares {data.shape[0]:,} clouds x {data.shape[1]:,} points, above "
                                f"data.max_points_per_collection={max_total:,} (raise the limit if the file is "
                                "genuine)", str(path))
            points = data[:, :, :3] if data.shape[2] > 3 else data[()]
            labels = label[()].reshape(-1)
    except DataError:
        raise
    except (OSError, RuntimeError, ValueError, TypeError, KeyError) as exc:  # h5py on truncated / corrupt files
        raise DataError(f"not a readable HDF5 file (truncated or corrupt?): {type(exc).__name__}: {exc}",
                        str(path)) from None
    if not np.issubdtype(points.dtype, np.floating):
        raise DataError(f"'{data_key}' holds {points.dtype}; expected floating-point coordinates", str(path))
    bad = ~np.isfinite(points).all(axis=(1, 2))
    if bad.any():
        raise DataError(f"NaN or infinite coordinates ({int(bad.sum())} cloud(s) affected)", str(path),
                        int(np.argmax(bad)))
    if not np.issubdtype(labels.dtype, np.integer):
        if not np.issubdtype(labels.dtype, np.floating) or not np.all(labels == np.round(labels)):
            raise DataError(f"'{label_key}' holds {labels.dtype} values that are not class indices", str(path))
    return np.ascontiguousarray(points, dtype=np.float32), labels.astype(np.int64)


def check_labels(labels: np.ndarray, class_names: list[str], path: Path) -> None:
    bad = (labels < 0) | (labels >= len(class_names))
    if bad.any():
        i = int(np.argmax(bad))
        raise DataError(f"label {int(labels[i])} is outside the class list (0..{len(class_names) - 1}, "
                        f"{len(class_names)} classes)", str(path), i)


def pool_points(points: np.ndarray, pool_size: int, cache: ArrayCache, path: Path, tag: str) -> np.ndarray:
    """The first ``pool_size`` FPS points of every cloud (cached per file content).

    Clouds with at most ``pool_size`` points are kept whole, without FPS."""
    if points.shape[1] <= pool_size:
        return points
    key = f"{tag}-{file_digest(path)[:40]}"
    indices = cached_fps_indices(points, pool_size, cache, key)
    return np.take_along_axis(points, indices.astype(np.int64)[..., None], axis=1)
