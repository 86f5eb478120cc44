"""ModelNet40, ``modelnet40_normal_resampled`` release (10,000 points with normals per shape).

Layout: ``modelnet40_shape_names.txt``, ``modelnet40_{train,test}.txt`` listing
``<class>_NNNN``, and ``<class>/<class>_NNNN.txt`` with rows "x,y,z,nx,ny,nz" (normals
ignored). Every shape is pre-sampled once to ``presample_points`` (8,192) by FPS and
cached; the train pool and the test FPS are prefixes of that order.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np

from .. import checks

from ..errors import DataError
from .base import LoadedSplit
from .file_pools import pool_files
from .formats import DEFAULT_MAX_POINTS_PER_FILE, PointFile, read_file
from .options import DataOptions, cache_of, existing_root, optional_limit
from .registry import register_data_format

__all__ = ["load_modelnet40_resampled", "ResampledOptions", "DOWNLOAD"]

DOWNLOAD = ("https://shapenet.cs.stanford.edu/media/modelnet40_normal_resampled.zip (historical URL; "
            "ModelNet itself: https://modelnet.cs.princeton.edu/)")


def _read_lines(path: Path) -> list[str]:
    if not path.is_file():
        raise DataError(f"missing {path.name}. Download: {DOWNLOAD}", str(path))
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


def _read_shape(path: Path, max_points: int) -> np.ndarray:
    loaded = read_file(path, max_points)
    if not isinstance(loaded, PointFile):
        raise DataError("holds a mesh; expected rows of 'x,y,z,nx,ny,nz'", str(path))
    return loaded.points


@dataclass
class ResampledOptions(DataOptions):
    normalize: bool = True  # the release's shapes are not centred and scaled
    presample_points: int = 8192  # every shape reduced once by FPS to this many points (cached)
    max_points_per_file: int | None = None  # null: the default limit

    def __post_init__(self) -> None:
        super().__post_init__()
        checks.integer("data.presample_points", self.presample_points, 1)
        optional_limit("data.max_points_per_file", self.max_points_per_file)

    def whole_cloud_points(self) -> int:
        return self.presample_points  # the pre-sampled clouds are the whole clouds


@register_data_format("modelnet40_resampled", ResampledOptions, stored_clouds=True)
def load_modelnet40_resampled(cfg: ResampledOptions, source_split: str, pool_size: int) -> LoadedSplit:
    """ModelNet40, modelnet40_normal_resampled release (text files, pre-sampled by FPS)."""
    listing_name = f"modelnet40_{source_split}.txt"
    root = existing_root(cfg, f"modelnet40_shape_names.txt, {listing_name} and <class>/<class>_NNNN.txt files",
                         DOWNLOAD)
    class_names = cfg.class_names or _read_lines(root / "modelnet40_shape_names.txt")
    index = {name: i for i, name in enumerate(class_names)}
    listing = root / listing_name
    files, labels = [], []
    for number, shape_id in enumerate(_read_lines(listing), start=1):
        cls = shape_id.rsplit("_", 1)[0]
        if cls not in index:
            raise DataError(f"line {number}: shape {shape_id!r} has class {cls!r}, which is not in the class list "
                            f"({len(class_names)} classes)", str(listing))
        files.append(root / cls / f"{shape_id}.txt")
        labels.append(index[cls])
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise DataError(f"{len(missing)} listed shape file(s) are missing, e.g. {missing[0]}", str(listing))
    max_points = cfg.max_points_per_file or DEFAULT_MAX_POINTS_PER_FILE
    pools, kept = pool_files(files, partial(_read_shape, max_points=max_points), pool_size=pool_size,
                             presample=cfg.presample_points, cache=cache_of(cfg),
                             recipe="mn40resampled-xyz")
    return LoadedSplit(pools, np.asarray(labels, dtype=np.int64)[kept], class_names)
