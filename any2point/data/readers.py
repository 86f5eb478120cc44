"""Readers for single point-cloud and mesh files.

Every reader returns a :class:`Geometry`: vertices (V, 3) and, for a mesh, triangles
(F, 3) (polygons are fan-triangulated). A file with vertices but no faces is a point
cloud. Anything malformed raises :class:`~any2point.errors.DataError` naming the file and
what was expected, never a bare numpy / h5py traceback.
"""
from __future__ import annotations

import re
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import DataError

__all__ = ["Geometry", "SUPPORTED_EXTENSIONS", "read_geometry", "parse_text_cloud"]


@dataclass(frozen=True)
class Geometry:
    """Vertices (V, 3) float64 and triangles (F, 3) int64, or ``faces=None`` for a cloud."""

    vertices: np.ndarray
    faces: np.ndarray | None = None

    @property
    def is_mesh(self) -> bool:
        return self.faces is not None and len(self.faces) > 0


# ----------------------------------------------------------------------------- helpers

def _fan(polygons: np.ndarray) -> np.ndarray:
    """Triangles of convex polygons (M, k) by fanning from their first corner."""
    k = polygons.shape[1]
    if k < 3:
        raise ValueError(f"a face needs at least 3 corners, got {k}")
    parts = [np.stack([polygons[:, 0], polygons[:, j], polygons[:, j + 1]], axis=1) for j in range(1, k - 1)]
    return np.concatenate(parts, axis=0)


def _triangulate(faces: list[list[int]]) -> np.ndarray:
    """Fan-triangulate polygons of mixed sizes, grouped by size so each group is one array op."""
    if not faces:
        return np.zeros((0, 3), dtype=np.int64)
    by_size: dict[int, list[list[int]]] = {}
    for f in faces:
        by_size.setdefault(len(f), []).append(f)
    return np.concatenate([_fan(np.asarray(group, dtype=np.int64)) for group in by_size.values()], axis=0)


def _text_lines(path: Path, comment: str = "#") -> list[tuple[int, str]]:
    """(line number, content) of the non-empty lines, comments stripped."""
    text = path.read_bytes().decode("utf-8", errors="replace")
    out = []
    for number, line in enumerate(text.splitlines(), start=1):
        if comment:
            line = line.split(comment, 1)[0]
        line = line.strip()
        if line:
            out.append((number, line))
    return out


# ----------------------------------------------------------------------------- OFF

_OFF_HEADER = re.compile(r"^(ST)?C?N?OFF(.*)$", re.IGNORECASE)


def _read_off(path: Path) -> Geometry:
    lines = _text_lines(path)
    if not lines:
        raise DataError("empty file; expected an OFF header", str(path))
    match = _OFF_HEADER.match(lines[0][1])
    if match is None:
        raise DataError(f"expected the header 'OFF' on the first line, found {lines[0][1][:40]!r}", str(path))
    rest = match.group(2).split()  # counts glued to the header: "OFF490 518 0"
    cursor = 1
    if not rest:
        if len(lines) < 2:
            raise DataError("file ends after the header; expected 'num_vertices num_faces num_edges'", str(path))
        rest = lines[1][1].split()
        cursor = 2
    try:
        nv, nf = int(rest[0]), int(rest[1])
    except (IndexError, ValueError):
        raise DataError(f"expected 'num_vertices num_faces num_edges' after the header, found {' '.join(rest)!r}",
                        str(path)) from None
    if nv < 0 or nf < 0:
        raise DataError(f"negative vertex or face count ({nv}, {nf})", str(path))
    if len(lines) < cursor + nv + nf:
        raise DataError(f"file is truncated: the header promises {nv} vertices and {nf} faces but only "
                        f"{len(lines) - cursor} data lines follow", str(path))
    vrows = [line.split() for _, line in lines[cursor:cursor + nv]]
    for (number, _), row in zip(lines[cursor:cursor + nv], vrows):
        if len(row) < 3:
            raise DataError(f"line {number}: a vertex needs 3 coordinates, found {len(row)}", str(path))
    vertices = np.asarray([row[:3] for row in vrows], dtype=np.float64).reshape(-1, 3)
    faces = []
    for number, line in lines[cursor + nv:cursor + nv + nf]:
        row = line.split()
        k = int(row[0])
        if len(row) < k + 1:
            raise DataError(f"line {number}: a face of {k} corners lists only {len(row) - 1} indices", str(path))
        faces.append([int(t) for t in row[1:k + 1]])
    return Geometry(vertices, _triangulate(faces) if nf else None)


# ----------------------------------------------------------------------------- PLY

_PLY_TYPES = {
    "char": "i1", "int8": "i1", "uchar": "u1", "uint8": "u1",
    "short": "i2", "int16": "i2", "ushort": "u2", "uint16": "u2",
    "int": "i4", "int32": "i4", "uint": "u4", "uint32": "u4",
    "float": "f4", "float32": "f4", "double": "f8", "float64": "f8",
}


@dataclass
class _PlyProperty:
    name: str
    dtype: str  # numpy code without byte order
    count_dtype: str | None = None  # set for list properties


@dataclass
class _PlyElement:
    name: str
    count: int
    properties: list[_PlyProperty]


def _ply_type(path: Path, name: str) -> str:
    try:
        return _PLY_TYPES[name]
    except KeyError:
        raise DataError(f"unknown PLY property type {name!r}; expected one of {sorted(_PLY_TYPES)}", str(path)) from None


def _parse_ply_header(path: Path, raw: bytes) -> tuple[str, list[_PlyElement], int]:
    end = re.search(rb"end_header[ \t]*\r?\n", raw)
    if not raw.startswith(b"ply") or end is None:
        raise DataError("not a PLY file: expected 'ply' on the first line and an 'end_header' line", str(path))
    fmt, elements = None, []
    for line in raw[:end.start()].decode("ascii", errors="replace").splitlines()[1:]:
        words = line.split()
        if not words or words[0] in ("comment", "obj_info"):
            continue
        if words[0] == "format" and len(words) >= 2:
            fmt = words[1]
        elif words[0] == "element" and len(words) == 3:
            elements.append(_PlyElement(words[1], int(words[2]), []))
        elif words[0] == "property" and elements:
            if len(words) == 5 and words[1] == "list":
                prop = _PlyProperty(words[4], _ply_type(path, words[3]), _ply_type(path, words[2]))
            elif len(words) == 3:
                prop = _PlyProperty(words[2], _ply_type(path, words[1]))
            else:
                raise DataError(f"malformed PLY header line {line!r}", str(path))
            elements[-1].properties.append(prop)
        else:
            raise DataError(f"malformed PLY header line {line!r}", str(path))
    if fmt not in ("ascii", "binary_little_endian", "binary_big_endian"):
        raise DataError(f"PLY format {fmt!r}; expected ascii, binary_little_endian or binary_big_endian", str(path))
    return fmt, elements, end.end()


def _ply_binary_element(el: _PlyElement, buf: bytes, offset: int, order: str) -> tuple[dict, int]:
    """Columns of one binary element and the offset after it.

    Fixed-size records are one ``np.frombuffer`` with a structured dtype; list properties
    take the same fast path when every list has the length of the first record's."""
    props = el.properties
    if el.count == 0:
        return {p.name: np.zeros(0) for p in props}, offset
    lengths, probe = {}, offset
    for p in props:  # list lengths of the first record
        if p.count_dtype:
            width = np.dtype(p.count_dtype).itemsize
            if probe + width > len(buf):
                raise ValueError("data ends inside an element")
            lengths[p.name] = int(np.frombuffer(buf, order + p.count_dtype, 1, probe)[0])
            probe += width + lengths[p.name] * np.dtype(p.dtype).itemsize
        else:
            probe += np.dtype(p.dtype).itemsize
    fields = []
    for p in props:
        if p.count_dtype:
            fields += [(p.name + "/n", order + p.count_dtype), (p.name, order + p.dtype, (lengths[p.name],))]
        else:
            fields.append((p.name, order + p.dtype))
    record = np.dtype(fields)
    if offset + el.count * record.itemsize <= len(buf):
        table = np.frombuffer(buf, record, el.count, offset)
        if all((table[p.name + "/n"] == lengths[p.name]).all() for p in props if p.count_dtype):
            return {p.name: table[p.name] for p in props}, offset + el.count * record.itemsize
    if not lengths:
        raise ValueError(f"data ends inside element '{el.name}' ({el.count} records of {record.itemsize} bytes expected)")
    columns: dict[str, list] = {p.name: [] for p in props}
    for _ in range(el.count):  # lists of mixed lengths: walk record by record
        for p in props:
            if p.count_dtype:
                n = int(np.frombuffer(buf, order + p.count_dtype, 1, offset)[0])
                offset += np.dtype(p.count_dtype).itemsize
                columns[p.name].append(np.frombuffer(buf, order + p.dtype, n, offset))
                offset += n * np.dtype(p.dtype).itemsize
            else:
                columns[p.name].append(np.frombuffer(buf, order + p.dtype, 1, offset)[0])
                offset += np.dtype(p.dtype).itemsize
    return columns, offset


def _ply_ascii_element(el: _PlyElement, rows: list[list[str]]) -> dict:
    props = el.properties
    if not any(p.count_dtype for p in props):
        if any(len(r) != len(props) for r in rows):
            bad = next(i for i, r in enumerate(rows) if len(r) != len(props))
            raise ValueError(f"element '{el.name}' record {bad} has {len(rows[bad])} values, expected {len(props)}")
        table = np.asarray(rows, dtype=np.float64).reshape(len(rows), len(props))
        return {p.name: table[:, i] for i, p in enumerate(props)}
    columns: dict[str, list] = {p.name: [] for p in props}
    for r in rows:
        pos = 0
        for p in props:
            if p.count_dtype:
                n = int(r[pos])
                columns[p.name].append([int(float(t)) for t in r[pos + 1:pos + 1 + n]])
                if len(columns[p.name][-1]) != n:
                    raise ValueError(f"element '{el.name}' has a list shorter than its count {n}")
                pos += 1 + n
            else:
                columns[p.name].append(float(r[pos]))
                pos += 1
    return columns


def _read_ply(path: Path) -> Geometry:
    raw = path.read_bytes()
    fmt, elements, offset = _parse_ply_header(path, raw)
    data: dict[str, dict] = {}
    if fmt == "ascii":
        rows = [line.split() for line in raw[offset:].decode("ascii", errors="replace").splitlines() if line.strip()]
        start = 0
        for el in elements:
            if start + el.count > len(rows):
                raise DataError(f"file is truncated: element '{el.name}' needs {el.count} lines, "
                                f"{len(rows) - start} remain", str(path))
            data[el.name] = _ply_ascii_element(el, rows[start:start + el.count])
            start += el.count
    else:
        order = "<" if fmt == "binary_little_endian" else ">"
        for el in elements:
            try:
                data[el.name], offset = _ply_binary_element(el, raw, offset, order)
            except (ValueError, IndexError, struct.error) as exc:
                raise DataError(f"file is truncated or corrupt in element '{el.name}': {exc}", str(path)) from None
    vertex = data.get("vertex")
    if vertex is None or not all(k in vertex for k in "xyz"):
        raise DataError("expected a 'vertex' element with properties x, y, z", str(path))
    vertices = np.stack([np.asarray(vertex[k], dtype=np.float64) for k in "xyz"], axis=1)
    face = data.get("face", {})
    key = "vertex_indices" if "vertex_indices" in face else "vertex_index" if "vertex_index" in face else None
    if key is None or len(face[key]) == 0:
        return Geometry(vertices)
    lists = face[key]
    if isinstance(lists, np.ndarray) and lists.ndim == 2:
        triangles = _fan(lists.astype(np.int64))
    else:
        triangles = _triangulate([list(map(int, f)) for f in lists])
    return Geometry(vertices, triangles)


# ----------------------------------------------------------------------------- OBJ

def _obj_index(token: str, seen: int, number: int, path: Path) -> int:
    value = int(token.split("/", 1)[0])
    if value > 0:
        return value - 1
    if value < 0:
        return seen + value  # relative to the vertices read so far
    raise DataError(f"line {number}: OBJ indices start at 1, found 0", str(path))


def _read_obj(path: Path) -> Geometry:
    vertices: list[list[str]] = []
    faces: list[list[int]] = []
    for number, line in _text_lines(path):
        words = line.split()
        if words[0] == "v":
            if len(words) < 4:
                raise DataError(f"line {number}: a vertex needs 3 coordinates, found {len(words) - 1}", str(path))
            vertices.append(words[1:4])
        elif words[0] == "f":
            faces.append([_obj_index(t, len(vertices), number, path) for t in words[1:]])
    verts = np.asarray(vertices, dtype=np.float64).reshape(-1, 3)
    return Geometry(verts, _triangulate(faces) if faces else None)


# ----------------------------------------------------------------------------- arrays

def _cloud_array(path: Path, array: np.ndarray, what: str) -> np.ndarray:
    array = np.asarray(array)
    if array.ndim == 3 and array.shape[0] == 1:
        array = array[0]
    if array.ndim != 2 or array.shape[1] < 3:
        raise DataError(f"{what} has shape {array.shape}; expected one cloud of shape (num_points, 3) "
                        "(extra columns such as normals are ignored)", str(path))
    if not np.issubdtype(array.dtype, np.number):
        raise DataError(f"{what} holds {array.dtype} values; expected numbers", str(path))
    return array[:, :3].astype(np.float64)


def _read_npy(path: Path) -> Geometry:
    return Geometry(_cloud_array(path, np.load(path, allow_pickle=False), "the array"))


_NPZ_KEYS = ("points", "xyz", "pos", "data", "vertices")


def _read_npz(path: Path) -> Geometry:
    with np.load(path, allow_pickle=False) as archive:
        keys = list(archive.keys())
        if "vertices" in keys and "faces" in keys:
            faces = np.asarray(archive["faces"])
            if faces.ndim != 2 or faces.shape[1] < 3 or not np.issubdtype(faces.dtype, np.integer):
                raise DataError(f"'faces' has shape {faces.shape} and dtype {faces.dtype}; expected integer (F, 3+)",
                                str(path))
            return Geometry(_cloud_array(path, archive["vertices"], "'vertices'"), _fan(faces.astype(np.int64)))
        key = keys[0] if len(keys) == 1 else next((k for k in _NPZ_KEYS if k in keys), None)
        if key is None:
            raise DataError(f"holds arrays {keys}; expected one array, or one named one of {list(_NPZ_KEYS)}",
                            str(path))
        return Geometry(_cloud_array(path, archive[key], f"array {key!r}"))


def parse_text_cloud(text: str, source: str) -> np.ndarray:
    """xyz (n, 3) float64 of a text cloud: comma or whitespace separated, extra columns
    (normals, colours) ignored, an optional header line (column names or a point count)."""
    lines = [(i, line.strip()) for i, line in enumerate(text.splitlines(), start=1)]
    lines = [(i, line) for i, line in lines if line and not line.startswith(("#", "//"))]
    if lines:
        first = lines[0][1].replace(",", " ").split()
        try:
            [float(t) for t in first]
            if len(first) == 1:  # a point count on its own line
                lines = lines[1:]
        except ValueError:  # column names
            lines = lines[1:]
    if not lines:
        raise DataError("no points: expected rows of 'x y z' or 'x,y,z'", source)
    rows = [line.replace(",", " ").split() for _, line in lines]
    width = min(len(r) for r in rows)
    if width < 3:
        number = next(i for (i, _), r in zip(lines, rows) if len(r) < 3)
        raise DataError(f"line {number}: expected at least 3 values (x y z)", source)
    try:
        return np.asarray([r[:3] for r in rows], dtype=np.float64)
    except ValueError:
        for (number, _), r in zip(lines, rows):
            try:
                [float(t) for t in r[:3]]
            except ValueError:
                raise DataError(f"line {number}: {' '.join(r[:3])!r} is not three numbers", source) from None
        raise


def _read_text(path: Path) -> Geometry:
    return Geometry(parse_text_cloud(path.read_bytes().decode("utf-8", errors="replace"), str(path)))


def _read_h5(path: Path) -> Geometry:
    import h5py

    try:
        with h5py.File(path, "r") as f:
            names: list[str] = []
            f.visititems(lambda name, obj: names.append(name) if isinstance(obj, h5py.Dataset) else None)
            key = "data" if "data" in names else names[0] if len(names) == 1 else None
            if key is None:
                raise DataError(f"holds datasets {names}; expected a dataset named 'data' or exactly one dataset",
                                str(path))
            array = f[key][()]
    except OSError as exc:
        raise DataError(f"not a readable HDF5 file (truncated or corrupt?): {exc}", str(path)) from None
    if np.ndim(array) == 3 and array.shape[0] > 1:
        raise DataError(f"dataset {key!r} holds {array.shape[0]} clouds; a single file to predict on must hold one "
                        "(use a dataset config such as modelnet40 for HDF5 collections)", str(path))
    return Geometry(_cloud_array(path, array, f"dataset {key!r}"))


_READERS = {
    ".off": _read_off, ".ply": _read_ply, ".obj": _read_obj,
    ".npy": _read_npy, ".npz": _read_npz,
    ".txt": _read_text, ".xyz": _read_text, ".pts": _read_text, ".csv": _read_text,
    ".h5": _read_h5, ".hdf5": _read_h5,
}

SUPPORTED_EXTENSIONS: tuple[str, ...] = tuple(_READERS)


def _validate(path: Path, geometry: Geometry) -> Geometry:
    vertices = geometry.vertices
    if len(vertices) == 0:
        raise DataError("empty: the file holds no vertices or points", str(path))
    bad = ~np.isfinite(vertices).all(axis=1)
    if bad.any():
        raise DataError(f"point {int(np.argmax(bad))} has a NaN or infinite coordinate "
                        f"({int(bad.sum())} such points)", str(path))
    faces = geometry.faces
    if faces is not None and len(faces):
        if faces.min() < 0 or faces.max() >= len(vertices):
            bad_face = int(np.argmax((faces < 0).any(axis=1) | (faces >= len(vertices)).any(axis=1)))
            raise DataError(f"triangle {bad_face} refers to vertex {faces[bad_face].tolist()} but there are only "
                            f"{len(vertices)} vertices", str(path))
    return geometry


def read_geometry(path: str | Path) -> Geometry:
    """The vertices (and triangles, for a mesh) of any supported file."""
    path = Path(path)
    reader = _READERS.get(path.suffix.lower())
    if reader is None:
        raise DataError(f"unsupported file type {path.suffix or '(no extension)'!r}; supported: "
                        f"{', '.join(SUPPORTED_EXTENSIONS)}", str(path))
    if not path.is_file():
        raise DataError("file does not exist", str(path))
    try:
        geometry = reader(path)
    except DataError:
        raise
    except (ValueError, IndexError, KeyError, OSError, EOFError, struct.error) as exc:
        raise DataError(f"cannot read this {path.suffix.lower()} file: {type(exc).__name__}: {exc}",
                        str(path)) from None
    return _validate(path, geometry)
