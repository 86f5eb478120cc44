"""A user's own labelled files: ``root/<class>/{train,test}/<files>``, any supported type.

The class list is every ``<class>`` folder (sorted), the same for both splits, unless
``data.class_names`` fixes it (a folder not in that list is then an error, or skipped).
Meshes are surface-sampled to ``data.mesh_points`` (seed 0, so a file always gives the
same cloud); every file is reduced by FPS once and cached by content.
Every entry that does not become a sample is listed in ``dataset.skipped`` as (path,
reason): hidden entries, files at the root, class folders without the split, directories
(even when named like a file), broken links and symlink loops, unreadable or bad files.
Bad files stop the run unless ``data.on_error: skip``; the others are only listed.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from pathlib import Path

import logging
import os
import stat

import numpy as np

from .. import checks

from ..errors import DataError
from .base import LoadedSplit
from .file_pools import pool_files
from .file_to_cloud import DEFAULT_MESH_POINTS, file_cloud
from .formats import DEFAULT_MAX_POINTS_PER_FILE, SUPPORTED_EXTENSIONS
from .options import ON_ERROR, DataOptions, cache_of, existing_root, optional_limit
from .registry import register_data_format

__all__ = ["load_folder", "FolderOptions"]

log = logging.getLogger(__name__)

_LAYOUT = "one folder per class, each with train/ and test/ subfolders of point-cloud or mesh files"


def _kind(path: Path) -> str | None:
    """None for a regular file (links followed), else why the entry is not one."""
    try:
        mode = path.stat().st_mode
    except OSError as exc:  # ELOOP: a symlink loop; ENOENT: a broken link
        return f"cannot be opened: {exc.strerror or exc}"
    if stat.S_ISREG(mode):
        return None if os.access(path, os.R_OK) else "not readable (permission denied)"
    if stat.S_ISDIR(mode):
        return "a directory named like a data file; expected a file"
    return "not a regular file (a device, socket or pipe)"


def _class_folders(root: Path, note) -> list[str]:
    folders = []
    for entry in sorted(root.iterdir()):
        if entry.name.startswith("."):
            note(entry, "hidden entry, ignored")
        elif entry.is_dir():
            folders.append(entry.name)
        else:
            note(entry, "not a class folder (expected root/<class>/<split>/<files>)")
    return folders


@dataclass
class FolderOptions(DataOptions):
    normalize: bool = True  # a user's files come in any position and scale
    on_error: str = "raise"  # raise | skip a bad file
    mesh_points: int = DEFAULT_MESH_POINTS  # meshes: area-weighted surface samples before FPS
    presample_points: int | None = None  # null: FPS straight to the pool size
    max_points_per_file: int | None = None  # null: the default limit

    def __post_init__(self) -> None:
        super().__post_init__()
        checks.one_of("data.on_error", self.on_error, ON_ERROR)
        checks.integer("data.mesh_points", self.mesh_points, 1)
        checks.optional_integer("data.presample_points", self.presample_points, 1, "FPS straight to the pool size")
        optional_limit("data.max_points_per_file", self.max_points_per_file)


@register_data_format("folder", FolderOptions)
def load_folder(cfg: FolderOptions, source_split: str, pool_size: int) -> LoadedSplit:
    """Your own labelled files: root/<class>/{train,test}/<files> of any supported type."""
    root = existing_root(cfg, _LAYOUT + f" (root/<class>/{source_split}/<file>; supported: "
                         f"{', '.join(SUPPORTED_EXTENSIONS)})", "your own data: no download")
    on_error = cfg.on_error
    skipped: list[tuple[str, str]] = []

    def note(path: Path, reason: str) -> None:  # listed, never an error
        log.info("not a sample: %s: %s", path, reason)
        skipped.append((str(path), reason))

    folders = _class_folders(root, note)
    class_names = cfg.class_names or folders
    if not class_names:
        raise DataError(f"no class folders: expected {_LAYOUT}", str(root))
    index = {name: i for i, name in enumerate(class_names)}
    files, labels = [], []
    for folder in folders:
        split_dir = root / folder / source_split
        if not split_dir.is_dir():
            note(split_dir, f"class folder {folder!r} has no {source_split}/ subfolder (no {source_split} samples)")
            continue
        for path in sorted(split_dir.iterdir()):
            if path.name.startswith("."):
                note(path, "hidden entry, ignored")
                continue
            if path.is_dir() and path.suffix.lower() not in SUPPORTED_EXTENSIONS:
                note(path, "a directory; files are read only directly inside the split folder")
                continue
            reason = _kind(path)
            if reason is None and folder not in index:
                reason = f"class folder {folder!r} is not in data.class_names {class_names}"
            elif reason is None and path.suffix.lower() not in SUPPORTED_EXTENSIONS:
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
    mesh_points = cfg.mesh_points
    max_points = cfg.max_points_per_file or DEFAULT_MAX_POINTS_PER_FILE
    presample = cfg.presample_points or pool_size
    reader = partial(file_cloud, mesh_points=mesh_points, seed=0, max_points=max_points)
    pools, kept = pool_files(files, reader, pool_size=pool_size,
                             presample=presample, cache=cache_of(cfg), recipe=f"folder-trimesh{mesh_points}-seed0",
                             on_error=on_error, skipped=skipped)
    if not kept:
        raise DataError(f"no usable {source_split} files ({len(skipped)} skipped): expected {_LAYOUT}", str(root))
    return LoadedSplit(pools, np.asarray(labels, dtype=np.int64)[kept], class_names, skipped)
