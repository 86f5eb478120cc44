"""ModelNet40, HDF5 release (``modelnet40_ply_hdf5_2048``).

Layout: ``ply_data_{train,test}N.h5`` (``data`` (n, P, 3) float32, ``label`` (n, 1)),
``shape_names.txt``, ``{train,test}_files.txt``. The lists usually carry the release's
own prefix (``data/modelnet40_ply_hdf5_2048/ply_data_train0.h5``), so entries are
resolved by file name inside ``data.root``; without a list, ``ply_data_<split>*.h5`` are
globbed. A root may hold only the split being read. P is 2,048 in the release; any P
works (the shared copy has 1,024).
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from ..errors import DataError
from .base import LoadedSplit
from .h5sets import H5Options, check_labels, limits_of, pool_points, read_labelled_h5
from .options import cache_of, existing_root
from .registry import register_data_format

__all__ = ["load_modelnet40", "DOWNLOAD"]

DOWNLOAD = ("https://shapenet.cs.stanford.edu/media/modelnet40_ply_hdf5_2048.zip (historical URL of the HDF5 "
            "release; ModelNet itself: https://modelnet.cs.princeton.edu/)")


def _natural_key(path: Path) -> list:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", path.name)]


def split_files(root: Path, split: str) -> list[Path]:
    """The HDF5 files of ``split``, in the order of ``<split>_files.txt`` when present."""
    listing = root / f"{split}_files.txt"
    if listing.is_file():
        names = [line.strip() for line in listing.read_text().splitlines() if line.strip()]
        files = [root / Path(name.replace("\\", "/")).name for name in names]
        missing = [f.name for f in files if not f.is_file()]
        if missing:
            raise DataError(f"{listing.name} lists {missing} but they are not in {root}", str(listing))
        return files
    files = sorted(root.glob(f"ply_data_{split}*.h5"), key=_natural_key)
    if not files:
        raise DataError(f"no ModelNet40 {split} files in {root}: expected {split}_files.txt and "
                        f"ply_data_{split}0.h5, ply_data_{split}1.h5, ... Download: {DOWNLOAD}", str(root))
    return files


def read_class_names(root: Path, names_file: str = "shape_names.txt") -> list[str]:
    path = root / names_file
    if not path.is_file():
        raise DataError(f"missing {names_file} (one class name per line); set data.class_names to give them "
                        f"in the config instead. Download: {DOWNLOAD}", str(path))
    names = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    if not names:
        raise DataError("empty class list: expected one class name per line", str(path))
    return names


@register_data_format("modelnet40_h5", H5Options, stored_clouds=True)
def load_modelnet40(cfg: H5Options, source_split: str, pool_size: int) -> LoadedSplit:
    """ModelNet40, HDF5 release (ply_data_{train,test}N.h5)."""
    root = existing_root(cfg, f"shape_names.txt, {source_split}_files.txt and ply_data_{source_split}*.h5",
                         DOWNLOAD)
    class_names = cfg.class_names or read_class_names(root)
    cache = cache_of(cfg)
    pools, labels = [], []
    for path in split_files(root, source_split):
        points, file_labels = read_labelled_h5(path, **limits_of(cfg))
        check_labels(file_labels, class_names, path)
        pools.append(pool_points(points, pool_size, cache, path, tag="modelnet40"))
        labels.append(file_labels)
    sizes = {p.shape[1] for p in pools}
    if len(sizes) > 1:  # files of different point counts: keep the common prefix
        pools = [p[:, :min(sizes)] for p in pools]
    return LoadedSplit(np.concatenate(pools), np.concatenate(labels), class_names)
