"""File formats: one module per family, one entry point.

``read_file(path, max_points)`` returns a :class:`PointFile` (points with the normals,
colours and other per-point values the file holds) or a ``trimesh.Trimesh`` (a mesh; a
scene flattened with its transforms). The file's size, and every size its header declares,
is checked against the limits of ``limits`` (all scaled by ``max_points``, the setting
``data.max_points_per_file``) before anything is read, decoded or allocated, and every
failure is a :class:`~any2point.errors.DataError` naming the file and what was expected.

=========================  ==========================================  ======================
extensions                 read by                                     module
=========================  ==========================================  ======================
.off .obj .stl .glb .gltf  trimesh                                     ``meshes``
.ply                       plyfile (meshes handed to trimesh)          ``ply``
.pcd                       pypcd4                                      ``pcd``
.las .laz                  laspy (extra ``any2point[lidar]``)          ``lidar``
.npy .npz .h5 .hdf5        numpy / h5py                                ``arrays``
.txt .xyz .pts .csv        our own small parser                        ``text``
=========================  ==========================================  ======================
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Union

from ...errors import DataError
from .arrays import read_h5, read_npy, read_npz
from .lidar import read_las
from .limits import check_file_size
from .meshes import MESH_TYPES, read_mesh_file
from .pcd import read_pcd
from .ply import read_ply
from .records import DEFAULT_MAX_POINTS_PER_FILE, PointFile
from .text import parse_text_cloud, read_text

__all__ = ["read_file", "PointFile", "SUPPORTED_EXTENSIONS", "DEFAULT_MAX_POINTS_PER_FILE", "parse_text_cloud"]

Loaded = Union[PointFile, "trimesh.Trimesh"]  # noqa: F821

_READERS: dict[str, Callable[[Path, int], Loaded]] = {
    **{ext: read_mesh_file for ext in MESH_TYPES},
    ".ply": read_ply, ".pcd": read_pcd, ".las": read_las, ".laz": read_las,
    ".npy": read_npy, ".npz": read_npz, ".h5": read_h5, ".hdf5": read_h5,
    ".txt": read_text, ".xyz": read_text, ".pts": read_text, ".csv": read_text,
}

SUPPORTED_EXTENSIONS: tuple[str, ...] = tuple(_READERS)


def read_file(path: str | Path, max_points: int = DEFAULT_MAX_POINTS_PER_FILE) -> Loaded:
    """The points (``PointFile``) or mesh (``trimesh.Trimesh``) of any supported file."""
    path = Path(path)
    reader = _READERS.get(path.suffix.lower())
    if reader is None:
        raise DataError(f"unsupported file type {path.suffix or '(no extension)'!r}; supported: "
                        f"{', '.join(SUPPORTED_EXTENSIONS)}", str(path))
    if not path.is_file():
        raise DataError("file does not exist or is not a regular file", str(path))
    check_file_size(path, path.stat().st_size, int(max_points))
    try:
        return reader(path, int(max_points))
    except DataError:
        raise
    except Exception as exc:  # a library's own error on a bad file (h5py raises RuntimeError, ...)
        raise DataError(f"cannot read this {path.suffix.lower()} file: {type(exc).__name__}: {exc}",
                        str(path)) from None
