"""Every limit the file readers enforce, in one place (docs/file-formats.md lists them for users).

They all scale with one setting, ``data.max_points_per_file`` (the ``limit`` each reader is
given), so raising it for a genuine large file raises them together. Each is checked on the
file's size or on sizes its header declares, before anything is read, decoded, decompressed
or allocated; a file above one gets a one-line :class:`~any2point.errors.DataError` naming
the file, the size found and the limit.
"""
from __future__ import annotations

import os
import stat
from pathlib import Path

from ...errors import DataError

__all__ = ["DEFAULT_MAX_POINTS_PER_FILE", "MAX_COLUMNS", "VALUES_PER_POINT", "FILE_BYTES_PER_POINT", "MIN_FILE_BYTES",
           "DECODED_BYTES_PER_POINT", "MAX_HEADER_BYTES", "MAX_VALUES_PER_RECORD", "NPY_HEADER_BYTES",
           "MAX_ARCHIVE_MEMBERS", "LAZ_SECONDS", "LZF_MAX_RATIO", "max_file_bytes", "max_decoded_bytes",
           "check_file_size", "check_decoded", "read_bounded"]

# The fallback of ``data.max_points_per_file`` for callers without a data config (the
# data YAMLs state the same value; a test keeps them equal).
DEFAULT_MAX_POINTS_PER_FILE = 5_000_000
# An array or text cloud may carry per-point values beyond xyz (normals, colours, labels,
# features): at most MAX_COLUMNS of them, and at most VALUES_PER_POINT * max_points_per_file
# values in all (xyz + normals at the full point limit; wider records hold proportionally
# fewer points), so a header declaring (1000, 10**9) is refused before anything is read.
MAX_COLUMNS = 64
VALUES_PER_POINT = 6
# A file may hold FILE_BYTES_PER_POINT bytes per allowed point (640 MB at the default; a text
# row of xyz, normals and a few values in full precision is ~100 bytes).
FILE_BYTES_PER_POINT = 128
# What a compressed or record-based file decodes to: DECODED_BYTES_PER_POINT bytes per allowed
# point (320 MB at the default: eight doubles per point), counted from the header before any
# decompression or allocation (PCD records, LAZ points, glTF accessors, HDF5 chunks).
DECODED_BYTES_PER_POINT = 64
# Neither byte limit is ever below this, so a small point limit does not refuse a small file
# for its comments or its library's usual chunk size.
MIN_FILE_BYTES = 1 << 20
# A text header (PLY, PCD) ends within this many bytes.
MAX_HEADER_BYTES = 1 << 20
# Values of one PCD point across all its fields (a 4096-bin descriptor): pypcd4 builds one
# dtype entry per value, so a header of a few KB could otherwise ask for millions of them.
MAX_VALUES_PER_RECORD = 4096
# Bytes of one .npy header (numpy's own default limit); .npy arrays in one .npz archive.
NPY_HEADER_BYTES = 10_000
MAX_ARCHIVE_MEMBERS = 64
# A LAZ file is decoded in a child process given this much wall time (the largest file the
# limits allow takes seconds, not minutes).
LAZ_SECONDS = 600
# LZF (PCD binary_compressed) expands at most 88-fold: a back reference of 264 bytes is 3 bytes.
LZF_MAX_RATIO = 88


def max_file_bytes(limit: int) -> int:
    return max(MIN_FILE_BYTES, FILE_BYTES_PER_POINT * int(limit))


def max_decoded_bytes(limit: int) -> int:
    return max(MIN_FILE_BYTES, DECODED_BYTES_PER_POINT * int(limit))


def check_file_size(path: Path | str, size: int, limit: int) -> None:
    """Refuse a file larger than :func:`max_file_bytes` before it is read."""
    if size > max_file_bytes(limit):
        raise DataError(f"{size:,} bytes, above the {max_file_bytes(limit):,}-byte limit for one file "
                        f"({FILE_BYTES_PER_POINT} bytes x data.max_points_per_file={limit:,}; raise the limit if the "
                        "file is genuine)", str(path))


def check_decoded(path: Path | str, what: str, nbytes: int, limit: int) -> None:
    """Refuse data that would decode to more than :func:`max_decoded_bytes`, before it is decoded."""
    if nbytes > max_decoded_bytes(limit):
        raise DataError(f"{what} would decode to {nbytes:,} bytes, above the {max_decoded_bytes(limit):,}-byte limit "
                        f"({DECODED_BYTES_PER_POINT} bytes x data.max_points_per_file={limit:,}; raise the limit if "
                        "the file is genuine)", str(path))


def read_bounded(path: Path | str, limit: int) -> bytes:
    """The bytes of a regular file no larger than :func:`max_file_bytes`: size checked on the
    opened file (no swap in between; a FIFO is refused, never waited on), and never more read
    than the limit even if the file grows meanwhile."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except OSError as exc:
        raise DataError(f"cannot open the file ({exc.strerror})", str(path)) from None
    with os.fdopen(fd, "rb") as stream:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise DataError("not a regular file", str(path))
        check_file_size(path, info.st_size, limit)
        data = stream.read(max_file_bytes(limit) + 1)
    check_file_size(path, len(data), limit)
    return data
