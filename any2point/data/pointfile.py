"""One file -> one point cloud: the path shared by ``read_points`` (prediction) and the
``folder`` dataset, so a file is seen the same way at training and at prediction time."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import DataError
from .fps_cache import fps_indices
from .readers import read_geometry
from .sampling import normalize_unit_sphere, pad_or_trim, sample_surface

__all__ = ["file_cloud", "read_points", "DEFAULT_MESH_POINTS"]

# Meshes are sampled this densely before FPS picks the evenly spread subset.
DEFAULT_MESH_POINTS = 8192


def file_cloud(path: str | Path, mesh_points: int = DEFAULT_MESH_POINTS, seed: int = 0) -> np.ndarray:
    """Raw points (n, 3) float32 of any supported file; a mesh is area-weighted sampled
    to ``mesh_points`` points with ``seed``."""
    geometry = read_geometry(path)
    if geometry.is_mesh:
        rng = np.random.default_rng(seed)
        return sample_surface(geometry.vertices, geometry.faces, mesh_points, rng, str(path))
    if np.ptp(geometry.vertices, axis=0).max() == 0:
        raise DataError(f"all {len(geometry.vertices)} points coincide: not a shape", str(path))
    return geometry.vertices.astype(np.float32)


def read_points(path: str | Path, num_points: int | None = None, seed: int = 0,
                mesh_points: int = DEFAULT_MESH_POINTS) -> np.ndarray:
    """A cloud (n, 3) float32, centred and scaled to the unit sphere, from any supported file.

    Meshes are surface-sampled (``mesh_points``, seeded). With ``num_points``, a larger cloud
    is reduced by FPS (the test protocol) and a smaller one repeated cyclically."""
    cloud = file_cloud(path, mesh_points=max(mesh_points, num_points or 0), seed=seed)
    if num_points is not None:
        if len(cloud) > num_points:
            cloud = cloud[fps_indices(cloud[None], num_points)[0].astype(np.int64)]
        else:
            cloud = pad_or_trim(cloud, num_points)
    return normalize_unit_sphere(cloud, str(path))
