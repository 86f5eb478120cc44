"""ScanObjectNN, official ``h5_files`` layout (three variants, 15 classes).

- OBJ_BG:    ``main_split/{training,test}_objectdataset.h5``
- OBJ_ONLY:  ``main_split_nobg/{training,test}_objectdataset.h5``
- PB-T50-RS: ``main_split/{training,test}_objectdataset_augmentedrot_scale75.h5``

Keys ``data`` (n, 2048, 3) and ``label`` (n,). ``data.root`` is the ``h5_files`` folder
(or the folder that contains it). The up axis of the files is y.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .. import checks

from ..errors import DataError
from .base import LoadedSplit
from .h5sets import H5Options, check_labels, limits_of, pool_points, read_labelled_h5
from .options import cache_of, existing_root
from .registry import register_data_format

__all__ = ["load_scanobjectnn", "ScanObjectNNOptions", "CLASS_NAMES", "VARIANTS", "DOWNLOAD"]

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


@dataclass
class ScanObjectNNOptions(H5Options):
    variant: str = field(kw_only=True)  # obj_bg | obj_only | pb_t50_rs: required

    def __post_init__(self) -> None:
        super().__post_init__()
        checks.one_of("data.variant", self.variant, VARIANTS)


@register_data_format("scanobjectnn", ScanObjectNNOptions, stored_clouds=True)
def load_scanobjectnn(cfg: ScanObjectNNOptions, source_split: str, pool_size: int) -> LoadedSplit:
    """ScanObjectNN, official h5_files layout (OBJ_BG, OBJ_ONLY, PB-T50-RS)."""
    variant = cfg.variant
    folder, stem = VARIANTS[variant]
    relative = f"{folder}/{'training' if source_split == 'train' else 'test'}_{stem}.h5"
    root = existing_root(cfg, f"the h5_files folder with {relative}", DOWNLOAD)
    if not (root / folder).is_dir() and (root / "h5_files" / folder).is_dir():
        root = root / "h5_files"
    path = root / relative
    if not path.is_file():
        raise DataError(f"missing ScanObjectNN {variant} file: expected {relative} inside data.root={root}. "
                        f"Download: {DOWNLOAD}", str(path))
    class_names = cfg.class_names or CLASS_NAMES
    points, labels = read_labelled_h5(path, **limits_of(cfg))
    check_labels(labels, class_names, path)
    pools = pool_points(points, pool_size, cache_of(cfg), path, tag=f"scanobjectnn-{variant}")
    return LoadedSplit(np.ascontiguousarray(pools), labels, class_names)
