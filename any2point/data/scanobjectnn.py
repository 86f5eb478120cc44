"""ScanObjectNN, official ``h5_files`` layout (three variants, 15 classes).

- OBJ_BG:    ``main_split/{training,test}_objectdataset.h5``
- OBJ_ONLY:  ``main_split_nobg/{training,test}_objectdataset.h5``
- PB-T50-RS: ``main_split/{training,test}_objectdataset_augmentedrot_scale75.h5``

Keys ``data`` (n, 2048, 3) and ``label`` (n,). ``data.root`` is the ``h5_files`` folder
(or the folder that contains it). The up axis of the files is y.
"""
from __future__ import annotations

import numpy as np

from ..errors import DataError
from .base import LoadedSplit
from .h5sets import check_labels, limits_of, pool_points, read_labelled_h5
from .options import cache_of, class_names_of, existing_root

__all__ = ["load_scanobjectnn", "CLASS_NAMES", "VARIANTS", "DOWNLOAD"]

DOWNLOAD = "https://hkust-vgd.github.io/scanobjectnn/ (h5_files.zip, on request from the authors)"

# The official order of the 15 classes (index = label in the files).
CLASS_NAMES = ["bag", "bin", "box", "cabinet", "chair", "desk", "display", "door", "shelf", "table", "bed",
               "pillow", "sink", "sofa", "toilet"]

# variant -> (folder, file stem); file = <folder>/<training|test>_<stem>.h5
VARIANTS = {
    "obj_bg": ("main_split", "objectdataset"),
    "obj_only": ("main_split_nobg", "objectdataset"),
    "pb_t50_rs": ("main_split", "objectdataset_augmentedrot_scale75"),
}


def load_scanobjectnn(cfg: dict, source_split: str, pool_size: int) -> LoadedSplit:
    variant = str(cfg.get("variant", "")).lower()
    if variant not in VARIANTS:
        raise ValueError(f"data.variant must be one of {sorted(VARIANTS)} for ScanObjectNN, got {variant!r}")
    folder, stem = VARIANTS[variant]
    relative = f"{folder}/{'training' if source_split == 'train' else 'test'}_{stem}.h5"
    root = existing_root(cfg, f"the h5_files folder with {relative}", DOWNLOAD)
    if not (root / folder).is_dir() and (root / "h5_files" / folder).is_dir():
        root = root / "h5_files"
    path = root / relative
    if not path.is_file():
        raise DataError(f"missing ScanObjectNN {variant} file: expected {relative} inside data.root={root}. "
                        f"Download: {DOWNLOAD}", str(path))
    class_names = class_names_of(cfg, CLASS_NAMES)
    points, labels = read_labelled_h5(path, **limits_of(cfg))
    check_labels(labels, class_names, path)
    pools = pool_points(points, pool_size, cache_of(cfg), path, tag=f"scanobjectnn-{variant}")
    return LoadedSplit(np.ascontiguousarray(pools), labels, class_names)
