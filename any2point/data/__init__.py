"""Point-cloud datasets and file readers.

``build_dataset(cfg.data, split, seed)`` is the one entry point of training and
evaluation; ``read_points(path)`` turns any supported file into a normalised cloud for
prediction. Loaders read (or generate) a source split once into FPS-ordered pools;
``PointCloudDataset`` applies the point protocol and the augmentations per sample.
"""
from __future__ import annotations

import difflib
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from .. import checks
from ..errors import ConfigError, DataError
from .base import LoadedSplit, PointCloudDataset
from .fewshot import fewshot_of
from .fps_cache import cached_epoch_pools
from .folder import load_folder
from .modelnet40 import load_modelnet40
from .modelnet40_resampled import load_modelnet40_resampled
from .file_to_cloud import file_points, read_points
from .formats import SUPPORTED_EXTENSIONS, PointFile, read_file
from .options import as_dict, cache_of, on_error_of, protocol_of
from .protocol import SPLITS
from .scanobjectnn import load_scanobjectnn
from .shapes import load_shapes
from .splits import stratified_split
from .transforms import build_transforms

__all__ = ["build_dataset", "check_data_options", "format_of", "PointCloudDataset", "read_points", "read_file",
           "file_points", "PointFile", "SUPPORTED_EXTENSIONS", "LOADERS", "UP_AXES"]

# data.format -> loader(cfg dict, source split 'train' | 'test', pool size) -> LoadedSplit
LOADERS: dict[str, Callable[[dict, str, int], LoadedSplit]] = {
    "modelnet40_h5": load_modelnet40,
    "modelnet40_resampled": load_modelnet40_resampled,
    "scanobjectnn": load_scanobjectnn,
    "folder": load_folder,
    "shapes": load_shapes,
}

# Datasets whose stored clouds are not already centred and scaled: normalise each sample.
_NORMALIZE_BY_DEFAULT = {"modelnet40_resampled", "folder", "shapes"}

# Formats whose loader returns each stored cloud whole when asked for this many points (the
# HDF5 releases keep clouds of at most that many points unchanged; the resampled release is
# asked for its pre-sampled size instead): the per-epoch FPS pools are drawn from whole clouds.
_WHOLE_CLOUDS = 1 << 20
_EPOCH_POOL_FORMATS = {"modelnet40_h5", "scanobjectnn", "modelnet40_resampled"}

UP_AXES = ("x", "y", "z")  # data.up_axis: the axis rotations turn about by default


def format_of(options: Mapping) -> str:
    """``data.format`` (``data.name`` when it is unset), one of :data:`LOADERS`."""
    fmt = options.get("format") or options.get("name")
    checks.one_of("data.format", fmt, sorted(LOADERS))
    return str(fmt)


def check_data_options(cfg: Any) -> None:
    """Refuse the data settings that are wrong whatever the files hold, before any is read:
    ``data.format``, ``data.up_axis``, ``data.on_error``, ``data.protocol.fps_pools``,
    ``data.fewshot`` and the entries of ``data.augment`` / ``data.eval_transforms``. (The
    apps check ``data.num_points`` and ``data.val_fraction`` with the rest of the config.)"""
    options = as_dict(cfg)
    fmt = format_of(options)
    up_axis = options.get("up_axis", "y")
    checks.one_of("data.up_axis", up_axis, UP_AXES)
    on_error_of(options)
    fewshot_of(options)
    _epoch_pools(options, fmt, protocol_of(options, "train"))
    for key in ("augment", "eval_transforms"):
        try:
            build_transforms(options.get(key), str(up_axis))
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"data.{key}: {exc}") from None


def _epoch_pools(options: dict, fmt: str, protocol) -> tuple[int, int]:
    """(pools, points to load per stored cloud) of the training split (``data.protocol.fps_pools``)."""
    pools = (options.get("protocol") or {}).get("fps_pools")
    pools = 1 if pools is None else pools
    checks.integer("data.protocol.fps_pools", pools, 1)
    if pools == 1:
        return 1, protocol.pool_size("train")
    if fmt not in _EPOCH_POOL_FORMATS:
        raise ConfigError(f"data.protocol.fps_pools > 1 needs stored clouds; data.format {fmt!r} has none "
                          f"(supported: {sorted(_EPOCH_POOL_FORMATS)})")
    if fmt == "modelnet40_resampled":  # the pre-sampled clouds (8,192 FPS points) are the whole clouds
        return pools, int(options.get("presample_points") or 8192)
    return pools, _WHOLE_CLOUDS


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
    options = as_dict(cfg)
    fmt = format_of(options)
    val_fraction = float(options.get("val_fraction") or 0.0) if carve else 0.0
    if split == "val" and val_fraction <= 0 and carve:
        raise ValueError("split 'val' needs data.val_fraction > 0 (it is carved from the training split)")
    protocol = protocol_of(options, split)
    source_split = "test" if split == "test" else "train"
    pools, load_size = _epoch_pools(options, fmt, protocol) if split == "train" else (1, protocol.pool_size(split))
    loaded = LOADERS[fmt](options, source_split, load_size)
    epoch_pools = None
    if pools > 1 and loaded.pools.shape[1] > protocol.train_fps:
        epoch_pools = cached_epoch_pools(loaded.pools, protocol.train_fps, pools, cache_of(options))
    labels, class_names, rows = loaded.labels, loaded.class_names, None
    if classes is not None:
        labels, class_names = _select_classes(loaded, list(classes), str(options.get("name", fmt)))
        rows = np.flatnonzero(labels >= 0)
    if source_split == "train" and val_fraction > 0:
        selected = np.arange(len(labels)) if rows is None else rows
        train_rows, val_rows = stratified_split(labels[selected], val_fraction, seed)
        rows = selected[val_rows if split == "val" else train_rows]
    up_axis = str(options.get("up_axis", "y"))
    transforms = build_transforms(options.get("augment") if split == "train" else options.get("eval_transforms"),
                                  up_axis)
    return PointCloudDataset(loaded.pools, labels, class_names, split, protocol, rows=rows,
                             transforms=transforms, seed=seed, epoch_pools=epoch_pools,
                             normalize=bool(options.get("normalize", fmt in _NORMALIZE_BY_DEFAULT)),
                             name=str(options.get("name", fmt)), skipped=loaded.skipped)
