"""Mesh surface sampling and unit-sphere normalisation (vectorised numpy, seeded)."""
from __future__ import annotations

import numpy as np

from ..errors import DataError

__all__ = ["triangle_areas", "sample_surface", "check_coordinate_range", "normalize_unit_sphere", "pad_or_trim"]


_FLOAT32_MAX = float(np.finfo(np.float32).max)


def check_coordinate_range(vertices: np.ndarray, source: str | None = None) -> None:
    """Coordinates within float32's range, which every cloud is converted to: beyond it (1e300)
    areas overflow and the mesh would look flat ("zero area") rather than out of range."""
    magnitude = np.abs(np.asarray(vertices, dtype=np.float64)).max(axis=1, initial=0.0)
    if len(magnitude) and magnitude.max() > _FLOAT32_MAX:
        bad = int(np.argmax(magnitude > _FLOAT32_MAX))
        raise DataError(f"vertex {bad} has out of range coordinates ({magnitude[bad]:.3g}); expected |coordinate| "
                        f"<= {_FLOAT32_MAX:.3g} (float32)", source)


def triangle_areas(vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    a, b, c = (vertices[faces[:, i]] for i in range(3))
    return 0.5 * np.linalg.norm(np.cross(b - a, c - a), axis=1)


def sample_surface(vertices: np.ndarray, faces: np.ndarray, num_points: int, rng: np.random.Generator,
                   source: str | None = None) -> np.ndarray:
    """``num_points`` points uniform on the surface: a triangle is picked with probability
    proportional to its area, then a uniform point inside it (reflected barycentrics)."""
    if faces is None or len(faces) == 0:
        raise DataError("empty mesh: no faces to sample", source)
    vertices = np.asarray(vertices, dtype=np.float64)
    check_coordinate_range(vertices, source)
    areas = triangle_areas(vertices, faces)
    total = float(areas.sum())
    extent = float(np.ptp(vertices, axis=0).max()) if len(vertices) else 0.0
    if not np.isfinite(total) or total <= 1e-12 * max(extent, 1e-30) ** 2:
        raise DataError(f"all {len(faces)} faces have zero area: nothing to sample", source)
    cumulative = np.cumsum(areas)
    chosen = np.searchsorted(cumulative, rng.random(num_points) * cumulative[-1], side="right")
    chosen = np.minimum(chosen, len(faces) - 1)
    u, v = rng.random((2, num_points))
    flip = u + v > 1.0
    u[flip], v[flip] = 1.0 - u[flip], 1.0 - v[flip]
    a, b, c = (vertices[faces[chosen, i]] for i in range(3))
    return (a + u[:, None] * (b - a) + v[:, None] * (c - a)).astype(np.float32)


def normalize_unit_sphere(points: np.ndarray, source: str | None = None) -> np.ndarray:
    """Centred on the centroid and scaled so the farthest point has norm 1 (float32).

    Works on one cloud (N, 3) or a batch (B, N, 3)."""
    points = np.asarray(points)
    centred = points - points.mean(axis=-2, keepdims=True, dtype=np.float64)
    radius = np.sqrt(np.square(centred).sum(-1).max(axis=-1, keepdims=True))[..., None]
    if (radius <= 0).any():
        raise DataError("all points coincide: cannot scale to the unit sphere", source)
    return (centred / radius).astype(np.float32)


def pad_or_trim(points: np.ndarray, num_points: int) -> np.ndarray:
    """The first ``num_points`` rows; a shorter cloud is repeated cyclically (deterministic)."""
    if len(points) >= num_points:
        return points[:num_points]
    return points[np.arange(num_points) % len(points)]
