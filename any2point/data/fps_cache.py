"""Farthest point sampling computed once per source file and kept on disk.

FPS (start index 0, greedy) has a prefix property: its first ``k`` picks are the FPS of
``k`` points. So one cached ordering of ``n`` points serves every smaller count (the
train pool of 1,200 and the val/test 1,024 share an entry).

Entries are keyed by the source file's content hash plus every parameter that changes
the result, and are written atomically (temporary file + ``os.replace``), so concurrent
runs and interrupted writes never leave a half-written entry behind.
"""
from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from .. import ops

__all__ = ["ArrayCache", "file_digest", "default_cache_dir", "fps_indices", "cached_fps_indices",
           "FPS_VERSION"]

log = logging.getLogger(__name__)

# Bump when the FPS algorithm or the entry layout changes: old entries are then ignored.
FPS_VERSION = "fps1"
# Clouds per FPS batch are chosen so a batch holds about this many points (fits CPU caches).
_POINTS_PER_BATCH = 32_768


def default_cache_dir() -> Path:
    from ..weights import cache_dir

    return cache_dir() / "fps"


def file_digest(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """SHA-256 of the file's bytes (hex)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


class ArrayCache:
    """A folder of ``.npy`` entries; ``directory=None`` disables caching (nothing is stored)."""

    def __init__(self, directory: str | os.PathLike | None):
        self.directory = Path(directory).expanduser() if directory is not None else None

    @property
    def enabled(self) -> bool:
        return self.directory is not None

    def path(self, key: str) -> Path:
        assert self.directory is not None
        return self.directory / f"{key}.npy"

    def load(self, key: str, shape: tuple[int, ...] | None = None) -> np.ndarray | None:
        """The entry, or None when absent, unreadable or of another shape (it is then recomputed)."""
        if self.directory is None:
            return None
        path = self.path(key)
        if not path.is_file():
            return None
        try:
            array = np.load(path, allow_pickle=False)
        except (OSError, ValueError, EOFError) as exc:
            log.warning("ignoring unreadable cache entry %s (%s); it will be recomputed", path, exc)
            return None
        if shape is not None and array.shape != tuple(shape):
            log.warning("ignoring cache entry %s of shape %s (expected %s)", path, array.shape, tuple(shape))
            return None
        return array

    def save(self, key: str, array: np.ndarray) -> None:
        """Store an entry; an unwritable cache folder turns caching off with a warning (the
        result is still computed, only not kept)."""
        if self.directory is None:
            return
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=self.directory, prefix=".tmp-", suffix=".npy")
        except OSError as exc:
            log.warning("cannot write the cache folder %s (%s); computing without caching (set data.cache_dir to a "
                        "writable folder to keep results)", self.directory, exc)
            self.directory = None
            return
        try:
            with os.fdopen(fd, "wb") as f:
                np.save(f, array, allow_pickle=False)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path(key))
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


def fps_indices(clouds: np.ndarray, n: int) -> np.ndarray:
    """FPS indices (B, n) of clouds (B, N, 3), computed in batches with ``ops.furthest_point_sample``
    (which spreads each batch's clouds over the CPU threads)."""
    count, size = clouds.shape[0], clouds.shape[1]
    dtype = np.uint16 if size <= np.iinfo(np.uint16).max + 1 else np.int64
    out = np.empty((count, n), dtype=dtype)
    step = max(1, _POINTS_PER_BATCH // size)
    starts = list(range(0, count, step))

    def one_batch(start: int) -> int:
        batch = torch.from_numpy(np.ascontiguousarray(clouds[start:start + step], dtype=np.float32))
        out[start:start + step] = ops.furthest_point_sample(batch, n).numpy()
        return start

    started = last_report = time.perf_counter()
    for done, start in enumerate(starts, start=1):
        one_batch(start)
        if time.perf_counter() - last_report > 30:  # long one-time runs say how far they are
            last_report = time.perf_counter()
            log.info("FPS %d -> %d points: %d / %d clouds", size, n, min(done * step, count), count)
    if len(starts) > 1:
        log.info("FPS of %d clouds (%d -> %d points) took %.1f s", count, size, n, time.perf_counter() - started)
    return out


def cached_fps_indices(clouds: np.ndarray, n: int, cache: ArrayCache, key: str) -> np.ndarray:
    """``fps_indices`` through the cache; ``key`` must identify the clouds (content hash, dataset name)."""
    entry = f"{key}-N{clouds.shape[1]}-n{n}-{FPS_VERSION}"
    shape = (clouds.shape[0], n)
    indices = cache.load(entry, shape)
    if indices is not None and int(indices.max(initial=0)) < clouds.shape[1]:
        return indices
    indices = fps_indices(clouds, n)
    cache.save(entry, indices)
    return indices
