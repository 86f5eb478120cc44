"""One file -> one point cloud: the path shared by ``read_points`` (prediction) and the
``folder`` dataset, so a file is seen the same way at training and at prediction time.

Meshes are sampled on their surface by trimesh (area-weighted, seeded), keeping the face
normal and colour of every sample."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import DataError
from .formats import DEFAULT_MAX_POINTS_PER_FILE, PointFile, read_file
from .fps_cache import fps_indices
from .sampling import check_coordinate_range, normalize_unit_sphere, pad_or_trim

__all__ = ["file_points", "file_cloud", "read_points", "sample_mesh", "DEFAULT_MESH_POINTS"]

# Meshes are sampled this densely before FPS picks the evenly spread subset.
DEFAULT_MESH_POINTS = 8192


def sample_mesh(mesh, count: int, seed: int, source: str | None = None) -> PointFile:
    """``count`` points uniform on the surface of a ``trimesh.Trimesh`` (the same points for the same seed)."""
    import trimesh

    if len(mesh.faces) == 0:
        raise DataError("empty mesh: no faces to sample", source)
    check_coordinate_range(mesh.vertices, source)
    extent = float(np.ptp(mesh.vertices, axis=0).max())
    if not np.isfinite(mesh.area) or mesh.area <= 1e-12 * max(extent, 1e-30) ** 2:
        raise DataError(f"all {len(mesh.faces)} faces have zero area: nothing to sample", source)
    colors = None
    if mesh.visual.kind in ("vertex", "face"):
        points, faces, colors = trimesh.sample.sample_surface(mesh, count, sample_color=True, seed=seed)
    else:
        points, faces = trimesh.sample.sample_surface(mesh, count, seed=seed)
    return PointFile(np.asarray(points, dtype=np.float64), np.asarray(mesh.face_normals[faces], dtype=np.float32),
                     None if colors is None else np.asarray(colors, dtype=np.uint8))


def file_points(path: str | Path, mesh_points: int = DEFAULT_MESH_POINTS, seed: int = 0,
                max_points: int = DEFAULT_MAX_POINTS_PER_FILE) -> PointFile:
    """The points of any supported file with their normals / colours; a mesh is sampled to
    ``mesh_points`` points with ``seed``."""
    loaded = read_file(path, max_points)
    if not isinstance(loaded, PointFile):
        return sample_mesh(loaded, mesh_points, seed, str(path))
    return loaded


def file_cloud(path: str | Path, mesh_points: int = DEFAULT_MESH_POINTS, seed: int = 0,
               max_points: int = DEFAULT_MAX_POINTS_PER_FILE) -> np.ndarray:
    """Raw points (n, 3) float32 of any supported file (see ``file_points``)."""
    points = file_points(path, mesh_points, seed, max_points).points
    if np.ptp(points, axis=0).max() == 0:
        raise DataError(f"all {len(points)} points coincide: not a shape", str(path))
    with np.errstate(over="ignore"):  # reported below
        cloud = points.astype(np.float32)
    bad = ~np.isfinite(cloud).all(axis=1)
    if bad.any():
        raise DataError(f"point {int(np.argmax(bad))} overflows float32 (coordinates beyond ~3.4e38)", str(path))
    return cloud


def read_points(path: str | Path, num_points: int | None = None, seed: int = 0,
                mesh_points: int = DEFAULT_MESH_POINTS, max_points: int = DEFAULT_MAX_POINTS_PER_FILE) -> np.ndarray:
    """A cloud (n, 3) float32, centred and scaled to the unit sphere, from any supported file.

    Meshes are surface-sampled (``mesh_points``, seeded). With ``num_points``, a larger cloud
    is reduced by FPS (the test protocol) and a smaller one repeated cyclically."""
    cloud = file_cloud(path, mesh_points=max(mesh_points, num_points or 0), seed=seed, max_points=max_points)
    if num_points is not None:
        if len(cloud) > num_points:
            cloud = cloud[fps_indices(cloud[None], num_points)[0].astype(np.int64)]
        else:
            cloud = pad_or_trim(cloud, num_points)
    return normalize_unit_sphere(cloud, str(path))
