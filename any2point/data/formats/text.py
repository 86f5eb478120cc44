"""Text clouds (.txt .xyz .pts .csv): rows of 'x y z ...' or 'x,y,z,...'.

No library reads the variants people write (comma or whitespace separators, an optional
line of column names or a point count, '#' and '//' comments) with errors that name the
line, so this small parser stays ours. Its row count is checked before any number is parsed.
"""
from __future__ import annotations

import codecs
from pathlib import Path

import numpy as np

from ...errors import DataError
from .limits import MAX_COLUMNS, read_bounded
from .records import DEFAULT_MAX_POINTS_PER_FILE, PointFile, check_declared, check_points, check_width

__all__ = ["read_text", "parse_text_cloud"]

_NORMALS = (("nx", "ny", "nz"), ("normal_x", "normal_y", "normal_z"))
_COLORS = (("r", "g", "b"), ("red", "green", "blue"))


def _named(names: list[str], table: np.ndarray, groups) -> np.ndarray | None:
    for group in groups:
        if all(g in names for g in group):
            return table[:, [names.index(g) for g in group]]
    return None


def parse_text_cloud(text: str, source: str, limit: int = DEFAULT_MAX_POINTS_PER_FILE) -> PointFile:
    """xyz (n, 3) of a text cloud; columns named 'nx ny nz' / 'r g b' in a header line become
    normals / colours, other extra columns are kept as fields."""
    lines = [(i, line.strip()) for i, line in enumerate(text.splitlines(), start=1)]
    lines = [(i, line) for i, line in lines if line and not line.startswith(("#", "//"))]
    names: list[str] = []
    if lines:
        first = lines[0][1].replace(",", " ").split(None, MAX_COLUMNS)
        try:
            [float(t) for t in first[:MAX_COLUMNS]]
            if len(first) == 1:  # a point count on its own line
                lines = lines[1:]
        except ValueError:  # column names
            names = [t.lower() for t in first]
            lines = lines[1:]
    check_declared(source, "rows of points", len(lines), limit)
    if not lines:
        raise DataError("no points: expected rows of 'x y z' or 'x,y,z'", source)
    # at most MAX_COLUMNS + 1 values split from a row: a longer one is refused by check_width
    rows = [line.replace(",", " ").split(None, MAX_COLUMNS) for _, line in lines]
    width = min(len(r) for r in rows)
    if width < 3:
        number = next(i for (i, _), r in zip(lines, rows) if len(r) < 3)
        raise DataError(f"line {number}: expected at least 3 values (x y z)", source)
    check_width(source, "the rows", len(rows), width, limit)
    try:
        table = np.asarray([r[:width] for r in rows], dtype=np.float64)
    except ValueError:
        for (number, _), r in zip(lines, rows):
            try:
                [float(t) for t in r[:width]]
            except ValueError:
                raise DataError(f"line {number}: {' '.join(r[:width])!r} is not {width} numbers", source) from None
        raise
    points = check_points(source, table[:, :3])
    if len(names) != width:  # no header, or one that does not describe every column
        return PointFile(points, fields={"extra_columns": table[:, 3:]} if width > 3 else {})
    normals, colors = _named(names, table, _NORMALS), _named(names, table, _COLORS)
    if colors is not None:
        colors = np.clip(colors, 0, 255).astype(np.uint8)
    used = {"x", "y", "z", *(g for group in _NORMALS for g in group if normals is not None),
            *(g for group in _COLORS for g in group if colors is not None)}
    return PointFile(points, normals, colors, {n: table[:, i] for i, n in enumerate(names) if n not in used})


def read_text(path: Path, limit: int) -> PointFile:
    raw = read_bounded(path, limit)
    lines = raw.count(b"\n")
    if lines > limit + 16:  # before decoding or splitting anything; a few lines of header and comments allowed
        check_declared(path, "text lines", lines, limit)
    encoding = "utf-8-sig"  # a UTF-8 byte-order mark is dropped
    if raw.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        encoding = "utf-16"
    # any other byte that is not UTF-8 is read as U+FFFD: in a comment or a column name it is harmless,
    # in a number it makes that line's error
    return parse_text_cloud(raw.decode(encoding, errors="replace"), str(path), limit)
