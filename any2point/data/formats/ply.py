"""PLY through plyfile: a point cloud with all its vertex properties, or a mesh when the
file has faces (plyfile reads the mixed-length face lists that trimesh's binary PLY reader
refuses). The elements the header declares are checked before plyfile reads any data: each
count against the limit, and all of them against the bytes that follow the header."""
from __future__ import annotations

import io
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ...errors import DataError
from .limits import MAX_HEADER_BYTES, read_bounded
from .meshes import mesh_from_faces
from .records import PointFile, check_declared, check_points

__all__ = ["read_ply"]

_COUNT = re.compile(r"\+?[0-9]+")  # what int() reads as a non-negative count, without "_" or spaces
_NORMALS = ("nx", "ny", "nz")
_COLORS = ("red", "green", "blue", "alpha")
# bytes of each property type plyfile reads (its names and the numpy codes it also accepts)
_SIZES = {**dict.fromkeys(("char", "uchar", "int8", "uint8", "i1", "u1", "b1"), 1),
          **dict.fromkeys(("short", "ushort", "int16", "uint16", "i2", "u2"), 2),
          **dict.fromkeys(("int", "uint", "int32", "uint32", "float", "float32", "i4", "u4", "f4"), 4),
          **dict.fromkeys(("double", "float64", "f8"), 8)}


@dataclass
class _Element:
    name: str
    count: int
    properties: int = 0
    min_bytes: int = 0  # of one record: fixed-size properties plus each list's length field


def _header(path: Path, raw: bytes) -> tuple[list[_Element], bool, int]:
    """The elements the header declares, whether the data is binary, and where it starts.

    The header is split as plyfile splits it (its newline is the one after 'ply'; fields on
    any whitespace; it ends at a line 'end_header'), so no spelling plyfile reads can slip
    past the size checks."""
    for nl in (b"\r\n", b"\n", b"\r"):
        if raw.startswith(b"ply" + nl):
            break
    else:
        raise DataError("not a PLY file: expected 'ply' on the first line and an 'end_header' line", str(path))
    elements: list[_Element] = []
    binary = False
    start = len(b"ply" + nl)
    while True:
        end = raw.find(nl, start, MAX_HEADER_BYTES)
        if end < 0:
            raise DataError(f"not a PLY file: expected an 'end_header' line within the first {MAX_HEADER_BYTES:,} "
                            "bytes", str(path))
        line = raw[start:end].decode("ascii", "replace")
        start = end + len(nl)
        if line == "end_header":
            return elements, binary, start
        fields = line.split()
        if fields[:1] == ["format"]:
            binary = fields[1:2] != ["ascii"]
        elif fields[:1] == ["element"]:
            if len(fields) != 3 or not _COUNT.fullmatch(fields[2]):
                raise DataError(f"header line {line!r}: expected 'element NAME COUNT' with COUNT a non-negative "
                                "integer", str(path))
            elements.append(_Element(fields[1], int(fields[2])))
        elif fields[:1] == ["property"] and elements:
            kind = fields[2:3] if fields[1:2] == ["list"] else fields[1:2]  # a list's length type, or the type
            elements[-1].properties += 1
            elements[-1].min_bytes += _SIZES.get(kind[0] if kind else "", 1)


def _check_elements(path: Path, elements: list[_Element], binary: bool, data_bytes: int, limit: int) -> None:
    """Every element within the limit, and all of them within the data that follows the
    header: plyfile's work then grows with the file, not with what the header claims (an
    element of property-less records costs time per record and no byte)."""
    needed = 0
    for element in elements:
        check_declared(path, f"PLY element '{element.name}'", element.count, limit)
        if element.count and not element.properties:
            raise DataError(f"PLY element '{element.name}' declares {element.count:,} records with no properties; "
                            "expected at least one property per element", str(path))
        # an ASCII value takes at least one character and a separator (but the file's last)
        needed += element.count * (element.min_bytes if binary else 2 * element.properties)
    if needed > data_bytes + (0 if binary else 1):
        raise DataError(f"file is truncated: the header's elements need at least {needed:,} bytes of data, "
                        f"{data_bytes:,} follow", str(path))


def _columns(vertex, names) -> np.ndarray | None:
    present = [n for n in names if n in vertex.dtype.names]
    if len(present) < 3:
        return None
    return np.stack([np.asarray(vertex[n]) for n in present], axis=1)


def read_ply(path: Path, limit: int):
    """A :class:`PointFile` (no faces) or a ``trimesh.Trimesh`` (faces)."""
    import plyfile

    raw = read_bounded(path, limit)
    elements, binary, start = _header(path, raw)
    _check_elements(path, elements, binary, len(raw) - start, limit)
    try:
        data = plyfile.PlyData.read(io.BytesIO(raw))
        vertex = data["vertex"].data if "vertex" in data else None
        faces = None
        if "face" in data and data["face"].count:
            face = data["face"].data
            key = next((k for k in ("vertex_indices", "vertex_index") if k in face.dtype.names), None)
            faces = list(face[key]) if key else None
    except DataError:
        raise
    except Exception as exc:  # plyfile's parse errors, numpy's on short data
        raise DataError(f"file is truncated or corrupt (plyfile: {type(exc).__name__}: {exc}); expected a valid PLY "
                        "file", str(path)) from None
    if vertex is None or not all(k in (vertex.dtype.names or ()) for k in "xyz"):
        raise DataError("expected a 'vertex' element with properties x, y, z", str(path))
    points = check_points(path, np.stack([np.asarray(vertex[k]) for k in "xyz"], axis=1))
    normals, colors = _columns(vertex, _NORMALS), _columns(vertex, _COLORS)
    if faces:
        return mesh_from_faces(path, points, faces, limit, vertex_normals=normals, vertex_colors=colors)
    known = {"x", "y", "z", *(_NORMALS if normals is not None else ()), *(_COLORS if colors is not None else ())}
    fields = {n: np.asarray(vertex[n]) for n in vertex.dtype.names if n not in known}
    return PointFile(points, normals, colors, fields)
