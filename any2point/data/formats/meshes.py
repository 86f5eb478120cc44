"""Meshes through trimesh: OFF, OBJ, STL, GLB / glTF (and PLY faces handed over by ``ply``).

trimesh parses; what stays ours is the size check before it does (counts declared in the
file's header or JSON, counted lines of text formats) and the checks after it: a scene's
instances counted before it is flattened with its transforms, an OFF file holding fewer
faces than its header declares, faces pointing past the vertices.
"""
from __future__ import annotations

import json
import os
import re
import stat
import struct
from pathlib import Path, PurePosixPath
from urllib.parse import unquote

import numpy as np

from ...errors import DataError
from .records import check_declared, check_points

__all__ = ["read_mesh_file", "mesh_from_faces", "MESH_TYPES"]

# extension -> trimesh file_type
MESH_TYPES = {".off": "off", ".obj": "obj", ".stl": "stl", ".glb": "glb", ".gltf": "gltf"}

_OFF_COUNTS = re.compile(rb"^\s*(?:ST)?C?N?OFF[ \t]*(\d+)?\s+(\d+)\s+(\d+)", re.IGNORECASE)


def _off_counts(path: Path, raw: bytes, limit: int) -> tuple[int, int]:
    """(vertices, faces) declared by an OFF header, glued ("OFF490 518 0") or not; a file
    with fewer data lines than declared is truncated (trimesh would read the faces it finds)."""
    text = re.sub(rb"#[^\n]*", b"", raw[:4096])  # comments before the counts
    match = _OFF_COUNTS.match(text)
    if match is None:
        raise DataError("expected an OFF header: 'OFF' then 'num_vertices num_faces num_edges'", str(path))
    first, second, third = (int(g) if g is not None else None for g in match.groups())
    vertices, faces = (first, second) if first is not None else (second, third)
    check_declared(path, "vertices", vertices, limit)
    check_declared(path, "faces", faces, limit)
    if b"#" in raw or re.search(rb"\n[ \t\r]*\n", raw.strip()):  # comments or blank lines: count data lines
        rows = sum(1 for _ in re.finditer(rb"(?m)^[ \t\r]*[^\s#]", raw))
    else:  # one line per row: count newlines without splitting a large file into objects
        rows = raw.strip().count(b"\n") + 1
    rows -= 1 if first is not None else 2
    if rows < vertices + faces:
        raise DataError(f"file is truncated: the header declares {vertices} vertices and {faces} faces, "
                        f"{rows} data lines follow", str(path))
    return vertices, faces


def _obj_counts(raw: bytes) -> tuple[int, int]:
    return len(re.findall(rb"^[ \t]*v[ \t]", raw, re.MULTILINE)), len(re.findall(rb"^[ \t]*f[ \t]", raw, re.MULTILINE))


def _stl_counts(path: Path, raw: bytes) -> tuple[int, int]:
    """(vertices, faces) of an STL file: binary STL declares its triangle count at byte 80."""
    if len(raw) >= 84:
        (triangles,) = struct.unpack_from("<I", raw, 80)
        if len(raw) == 84 + 50 * triangles or not raw.lstrip()[:5].lower() == b"solid":  # binary
            if len(raw) < 84 + 50 * triangles:
                raise DataError(f"binary STL declares {triangles:,} triangles ({84 + 50 * triangles:,} bytes) but "
                                f"the file has {len(raw):,} bytes", str(path))
            return 3 * triangles, triangles
    faces = raw.count(b"endfacet")
    return 3 * faces, faces


def _gltf_counts(path: Path, raw: bytes, binary: bool) -> tuple[int, int]:
    """(vertices, triangles) a glTF scene declares once every mesh instance is placed."""
    try:
        if binary:
            magic, _, _, chunk_length, chunk_type = struct.unpack_from("<4sIIII", raw, 0)
            if magic != b"glTF" or chunk_type != 0x4E4F534A:  # "JSON"
                raise ValueError("no glTF header and JSON chunk")
            document = json.loads(raw[20:20 + chunk_length])
        else:
            document = json.loads(raw)
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
    except (ValueError, KeyError, IndexError, TypeError, AttributeError, struct.error) as exc:
        raise DataError(f"not a readable glTF document ({type(exc).__name__}: {exc})", str(path)) from None
    return sum(v for v, _ in placed), sum(f for _, f in placed)


def _declared(path: Path, suffix: str, raw: bytes, limit: int) -> tuple[int, int]:
    if suffix == ".off":
        return _off_counts(path, raw, limit)
    if suffix == ".obj":
        return _obj_counts(raw)
    if suffix == ".stl":
        return _stl_counts(path, raw)
    return _gltf_counts(path, raw, binary=suffix == ".glb")


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


def mesh_from_faces(path: Path | str, vertices: np.ndarray, faces, vertex_normals=None, vertex_colors=None):
    """A Trimesh of vertices and polygons (lists of any length; fan-triangulated by trimesh)."""
    import trimesh

    vertices = check_points(path, vertices)
    triangles = trimesh.geometry.triangulate_quads(faces) if len(faces) else np.zeros((0, 3), np.int64)
    triangles = np.asarray(triangles, dtype=np.int64).reshape(-1, 3)
    _check_faces(path, triangles, len(vertices))
    return trimesh.Trimesh(vertices, triangles, process=False, vertex_normals=vertex_normals,
                           vertex_colors=vertex_colors)


def _folder_resolver(path: Path):
    """A trimesh resolver for a glTF file's external buffers and images: regular files inside
    the file's folder only. An absolute path, a '..' step, a symbolic link out of the folder,
    a FIFO or device (which would block trimesh forever) is a DataError naming file and URI."""
    from trimesh.resolvers import Resolver

    folder = path.parent.resolve()

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
                if not stat.S_ISREG(os.fstat(fd).st_mode):  # checked on the opened file: no swap in between
                    raise DataError(f"glTF URI {uri!r}: {target} is not a regular file", str(path))
                return stream.read()

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
    raw = path.read_bytes()
    vertices, faces = _declared(path, suffix, raw, limit)
    check_declared(path, "vertices", vertices, limit)
    check_declared(path, "faces", faces, limit)
    try:
        import io

        # external glTF buffers resolve next to the file (regular files only); nothing else resolves
        resolver = _folder_resolver(path) if suffix == ".gltf" else None
        loaded = trimesh.load_scene(io.BytesIO(raw), file_type=MESH_TYPES[suffix], resolver=resolver, process=False)
    except DataError:
        raise
    except Exception as exc:  # trimesh raises many types for bad files; ours names the file
        raise DataError(f"cannot read this {suffix} mesh (trimesh: {type(exc).__name__}: {exc}); expected a valid "
                        f"{suffix[1:].upper()} file", str(path)) from None
    mesh = _flatten(path, loaded, limit)
    return check_mesh(path, mesh)
