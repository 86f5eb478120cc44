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
from typing import Callable

import numpy as np
import torch

from .. import ops

__all__ = ["ArrayCache", "points_problem", "indices_problem", "file_digest", "array_digest", "default_cache_dir",
           "fps_indices", "cached_fps_indices", "fps_starts", "cached_epoch_pools", "FPS_VERSION"]

log = logging.getLogger(__name__)

# Bump when the FPS algorithm or the entry layout changes: old entries are then ignored.
FPS_VERSION = "fps1"
# Clouds per FPS batch are chosen so a batch holds about this many points (fits CPU caches).
_POINTS_PER_BATCH = 32_768


def default_cache_dir() -> Path:
    from ..backbones.weights import cache_dir

    return cache_dir() / "fps"


def points_problem(array: np.ndarray) -> str | None:
    """What makes ``array`` unusable as a cached point cloud (n >= 1, 3) of finite floats, or None."""
    if array.dtype.kind != "f":
        return f"dtype {array.dtype}, expected floating point"
    if array.ndim != 2 or array.shape[0] < 1 or array.shape[1] != 3:
        return f"shape {array.shape}, expected (n, 3)"
    if not np.isfinite(array).all():
        return "holds NaN or infinite coordinates"
    return None


def indices_problem(size: int) -> Callable[[np.ndarray], str | None]:
    """A check of cached point indices: integers in [0, size)."""
    def problem(array: np.ndarray) -> str | None:
        if array.dtype.kind not in "iu":
            return f"dtype {array.dtype}, expected integer indices"
        if array.size and (int(array.min()) < 0 or int(array.max()) >= size):
            return f"indices in [{int(array.min())}, {int(array.max())}], expected [0, {size})"
        return None
    return problem


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

    def load(self, key: str, shape: tuple[int, ...] | None = None,
             problem: Callable[[np.ndarray], str | None] | None = None) -> np.ndarray | None:
        """The entry, or None when absent, unreadable, of another shape or refused by ``problem``
        (which returns what is wrong with an entry, or None): such an entry is recomputed, never used,
        since anyone who can write the cache folder controls its contents."""
        if self.directory is None:
            return None
        path = self.path(key)
        if not path.is_file():
            return None
        try:
            array = np.load(path, mmap_mode="r", allow_pickle=False)  # header first: nothing is read yet
        except (OSError, ValueError, EOFError) as exc:
            log.warning("ignoring unreadable cache entry %s (%s); it will be recomputed", path, exc)
            return None
        if shape is not None and array.shape != tuple(shape):
            log.warning("ignoring cache entry %s of shape %s (expected %s)", path, array.shape, tuple(shape))
            return None
        reason = problem(array) if problem is not None else None
        if reason is not None:
            log.warning("ignoring cache entry %s: %s; it will be recomputed", path, reason)
            return None
        return np.array(array)  # a copy in memory, not a view of a file another run may replace

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


def array_digest(array: np.ndarray) -> str:
    """SHA-256 of an array's shape, dtype and bytes (hex): a cache key for data held in memory."""
    h = hashlib.sha256(f"{array.shape}|{array.dtype}".encode())
    h.update(np.ascontiguousarray(array).data)
    return h.hexdigest()


def fps_indices(clouds: np.ndarray, n: int, first_picks: np.ndarray | None = None) -> np.ndarray:
    """FPS indices (B, n) of clouds (B, N, 3), computed in batches with ``ops.furthest_point_sample``
    (which spreads each batch's clouds over the CPU threads). ``first_picks`` (B,): each cloud's first
    pick (default 0)."""
    count, size = clouds.shape[0], clouds.shape[1]
    dtype = np.uint16 if size <= np.iinfo(np.uint16).max + 1 else np.int64
    out = np.empty((count, n), dtype=dtype)
    step = max(1, _POINTS_PER_BATCH // size)
    starts = list(range(0, count, step))

    def one_batch(start: int) -> int:
        batch = torch.from_numpy(np.ascontiguousarray(clouds[start:start + step], dtype=np.float32))
        first = 0 if first_picks is None else torch.from_numpy(np.asarray(first_picks[start:start + step], np.int64))
        out[start:start + step] = ops.furthest_point_sample(batch, n, start=first).numpy()
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
    indices = cache.load(entry, shape, indices_problem(clouds.shape[1]))
    if indices is not None:
        return indices
    indices = fps_indices(clouds, n)
    cache.save(entry, indices)
    return indices


# Seeds of the pools' start points: fixed, so every run (and the cache) sees the same pools.
_POOL_STREAM = 0xF95


def fps_starts(count: int, size: int, pool: int) -> np.ndarray:
    """The first pick of every cloud in pool ``pool``: index 0 for pool 0 (the plain FPS order, the
    one evaluation uses), a seeded random point for the others."""
    if pool == 0:
        return np.zeros(count, dtype=np.int64)
    return np.random.default_rng([_POOL_STREAM, pool]).integers(0, size, count)


def cached_epoch_pools(clouds: np.ndarray, n: int, pools: int, cache: ArrayCache) -> np.ndarray:
    """``pools`` FPS orderings of ``n`` points of every cloud (pools, B, n), each from other start
    points: training takes pool ``epoch % pools``, so the FPS points differ from epoch to epoch.

    The release shuffles a cloud before FPS every epoch, which amounts to FPS from a random start
    point; a fixed set of start points keeps that variation at a one-time, cached cost."""
    if pools < 1:
        raise ValueError(f"data.protocol.fps_pools must be >= 1, got {pools}")
    key = f"pools-{array_digest(clouds)[:40]}"
    out = []
    for pool in range(pools):
        entry = f"{key}-N{clouds.shape[1]}-n{n}-p{pool}-{FPS_VERSION}"
        indices = cache.load(entry, (clouds.shape[0], n), indices_problem(clouds.shape[1]))
        if indices is None:
            indices = fps_indices(clouds, n, fps_starts(clouds.shape[0], clouds.shape[1], pool))
            cache.save(entry, indices)
        out.append(indices)
    return np.stack(out)
