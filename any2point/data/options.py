"""Reading the ``data`` config node: plain dict access with the shared defaults."""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Mapping

from .. import checks
from ..errors import DataError
from .fps_cache import ArrayCache, default_cache_dir
from .protocol import PointProtocol

log = logging.getLogger(__name__)

__all__ = ["as_dict", "protocol_of", "cache_of", "existing_root", "class_names_of", "ON_ERROR", "on_error_of"]

ON_ERROR = ("raise", "skip")  # what a loader of files does with a bad file (data.on_error)


def as_dict(cfg: Any) -> dict:
    """A plain, resolved dict of a DictConfig or mapping."""
    try:
        from omegaconf import DictConfig, OmegaConf

        if isinstance(cfg, DictConfig):
            return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]
    except ImportError:  # omegaconf is a dependency; plain dicts work without it
        pass
    if not isinstance(cfg, Mapping):
        raise TypeError(f"the data config must be a mapping or DictConfig, got {type(cfg).__name__}")
    return dict(cfg)


def protocol_of(cfg: dict, split: str) -> PointProtocol:
    """The point protocol; the test split ignores ``protocol.train_fps`` (an evaluation may
    ask for more points than training drew from)."""
    protocol = cfg.get("protocol") or {}
    num_points = int(cfg.get("num_points", 1024))
    train_fps = int(protocol.get("train_fps") or max(1200, num_points))
    return PointProtocol(num_points=num_points, train_fps=max(train_fps, num_points) if split == "test" else train_fps)


def cache_of(cfg: dict) -> ArrayCache:
    """The FPS / preprocessing cache: ``data.cache_dir`` (null = default), off when ``data.cache`` is false."""
    if not cfg.get("cache", True):
        return ArrayCache(None)
    directory = cfg.get("cache_dir")
    if directory:
        return ArrayCache(Path(os.path.expanduser(str(directory))))
    try:
        return ArrayCache(default_cache_dir())
    except OSError as exc:  # e.g. ANY2POINT_CACHE names a folder that cannot be created
        log.warning("cannot use the cache folder %s (%s); computing without caching (set ANY2POINT_CACHE or "
                    "data.cache_dir to a writable folder to keep results)", exc.filename or "(default)", exc)
        return ArrayCache(None)


def existing_root(cfg: dict, expected: str, download: str) -> Path:
    """``data.root`` as a Path, or a DataError saying what belongs there and where to get it."""
    root = cfg.get("root")
    if not root or root == "???":
        raise DataError(f"data.root is not set for dataset {cfg.get('name')!r}; expected a folder with {expected}. "
                        f"Download: {download}")
    path = Path(os.path.expanduser(str(root)))
    if not path.is_dir():
        raise DataError(f"dataset {cfg.get('name')!r} not found: data.root={root} is not a folder "
                        f"(resolved to {path.resolve()}). Expected {expected}. Download: {download}, unpack it and "
                        f"set data.root=/path/to/it (or set ANY2POINT_DATA to the folder that holds it)", str(path))
    return path


def class_names_of(cfg: dict, default: list[str] | None = None) -> list[str] | None:
    names = cfg.get("class_names")
    return [str(n) for n in names] if names else default


def on_error_of(cfg: Mapping) -> str:
    """``data.on_error`` (default ``raise``), one of :data:`ON_ERROR`."""
    value = cfg.get("on_error", "raise")
    checks.one_of("data.on_error", value, ON_ERROR)
    return value
