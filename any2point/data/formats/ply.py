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

_ELEMENT = re.compile(rb"^element[ \t]+(\S+)[ \t]+(\d+)[ \t]*\r?$", re.MULTILINE)
_NORMALS = ("nx", "ny", "nz")
_COLORS = ("red", "green", "blue", "alpha")


def _header_counts(path: Path, raw: bytes) -> dict[str, int]:
    end = raw.find(b"end_header")
    if not raw.startswith(b"ply") or end < 0:
        raise DataError("not a PLY file: expected 'ply' on the first line and an 'end_header' line", str(path))
    return {name.decode("ascii", "replace"): int(count) for name, count in _ELEMENT.findall(raw[:end])}


def _columns(vertex, names) -> np.ndarray | None:
    present = [n for n in names if n in vertex.dtype.names]
    if len(present) < 3:
        return None
    return np.stack([np.asarray(vertex[n]) for n in present], axis=1)


def read_ply(path: Path, limit: int):
    """A :class:`PointFile` (no faces) or a ``trimesh.Trimesh`` (faces)."""
    import plyfile

    raw = path.read_bytes()
    for name, count in _header_counts(path, raw).items():
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
