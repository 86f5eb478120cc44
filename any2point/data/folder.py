"""A user's own labelled files: ``root/<class>/{train,test}/<files>``, any supported type.

The class list is every ``<class>`` folder (sorted), the same for both splits, unless
``data.class_names`` fixes it (a folder not in that list is then an error, or skipped).
Meshes are surface-sampled to ``data.mesh_points`` (seed 0, so a file always gives the
same cloud); every file is reduced by FPS once and cached by content.
With ``data.on_error: skip`` unreadable files are logged and listed in
``dataset.skipped`` as (path, reason) instead of stopping the run.
"""
from __future__ import annotations

from functools import partial
from pathlib import Path

import logging

import numpy as np

from ..errors import DataError
from .base import LoadedSplit
from .file_clouds import pool_files
from .options import cache_of, class_names_of, existing_root
from .pointfile import DEFAULT_MESH_POINTS, file_cloud
from .readers import SUPPORTED_EXTENSIONS

__all__ = ["load_folder"]

log = logging.getLogger(__name__)

_LAYOUT = "one folder per class, each with train/ and test/ subfolders of point-cloud or mesh files"


def _class_folders(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


def load_folder(cfg: dict, source_split: str, pool_size: int) -> LoadedSplit:
    root = existing_root(cfg, _LAYOUT + f" (root/<class>/{source_split}/<file>; supported: "
                         f"{', '.join(SUPPORTED_EXTENSIONS)})", "your own data: no download")
    on_error = str(cfg.get("on_error", "raise"))
    if on_error not in ("raise", "skip"):
        raise ValueError(f"data.on_error must be 'raise' or 'skip', got {on_error!r}")
    folders = _class_folders(root)
    class_names = class_names_of(cfg) or folders
    if not class_names:
        raise DataError(f"no class folders: expected {_LAYOUT}", str(root))
    index = {name: i for i, name in enumerate(class_names)}
    skipped: list[tuple[str, str]] = []
    files, labels = [], []
    for folder in folders:
        split_dir = root / folder / source_split
        if not split_dir.is_dir():
            continue
        for path in sorted(p for p in split_dir.iterdir() if p.is_file() and not p.name.startswith(".")):
            reason = None
            if folder not in index:
                reason = f"class folder {folder!r} is not in data.class_names {class_names}"
            elif path.suffix.lower() not in SUPPORTED_EXTENSIONS:
                reason = (f"unsupported file type {path.suffix or '(no extension)'!r}; supported: "
                          f"{', '.join(SUPPORTED_EXTENSIONS)}")
            if reason is not None:
                if on_error == "raise":
                    raise DataError(reason, str(path))
                log.warning("skipping %s: %s", path, reason)
                skipped.append((str(path), reason))
                continue
            files.append(path)
            labels.append(index[folder])
    mesh_points = int(cfg.get("mesh_points", DEFAULT_MESH_POINTS))
    presample = int(cfg.get("presample_points") or pool_size)
    pools, kept = pool_files(files, partial(file_cloud, mesh_points=mesh_points, seed=0), pool_size=pool_size,
                             presample=presample, cache=cache_of(cfg), recipe=f"folder-mesh{mesh_points}-seed0",
                             on_error=on_error, skipped=skipped)
    if not kept:
        raise DataError(f"no usable {source_split} files ({len(skipped)} skipped): expected {_LAYOUT}", str(root))
    return LoadedSplit(pools, np.asarray(labels, dtype=np.int64)[kept], class_names, skipped)
