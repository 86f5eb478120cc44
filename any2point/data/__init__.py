"""Point-cloud datasets and file readers.

``build_dataset(cfg.data, split, seed)`` is the one entry point of training and
evaluation: the ``data`` section converts once to the options of its registered format
(:mod:`any2point.data.registry`; third-party formats through the ``any2point.data_formats``
entry points), whose loader reads the split; ``read_points(path)`` turns any supported file into a normalised cloud for
prediction. Loaders read (or generate) a source split once into FPS-ordered pools;
``PointCloudDataset`` applies the point protocol and the augmentations per sample.
"""
from __future__ import annotations

import difflib
from typing import Any, Sequence

import numpy as np

from ..errors import DataError
from .base import LoadedSplit, PointCloudDataset
from .fps_cache import cached_epoch_pools
from . import folder, modelnet40, modelnet40_resampled, scanobjectnn, shapes  # noqa: F401  (register the formats)
from .file_to_cloud import file_points, read_points
from .formats import SUPPORTED_EXTENSIONS, PointFile, read_file
from .options import UP_AXES, DataOptions, ProtocolOptions, cache_of, protocol_of
from .protocol import SPLITS
from .registry import (DataFormat, data_options, get_data_format, list_data_formats, load_data_formats,
                       register_data_format)
from .splits import stratified_split
from .transforms import build_transforms

__all__ = ["build_dataset", "check_data_options", "PointCloudDataset", "LoadedSplit", "read_points", "read_file",
           "file_points", "PointFile", "SUPPORTED_EXTENSIONS", "UP_AXES", "DataOptions", "ProtocolOptions",
           "DataFormat", "register_data_format", "get_data_format", "list_data_formats", "load_data_formats",
           "data_options"]


def check_data_options(cfg: Any) -> DataOptions:
    """Refuse the data settings that are wrong whatever the files hold, before any is read: the
    section converts to its format's options (:func:`data_options`), whose ``__post_init__``
    checks every key the format defines. Returns the options, for the run to read."""
    return data_options(cfg)


def _epoch_pools(options: DataOptions, protocol) -> tuple[int, int]:
    """(pools, points to load per stored cloud) of the training split (``data.protocol.fps_pools``)."""
    pools = options.protocol.fps_pools
    if pools == 1:
        return 1, protocol.pool_size("train")
    return pools, options.whole_cloud_points()  # data_options refused fps_pools > 1 without stored clouds


def _select_classes(loaded: LoadedSplit, classes: list[str], dataset: str) -> tuple[np.ndarray, list[str]]:
    """(labels renumbered in the order of ``classes``, -1 for the other clouds; ``classes``)."""
    missing = [c for c in classes if c not in loaded.class_names]
    if missing:
        close = [f"{c!r}: did you mean {m[0]!r}?" for c in missing
                 if (m := difflib.get_close_matches(c, loaded.class_names, n=1))]
        raise DataError(f"{dataset!r} has no class(es) {missing} (data.classes)"
                        + (f" ({'; '.join(close)})" if close else "") + f"; its classes: {loaded.class_names}")
    mapping = np.full(len(loaded.class_names), -1, dtype=np.int64)
    mapping[[loaded.class_names.index(c) for c in classes]] = np.arange(len(classes))
    return mapping[loaded.labels], classes


def build_dataset(cfg: Any, split: str, seed: int = 0, classes: Sequence[str] | None = None,
                  carve: bool = True) -> PointCloudDataset:
    """The ``split`` ('train', 'val' or 'test') of the dataset described by the ``data`` config.

    'val' is a seeded, class-stratified ``data.val_fraction`` of the training split, and
    'train' then excludes it. ``classes``: only the clouds of these classes, labelled in this
    order (the validation split is then carved from them alone; data.classes). ``carve=False``:
    'val' is every selected cloud of the training files, read as an evaluation split (a
    zero-shot run's unseen classes when the data has no test split)."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    options = data_options(cfg)
    val_fraction = options.val_fraction if carve else 0.0
    if split == "val" and val_fraction <= 0 and carve:
        raise ValueError("split 'val' needs data.val_fraction > 0 (it is carved from the training split)")
    protocol = protocol_of(options, split)
    source_split = "test" if split == "test" else "train"
    pools, load_size = _epoch_pools(options, protocol) if split == "train" else (1, protocol.pool_size(split))
    loaded = get_data_format(options.format).load(options, source_split, load_size)
    epoch_pools = None
    if pools > 1 and loaded.pools.shape[1] > protocol.train_fps:
        epoch_pools = cached_epoch_pools(loaded.pools, protocol.train_fps, pools, cache_of(options))
    labels, class_names, rows = loaded.labels, loaded.class_names, None
    if classes is not None:
        labels, class_names = _select_classes(loaded, list(classes), options.name)
        rows = np.flatnonzero(labels >= 0)
    if source_split == "train" and val_fraction > 0:
        selected = np.arange(len(labels)) if rows is None else rows
        train_rows, val_rows = stratified_split(labels[selected], val_fraction, seed)
        rows = selected[val_rows if split == "val" else train_rows]
    transforms = build_transforms(options.augment if split == "train" else options.eval_transforms,
                                  options.up_axis)
    return PointCloudDataset(loaded.pools, labels, class_names, split, protocol, rows=rows,
                             transforms=transforms, seed=seed, epoch_pools=epoch_pools,
                             normalize=options.normalize, name=options.name, skipped=loaded.skipped)
