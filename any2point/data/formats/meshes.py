"""Meshes through trimesh: OFF, OBJ, STL, GLB / glTF (and PLY faces handed over by ``ply``).

trimesh parses; what stays ours is the size check before it does (vertices and the triangles
the polygons make, from the file's header or JSON or counted in the text; the bytes a glTF
file's accessors decode to) and the checks after it: a scene's instances counted before it
is flattened with its transforms, an OFF file holding fewer faces than its header declares,
faces pointing past the vertices.

Only geometry is read: materials, textures and images never (trimesh is told to skip them,
and an OBJ file's ``usemtl`` lines are dropped: trimesh splits the mesh at each, with work
growing with vertices x materials). Text formats are handed to trimesh as UTF-8: a file that
is not UTF-8 has its non-ASCII bytes read as '?' (they are in names and comments: numbers
and keywords are ASCII), so it reads the same whatever its real encoding.
"""
from __future__ import annotations

import codecs
import io
import json
import os
import re
import stat
import struct
from pathlib import Path, PurePosixPath
from urllib.parse import unquote

import numpy as np

from ...errors import DataError
from .limits import check_decoded, check_file_size, max_file_bytes, read_bounded
from .records import check_declared, check_points

__all__ = ["read_mesh_file", "mesh_from_faces", "polygon_triangles", "MESH_TYPES"]

# extension -> trimesh file_type
MESH_TYPES = {".off": "off", ".obj": "obj", ".stl": "stl", ".glb": "glb", ".gltf": "gltf"}

_OFF_COUNTS = re.compile(rb"^\s*(?:ST)?C?N?OFF[ \t]*(\d+)?\s+(\d+)\s+(\d+)", re.IGNORECASE)
_DATA_LINE = re.compile(rb"^[ \t\r]*[^\s#][^\n]*", re.MULTILINE)  # neither blank nor a comment
_OBJ_VERTEX = re.compile(rb"^[ \t]*v[ \t]", re.MULTILINE)
_OBJ_FACE = re.compile(rb"^[ \t]*f([^\n]*)", re.MULTILINE)  # a superset of the lines trimesh reads as faces
_TRIANGLES = "triangles (polygons fan-triangulated)"
# glTF accessor component types and element types (glTF 2.0 specification, 3.6.2)
_COMPONENT_BYTES = {5120: 1, 5121: 1, 5122: 2, 5123: 2, 5125: 4, 5126: 4}
_TYPE_VALUES = {"SCALAR": 1, "VEC2": 2, "VEC3": 3, "VEC4": 4, "MAT2": 4, "MAT3": 9, "MAT4": 16}


def _off_counts(path: Path, raw: bytes, limit: int) -> tuple[int, int]:
    """(vertices, triangles) of an OFF file: the counts of its header, glued ("OFF490 518 0")
    or not, and the triangles its polygons make (each face line starts with its vertex
    count); a file with fewer data lines than declared is truncated (trimesh would read the
    faces it finds)."""
    text = re.sub(rb"#[^\n]*", b"", raw[:4096])  # comments before the counts
    match = _OFF_COUNTS.match(text)
    if match is None:
        raise DataError("expected an OFF header: 'OFF' then 'num_vertices num_faces num_edges'", str(path))
    first, second, third = (int(g) if g is not None else None for g in match.groups())
    vertices, faces = (first, second) if first is not None else (second, third)
    check_declared(path, "vertices", vertices, limit)
    check_declared(path, "faces", faces, limit)
    header = 1 if first is not None else 2
    rows = triangles = 0
    for line in _DATA_LINE.finditer(raw):
        rows += 1
        if rows > header + vertices:
            try:
                triangles += max(int(line.group().split(None, 1)[0]) - 2, 0)
            except ValueError:  # not a count: trimesh says so
                pass
            if triangles > limit:
                break
        if rows == header + vertices + faces:
            break
    check_declared(path, _TRIANGLES, triangles, limit)
    if rows < header + vertices + faces:
        raise DataError(f"file is truncated: the header declares {vertices} vertices and {faces} faces, "
                        f"{rows - header} data lines follow", str(path))
    return vertices, triangles


def _obj_counts(raw: bytes, limit: int) -> tuple[int, int]:
    """(vertex lines, triangles of the face lines): a face of n indices makes n - 2."""
    triangles = 0
    for face in _OBJ_FACE.finditer(raw):
        triangles += max(len(face.group(1).split()) - 2, 0)
        if triangles > limit:
            break
    return len(_OBJ_VERTEX.findall(raw)), triangles


def _stl_binary(raw: bytes) -> bool:
    """As trimesh decides: binary when the size matches the count at byte 80, or the file
    does not start with 'solid'."""
    if len(raw) < 84:
        return False
    (triangles,) = struct.unpack_from("<I", raw, 80)
    return len(raw) == 84 + 50 * triangles or not raw.lstrip()[:5].lower() == b"solid"


def _stl_counts(path: Path, raw: bytes) -> tuple[int, int]:
    """(vertices, triangles) of an STL file: binary STL declares its triangle count at byte
    80; trimesh makes a triangle of every three 'vertex' words of an ASCII one."""
    if _stl_binary(raw):
        (triangles,) = struct.unpack_from("<I", raw, 80)
        if len(raw) < 84 + 50 * triangles:
            raise DataError(f"binary STL declares {triangles:,} triangles ({84 + 50 * triangles:,} bytes) but "
                            f"the file has {len(raw):,} bytes", str(path))
        return 3 * triangles, triangles
    faces = raw.lower().count(b"vertex") // 3
    return 3 * faces, faces


def _natural(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _gltf_sizes(path: Path, document: dict, limit: int) -> None:
    """What trimesh allocates for a glTF document before any mesh exists: a copy of every
    buffer view, and an array of every accessor (zeros for one without a buffer view)."""
    decoded = 0
    for i, accessor in enumerate(document.get("accessors", [])):
        count, size, values = (accessor.get("count"), _COMPONENT_BYTES.get(accessor.get("componentType")),
                               _TYPE_VALUES.get(accessor.get("type")))
        if not _natural(count) or size is None or values is None:
            raise DataError(f"glTF accessor {i}: count {count!r}, componentType {accessor.get('componentType')!r}, "
                            f"type {accessor.get('type')!r}; expected a count >= 0, one of {sorted(_COMPONENT_BYTES)} "
                            f"and one of {list(_TYPE_VALUES)}", str(path))
        decoded += count * size * values
    check_decoded(path, "the glTF accessors", decoded, limit)
    lengths = [b.get("byteLength") for b in document.get("buffers", [])]
    views = [v.get("byteLength") for v in document.get("bufferViews", [])]
    if not all(_natural(n) for n in lengths + views):
        raise DataError("glTF buffer and bufferView byteLength values must be integers >= 0", str(path))
    check_file_size(path, sum(lengths), limit)
    if sum(views) > sum(lengths):
        raise DataError(f"glTF bufferViews span {sum(views):,} bytes, more than the {sum(lengths):,} bytes of the "
                        "buffers (views overlap); expected views that share out the buffers", str(path))


def _gltf_document(path: Path, raw: bytes, binary: bool) -> dict:
    try:
        if binary:
            magic, _, _, chunk_length, chunk_type = struct.unpack_from("<4sIIII", raw, 0)
            if magic != b"glTF" or chunk_type != 0x4E4F534A:  # "JSON"
                raise ValueError("no glTF header and JSON chunk")
            document = json.loads(raw[20:20 + chunk_length])
        else:
            document = json.loads(raw)
        if not isinstance(document, dict):
            raise ValueError("the JSON is not an object")
    except (ValueError, struct.error, RecursionError) as exc:
        raise DataError(f"not a readable glTF document ({type(exc).__name__}: {exc})", str(path)) from None
    return document


def _gltf_counts(path: Path, raw: bytes, binary: bool, limit: int) -> tuple[int, int]:
    """(vertices, triangles) a glTF scene declares once every mesh instance is placed."""
    document = _gltf_document(path, raw, binary)
    try:
        accessors = document.get("accessors", [])
        per_mesh = []
        for mesh in document.get("meshes", []):
            vertices = faces = 0
            for primitive in mesh.get("primitives", []):
                position = primitive.get("attributes", {}).get("POSITION")
                count = int(accessors[position]["count"]) if position is not None else 0
                vertices += count
                index = primitive.get("indices")
                faces += (int(accessors[index]["count"]) if index is not None else count) // 3
            per_mesh.append((vertices, faces))
        placed = [per_mesh[node["mesh"]] for node in document.get("nodes", []) if "mesh" in node]
    except (ValueError, KeyError, IndexError, TypeError, AttributeError) as exc:
        raise DataError(f"not a readable glTF document ({type(exc).__name__}: {exc})", str(path)) from None
    vertices, triangles = sum(v for v, _ in placed), sum(f for _, f in placed)
    check_declared(path, "vertices", vertices, limit)
    check_declared(path, _TRIANGLES, triangles, limit)
    _gltf_sizes(path, document, limit)
    return vertices, triangles


def _declared(path: Path, suffix: str, raw: bytes, limit: int) -> tuple[int, int]:
    """(vertices, triangles) of the file, from its header or counted in its text."""
    if suffix == ".off":
        return _off_counts(path, raw, limit)
    if suffix == ".obj":
        return _obj_counts(raw, limit)
    if suffix == ".stl":
        return _stl_counts(path, raw)
    return _gltf_counts(path, raw, suffix == ".glb", limit)


_ASCII_ONLY = bytes(range(128)) + b"?" * 128  # bytes.translate table: every non-ASCII byte -> "?"


def _as_utf8(raw: bytes, keep_length: bool) -> bytes:
    """Text trimesh decodes as UTF-8 without guessing (its own fallback guesses an encoding
    from the first 1,000 bytes, and a multi-byte guess can swallow the line break after a
    name). A UTF-8 byte-order mark is dropped and UTF-16 with its mark is converted, unless
    ``keep_length`` (ASCII STL: trimesh tells binary from text by the size); any other file
    that is not UTF-8 has each non-ASCII byte read as '?': those bytes are in names and
    comments, every number and keyword is ASCII."""
    if not keep_length:
        if raw.startswith(codecs.BOM_UTF8):
            raw = raw[len(codecs.BOM_UTF8):]
        elif raw.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
            try:
                return raw.decode("utf-16").encode("utf-8")
            except UnicodeDecodeError:
                pass
    try:
        raw.decode("utf-8")
        return raw
    except UnicodeDecodeError:
        return raw.translate(_ASCII_ONLY)


def _geometry_bytes(suffix: str, raw: bytes) -> bytes:
    """The bytes trimesh is given: text formats as UTF-8; an OBJ file with its line
    continuations joined (as trimesh joins them, so its faces are counted as trimesh sees
    them) and its ``usemtl`` directives dropped."""
    if suffix == ".obj":
        raw = _as_utf8(raw, keep_length=False).replace(b"\r\n", b"\n").replace(b"\\\n", b"")
        return raw.replace(b"usemtl ", b"# ")  # trimesh splits at "usemtl " anywhere in the text
    if suffix == ".off":
        return _as_utf8(raw, keep_length=False)
    if suffix == ".stl" and not _stl_binary(raw):
        return _as_utf8(raw, keep_length=True)
    return raw


def _flatten(path: Path, loaded, limit: int):
    """One Trimesh of a scene: every instance placed with its transform, counted first."""
    import trimesh

    if isinstance(loaded, trimesh.Trimesh):
        return loaded
    if not isinstance(loaded, trimesh.Scene):
        raise DataError(f"holds a {type(loaded).__name__}, not a surface mesh; expected triangles", str(path))
    instances = [loaded.geometry.get(name) for _, name in
                 (loaded.graph[node] for node in loaded.graph.nodes_geometry)]
    meshes = [g for g in instances if isinstance(g, trimesh.Trimesh)]
    if not meshes:
        raise DataError("the scene holds no triangle mesh (only points, paths or nothing)", str(path))
    check_declared(path, "scene vertices (all instances)", sum(len(m.vertices) for m in meshes), limit)
    check_declared(path, "scene faces (all instances)", sum(len(m.faces) for m in meshes), limit)
    flat = loaded.to_geometry()
    if not isinstance(flat, trimesh.Trimesh):
        raise DataError("the scene does not flatten to one triangle mesh", str(path))
    return flat


def _check_faces(path: Path | str, faces: np.ndarray, num_vertices: int) -> None:
    if len(faces) and (faces.min() < 0 or faces.max() >= num_vertices):
        bad = int(np.argmax((faces < 0).any(axis=1) | (faces >= num_vertices).any(axis=1)))
        raise DataError(f"triangle {bad} refers to vertex {faces[bad].tolist()} but there are only "
                        f"{num_vertices} vertices", str(path))


def check_mesh(path: Path | str, mesh):
    check_points(path, mesh.vertices)
    _check_faces(path, np.asarray(mesh.faces), len(mesh.vertices))
    return mesh


def polygon_triangles(faces) -> int:
    """Triangles a fan triangulation of these polygons makes (an (F, k) array or a list of index lists)."""
    if isinstance(faces, np.ndarray) and faces.ndim == 2:
        return len(faces) * max(faces.shape[1] - 2, 0)
    return sum(max(len(f) - 2, 0) for f in faces)


def mesh_from_faces(path: Path | str, vertices: np.ndarray, faces, limit: int, vertex_normals=None,
                    vertex_colors=None):
    """A Trimesh of vertices and polygons (lists of any length; fan-triangulated by trimesh once
    the triangles they make are counted against the limit)."""
    import trimesh

    vertices = check_points(path, vertices)
    check_declared(path, "triangles (polygons fan-triangulated)", polygon_triangles(faces), limit)
    if not (isinstance(faces, np.ndarray) and faces.ndim == 2):
        faces = [np.asarray(f, dtype=np.int64) for f in faces]
    triangles = trimesh.geometry.triangulate_quads(faces) if len(faces) else np.zeros((0, 3), np.int64)
    triangles = np.asarray(triangles, dtype=np.int64).reshape(-1, 3)
    _check_faces(path, triangles, len(vertices))
    return trimesh.Trimesh(vertices, triangles, process=False, vertex_normals=vertex_normals,
                           vertex_colors=vertex_colors)


def _folder_resolver(path: Path, limit: int):
    """A trimesh resolver for a glTF file's external buffers: regular files inside the file's
    folder only, all of them together (with the glTF file) within the size limit of one file.
    An absolute path, a '..' step, a symbolic link out of the folder, a FIFO or device (which
    would block trimesh forever) is a DataError naming file and URI."""
    from trimesh.resolvers import Resolver

    folder = path.parent.resolve()
    read = [path.stat().st_size]  # bytes read so far

    class FolderResolver(Resolver):
        def __init__(self):
            pass

        def get(self, uri: str) -> bytes:
            name = unquote(str(uri)).strip()
            parts = PurePosixPath(name.replace("\\", "/")).parts
            if not name or name.startswith(("/", "\\")) or ":" in name or ".." in parts:
                raise DataError(f"glTF URI {uri!r}: expected a file name relative to the file's folder (no absolute "
                                "path, drive, scheme or '..')", str(path))
            target = (folder / name).resolve()
            if not target.is_relative_to(folder):
                raise DataError(f"glTF URI {uri!r} leads out of the file's folder {folder}", str(path))
            try:
                fd = os.open(target, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
            except OSError as exc:
                raise DataError(f"glTF URI {uri!r}: cannot open {target} ({exc.strerror})", str(path)) from None
            with os.fdopen(fd, "rb") as stream:
                info = os.fstat(fd)  # checked on the opened file: no swap in between
                if not stat.S_ISREG(info.st_mode):
                    raise DataError(f"glTF URI {uri!r}: {target} is not a regular file", str(path))
                if sum(read) + info.st_size > max_file_bytes(limit):
                    raise DataError(f"glTF URI {uri!r}: {target} ({info.st_size:,} bytes) takes the file and its "
                                    f"buffers above the {max_file_bytes(limit):,}-byte limit of one file (raise "
                                    "data.max_points_per_file if the file is genuine)", str(path))
                data = stream.read(info.st_size + 1)
                read.append(len(data))
                return data

        def write(self, name, data):
            raise DataError("meshes are read, never written", str(path))

        def namespaced(self, namespace):
            raise DataError(f"glTF asset namespace {namespace!r} is not supported", str(path))

        def keys(self):
            return iter(())

    return FolderResolver()


def read_mesh_file(path: Path, limit: int):
    """The flattened ``trimesh.Trimesh`` of an OFF / OBJ / STL / GLB / glTF file."""
    import trimesh

    suffix = path.suffix.lower()
    raw = _geometry_bytes(suffix, read_bounded(path, limit))
    vertices, triangles = _declared(path, suffix, raw, limit)
    check_declared(path, "vertices", vertices, limit)
    check_declared(path, _TRIANGLES, triangles, limit)
    # external glTF buffers resolve next to the file (regular files only); nothing else resolves
    resolver = _folder_resolver(path, limit) if suffix == ".gltf" else None
    try:
        loaded = trimesh.load_scene(io.BytesIO(raw), file_type=MESH_TYPES[suffix], resolver=resolver, process=False,
                                    skip_materials=True)
    except DataError:
        raise
    except Exception as exc:  # trimesh raises many types for bad files; ours names the file
        raise DataError(f"cannot read this {suffix} mesh (trimesh: {type(exc).__name__}: {exc}); expected a valid "
                        f"{suffix[1:].upper()} file", str(path)) from None
    mesh = _flatten(path, loaded, limit)
    return check_mesh(path, mesh)
