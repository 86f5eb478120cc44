"""PCD (PCL, ROS) through pypcd4. The header (parsed by pypcd4 itself) is checked first:
the point count against the limit, the values of one point (pypcd4 builds a dtype entry per
value), the bytes the records decode to, and for ``binary_compressed`` the sizes pypcd4 would
allocate and decompress, which a crafted file can set to anything."""
from __future__ import annotations

import io
import struct
from pathlib import Path

import numpy as np

from ...errors import DataError
from .limits import LZF_MAX_RATIO, MAX_HEADER_BYTES, MAX_VALUES_PER_RECORD, check_decoded, read_bounded
from .records import PointFile, check_declared, check_points

__all__ = ["read_pcd"]

_NORMALS = ("normal_x", "normal_y", "normal_z")
_LISTS = ("FIELDS", "SIZE", "TYPE", "COUNT")  # one entry per field


def _header(path: Path, raw: bytes):
    """pypcd4's metadata and the offset of the data (the header ends with its DATA line)."""
    from pypcd4.pypcd4 import MetaData

    lines, offset = [], 0
    for line in io.BytesIO(raw[:MAX_HEADER_BYTES]):
        offset += len(line)
        text = line.decode("utf-8", "replace").strip()
        if text.startswith("#") or not text:
            continue
        words = text.split(None, MAX_VALUES_PER_RECORD + 1)
        if words[0].upper() in _LISTS and len(words) > MAX_VALUES_PER_RECORD + 1:
            raise DataError(f"PCD {words[0]} line lists more than {MAX_VALUES_PER_RECORD} fields; expected at most "
                            f"{MAX_VALUES_PER_RECORD} values per point", str(path))
        lines.append(text)
        if text.startswith("DATA") or len(lines) >= 10:
            break
    try:
        return MetaData.parse_header(lines), offset
    except Exception as exc:  # pydantic's validation error lists what is wrong
        first = str(exc).strip().splitlines()
        raise DataError(f"not a valid PCD header ({type(exc).__name__}: {' '.join(first[:3])}); expected VERSION, "
                        "FIELDS, SIZE, TYPE, COUNT, WIDTH, HEIGHT, POINTS and DATA lines", str(path)) from None


def read_pcd(path: Path, limit: int) -> PointFile:
    from pypcd4 import PointCloud

    raw = read_bounded(path, limit)
    meta, offset = _header(path, raw)
    check_declared(path, "PCD points", meta.points, limit)
    check_declared(path, "PCD width x height", meta.width * meta.height, limit)
    if meta.width * meta.height != meta.points:
        raise DataError(f"PCD header declares WIDTH {meta.width} x HEIGHT {meta.height} but POINTS {meta.points}",
                        str(path))
    counts, sizes = tuple(meta.count or ()), tuple(meta.size or ())
    if len({len(meta.fields), len(sizes), len(meta.type or ()), len(counts)}) != 1:
        raise DataError(f"PCD header lists {len(meta.fields)} FIELDS, {len(sizes)} SIZE, {len(meta.type or ())} TYPE "
                        f"and {len(counts)} COUNT entries; expected one of each per field", str(path))
    if any(not 1 <= c <= MAX_VALUES_PER_RECORD for c in counts) or any(z not in (1, 2, 4, 8) for z in sizes):
        raise DataError(f"PCD COUNT {list(counts)[:8]} / SIZE {list(sizes)[:8]}; expected counts of 1 to "
                        f"{MAX_VALUES_PER_RECORD} values per field and sizes of 1, 2, 4 or 8 bytes", str(path))
    if sum(counts) > MAX_VALUES_PER_RECORD:
        raise DataError(f"PCD COUNT declares {sum(counts):,} values per point; expected at most "
                        f"{MAX_VALUES_PER_RECORD}", str(path))
    itemsize = sum(c * z for c, z in zip(counts, sizes))
    check_decoded(path, f"{meta.points:,} PCD points of {itemsize} bytes", meta.points * itemsize, limit)
    try:
        built = meta.build_dtype().itemsize
        if built != itemsize:
            raise ValueError(f"records of {built} bytes, not {itemsize}")
    except Exception as exc:
        raise DataError(f"PCD fields cannot form records ({exc}); expected TYPE F/I/U with SIZE 1, 2, 4 or 8",
                        str(path)) from None
    data = str(meta.data).lower().rsplit(".", 1)[-1]
    if "compressed" in data:
        if len(raw) < offset + 8:
            raise DataError("binary_compressed PCD ends before its size fields", str(path))
        compressed, uncompressed = struct.unpack_from("<II", raw, offset)
        if uncompressed != meta.points * itemsize or compressed > len(raw) - offset - 8:
            raise DataError(f"binary_compressed PCD declares {compressed:,} compressed / {uncompressed:,} "
                            f"uncompressed bytes; expected at most {len(raw) - offset - 8:,} and exactly "
                            f"{meta.points * itemsize:,} ({meta.points} points of {itemsize} bytes)", str(path))
        if uncompressed > LZF_MAX_RATIO * compressed + 1:
            raise DataError(f"binary_compressed PCD declares {uncompressed:,} bytes from {compressed:,} compressed "
                            f"bytes; LZF expands at most {LZF_MAX_RATIO}-fold", str(path))
    elif data == "binary" and len(raw) - offset < meta.points * itemsize:
        raise DataError(f"file is truncated: {meta.points} points of {itemsize} bytes declared, "
                        f"{len(raw) - offset} bytes of data", str(path))
    try:
        cloud = PointCloud.from_fileobj(io.BufferedReader(io.BytesIO(raw)))
        table = np.atleast_1d(cloud.pc_data)
    except Exception as exc:
        raise DataError(f"cannot read this PCD file (pypcd4: {type(exc).__name__}: {exc})", str(path)) from None
    names = table.dtype.names or ()
    if len(table) != meta.points:
        raise DataError(f"file is truncated: {meta.points} points declared, {len(table)} read", str(path))
    if not all(k in names for k in "xyz"):
        raise DataError(f"PCD fields {list(names)}; expected x, y and z", str(path))
    points = check_points(path, np.stack([table[k] for k in "xyz"], axis=1))
    normals = np.stack([table[k] for k in _NORMALS], axis=1) if all(k in names for k in _NORMALS) else None
    colors = None
    if "rgb" in names or "rgba" in names:
        key = "rgb" if "rgb" in names else "rgba"
        packed = np.ascontiguousarray(table[key]).view(np.uint32) if table[key].itemsize == 4 else None
        if packed is not None:  # PCL packs 0x00RRGGBB into a float32 or uint32
            colors = np.stack([(packed >> 16) & 255, (packed >> 8) & 255, packed & 255], axis=1).astype(np.uint8)
    known = {"x", "y", "z", *(_NORMALS if normals is not None else ()), *(("rgb", "rgba") if colors is not None else ())}
    return PointFile(points, normals, colors, {k: np.asarray(table[k]) for k in names if k not in known})
