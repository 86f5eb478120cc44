"""PLY through plyfile: a point cloud with all its vertex properties, or a mesh when the
file has faces (plyfile reads the mixed-length face lists that trimesh's binary PLY reader
refuses). The element counts of the header are checked before plyfile reads any data."""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from ...errors import DataError
from .meshes import mesh_from_faces
from .records import PointFile, check_declared, check_points

__all__ = ["read_ply"]

_COUNT = re.compile(r"\+?[0-9]+")  # what int() reads as a non-negative count, without "_" or spaces
_NORMALS = ("nx", "ny", "nz")
_COLORS = ("red", "green", "blue", "alpha")


def _header_counts(path: Path, raw: bytes) -> list[tuple[str, int]]:
    """Every element's declared count, the header split as plyfile splits it (its newline is
    the one after 'ply'; fields on any whitespace; the header ends at a line 'end_header'), so
    no spelling plyfile reads can slip past the size check."""
    for nl in (b"\r\n", b"\n", b"\r"):
        if raw.startswith(b"ply" + nl):
            break
    else:
        raise DataError("not a PLY file: expected 'ply' on the first line and an 'end_header' line", str(path))
    counts = []
    start = len(b"ply" + nl)
    while True:
        end = raw.find(nl, start)
        if end < 0:
            raise DataError("not a PLY file: expected an 'end_header' line", str(path))
        line = raw[start:end].decode("ascii", "replace")
        start = end + len(nl)
        if line == "end_header":
            return counts
        fields = line.split()
        if fields[:1] != ["element"]:
            continue
        if len(fields) != 3 or not _COUNT.fullmatch(fields[2]):
            raise DataError(f"header line {line!r}: expected 'element NAME COUNT' with COUNT a non-negative integer",
                            str(path))
        counts.append((fields[1], int(fields[2])))


def _columns(vertex, names) -> np.ndarray | None:
    present = [n for n in names if n in vertex.dtype.names]
    if len(present) < 3:
        return None
    return np.stack([np.asarray(vertex[n]) for n in present], axis=1)


def read_ply(path: Path, limit: int):
    """A :class:`PointFile` (no faces) or a ``trimesh.Trimesh`` (faces)."""
    import plyfile

    raw = path.read_bytes()
    for name, count in _header_counts(path, raw):
        check_declared(path, f"PLY element '{name}'", count, limit)
    import io

    try:
        data = plyfile.PlyData.read(io.BytesIO(raw))
        vertex = data["vertex"].data if "vertex" in data else None
        faces = None
        if "face" in data and data["face"].count:
            face = data["face"].data
            key = next((k for k in ("vertex_indices", "vertex_index") if k in face.dtype.names), None)
            faces = [np.asarray(f, dtype=np.int64) for f in face[key]] if key else None
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
        return mesh_from_faces(path, points, faces, vertex_normals=normals, vertex_colors=colors)
    known = {"x", "y", "z", *(_NORMALS if normals is not None else ()), *(_COLORS if colors is not None else ())}
    fields = {n: np.asarray(vertex[n]) for n in vertex.dtype.names if n not in known}
    return PointFile(points, normals, colors, fields)
