"""One cloud per file (ModelNet40 resampled, a user's folder) -> one pool array.

Each file is read, reduced by FPS to ``presample`` points (kept in FPS order, so any
smaller count is a prefix) and cached under its content hash and the recipe that made
it. Cache misses are read a chunk of files at a time and FPS runs batched over the
clouds of equal size, never one cloud at a time.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable

import numpy as np

from .. import checks
from ..errors import DataError
from .fps_cache import FPS_VERSION, ArrayCache, file_digest, fps_indices, points_problem
from .options import ON_ERROR
from .sampling import pad_or_trim

__all__ = ["pool_files"]

log = logging.getLogger(__name__)

_FILES_PER_CHUNK = 256


def _presampled(clouds: list[np.ndarray], presample: int) -> list[np.ndarray]:
    """FPS of ``presample`` points of every cloud larger than that, batched by cloud size."""
    out = list(clouds)
    by_size: dict[int, list[int]] = {}
    for i, cloud in enumerate(clouds):
        if len(cloud) > presample:
            by_size.setdefault(len(cloud), []).append(i)
    for members in by_size.values():
        batch = np.stack([clouds[i] for i in members])
        indices = fps_indices(batch, presample).astype(np.int64)
        for i, idx in zip(members, indices):
            out[i] = clouds[i][idx]
    return out


def pool_files(files: list[Path], read_cloud: Callable[[Path], np.ndarray], *, pool_size: int, presample: int,
               cache: ArrayCache, recipe: str, on_error: str = "raise",
               skipped: list[tuple[str, str]] | None = None) -> tuple[np.ndarray, list[int]]:
    """(pools (N, pool_size, 3) float32, positions in ``files`` that were kept).

    ``read_cloud(path) -> (n, 3)`` raises DataError for a bad file: with ``on_error='skip'``
    the file is logged and appended to ``skipped`` as (path, reason) instead."""
    checks.one_of("data.on_error", on_error, ON_ERROR)
    presample = max(presample, pool_size)
    pools: list[np.ndarray] = []
    kept: list[int] = []
    for start in range(0, len(files), _FILES_PER_CHUNK):
        chunk = list(enumerate(files[start:start + _FILES_PER_CHUNK], start=start))
        ready: dict[int, np.ndarray] = {}
        missing: list[tuple[int, str, np.ndarray]] = []
        for position, path in chunk:
            try:
                key = f"{recipe}-{file_digest(path)[:40]}-k{presample}-{FPS_VERSION}"
                prepared = cache.load(key, problem=lambda a: points_problem(a) or (
                    f"{len(a)} points, expected at most {presample}" if len(a) > presample else None))
                if prepared is None:
                    missing.append((position, key, np.asarray(read_cloud(path), dtype=np.float32)))
                else:
                    ready[position] = prepared
            except (DataError, OSError) as exc:
                reason = exc.reason if isinstance(exc, DataError) else f"cannot read: {exc}"
                if on_error == "raise":
                    raise exc if isinstance(exc, DataError) else DataError(reason, str(path)) from None
                log.warning("skipping %s: %s", path, reason)
                if skipped is not None:
                    skipped.append((str(path), reason))
        for (position, key, _), prepared in zip(missing, _presampled([m[2] for m in missing], presample)):
            cache.save(key, prepared)
            ready[position] = prepared
        for position in sorted(ready):
            pools.append(pad_or_trim(ready[position], pool_size))
            kept.append(position)
    if not pools:
        return np.zeros((0, pool_size, 3), dtype=np.float32), kept
    return np.stack(pools).astype(np.float32, copy=False), kept
