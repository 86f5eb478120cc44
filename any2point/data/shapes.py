"""Procedural shapes: a small labelled dataset generated from a seed, with no files.

Thirteen classes, several of them deliberate near-duplicates (cylinder / tube / capsule,
cone / frustum / hemisphere, pyramid / tetrahedron, sphere / ellipsoid / octahedron), each
with random proportions, a random anisotropic scale, a uniformly random 3-D rotation and
Gaussian noise, so that simple global statistics do not separate them. Surfaces are
sampled (close to) uniformly by area, a whole batch of clouds per class in a few numpy
operations: thousands of clouds per second.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from .. import checks
from ..errors import ConfigError
from .base import LoadedSplit
from .options import DataOptions
from .registry import register_data_format
from .sampling import normalize_unit_sphere

__all__ = ["SHAPES", "generate_shapes", "load_shapes", "ShapesOptions"]

Sampler = Callable[[np.random.Generator, int, int], np.ndarray]


# ----------------------------------------------------------------------------- building blocks

def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v, axis=-1, keepdims=True).clip(1e-12)


def _parts(rng: np.random.Generator, weights: np.ndarray, p: int) -> np.ndarray:
    """Per point, the index of the part it lies on, drawn with per-cloud weights (B, K).

    One ``searchsorted`` for the whole batch: row r's cumulative weights are shifted by 2r."""
    b, k = weights.shape
    cum = np.cumsum(weights / weights.sum(1, keepdims=True), axis=1)
    offset = 2.0 * np.arange(b)[:, None]
    found = np.searchsorted((cum + offset).ravel(), (rng.random((b, p)) + offset).ravel(), side="right")
    return np.minimum(found.reshape(b, p) - k * np.arange(b)[:, None], k - 1)


def _disk(rng: np.random.Generator, radius: np.ndarray, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """x, y uniform on disks of per-cloud ``radius`` (B, 1)."""
    rho = radius * np.sqrt(rng.random(shape))
    angle = rng.uniform(0, 2 * np.pi, shape)
    return rho * np.cos(angle), rho * np.sin(angle)


def _ring(rng: np.random.Generator, radius: np.ndarray, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    angle = rng.uniform(0, 2 * np.pi, shape)
    return radius * np.cos(angle), radius * np.sin(angle)


def _cap(rng: np.random.Generator, b: int, p: int) -> np.ndarray:
    """Points uniform on the upper unit hemisphere (z >= 0)."""
    d = _unit(rng.normal(size=(b, p, 3)))
    d[..., 2] = np.abs(d[..., 2])
    return d


def _triangles(rng: np.random.Generator, corners: np.ndarray, p: int) -> np.ndarray:
    """Area-uniform points on per-cloud triangle sets ``corners`` (B, F, 3 corners, 3)."""
    a, b, c = corners[:, :, 0], corners[:, :, 1], corners[:, :, 2]
    areas = 0.5 * np.linalg.norm(np.cross(b - a, c - a), axis=-1)
    face = _parts(rng, areas, p)[..., None]
    a, b, c = (np.take_along_axis(t, face, axis=1) for t in (a, b, c))
    u, v = rng.random((2, a.shape[0], p, 1))
    flip = u + v > 1
    u, v = np.where(flip, 1 - u, u), np.where(flip, 1 - v, v)
    return a + u * (b - a) + v * (c - a)


def _polyhedron(vertices: np.ndarray, faces: list[tuple[int, int, int]], jitter: float) -> Sampler:
    verts, tris = np.asarray(vertices, dtype=np.float64), np.asarray(faces)

    def sample(rng: np.random.Generator, b: int, p: int) -> np.ndarray:
        v = verts[None] + rng.uniform(-jitter, jitter, (b, *verts.shape))
        return _triangles(rng, v[:, tris], p)

    return sample


# ----------------------------------------------------------------------------- the classes

def _sphere(rng, b, p):
    return _unit(rng.normal(size=(b, p, 3)))


def _ellipsoid(rng, b, p):
    axes = np.stack([np.ones(b), rng.uniform(0.5, 0.7, b), rng.uniform(0.25, 0.45, b)], axis=1)
    return _unit(rng.normal(size=(b, p, 3))) * axes[:, None, :]


def _cylinder_like(rng, b, p, caps: str):
    r, h = rng.uniform(0.35, 0.65, (b, 1)), rng.uniform(0.7, 1.2, (b, 1))  # radius, half height
    side = 4 * np.pi * r * h
    end = 2 * np.pi * r**2 if caps == "flat" else 4 * np.pi * r**2 if caps == "round" else 0 * r
    part = _parts(rng, np.concatenate([side, end], axis=1), p)
    x, y = _ring(rng, r, (b, p))
    z = rng.uniform(-1, 1, (b, p)) * h
    pts = np.stack([x, y, z], axis=-1)
    on_end = part == 1
    top = rng.random((b, p)) < 0.5
    if caps == "flat":
        dx, dy = _disk(rng, r, (b, p))
        pts[on_end] = np.stack([dx, dy, np.where(top, h, -h)], axis=-1)[on_end]
    elif caps == "round":
        dome = _cap(rng, b, p) * r[..., None]
        dome[..., 2] = np.where(top, h + dome[..., 2], -h - dome[..., 2])
        pts[on_end] = dome[on_end]
    return pts


def _cylinder(rng, b, p):
    return _cylinder_like(rng, b, p, "flat")


def _tube(rng, b, p):
    return _cylinder_like(rng, b, p, "none")


def _capsule(rng, b, p):
    return _cylinder_like(rng, b, p, "round")


def _frustum_like(rng, b, p, top_ratio: tuple[float, float]):
    r1, height = rng.uniform(0.6, 1.0, (b, 1)), rng.uniform(1.2, 2.0, (b, 1))
    r2 = r1 * rng.uniform(*top_ratio, (b, 1))
    slant = np.sqrt(height**2 + (r1 - r2) ** 2)
    weights = np.concatenate([np.pi * (r1 + r2) * slant, np.pi * r1**2, np.pi * r2**2], axis=1)
    part = _parts(rng, weights, p)
    # along the side, t = 0 at the base, 1 at the top; density proportional to the radius
    u = rng.random((b, p))
    t = np.where(rng.random((b, p)) < r1 / (r1 + r2), 1 - np.sqrt(u), np.sqrt(u))
    rho = r1 + (r2 - r1) * t
    x, y = _ring(rng, rho, (b, p))
    pts = np.stack([x, y, height * t], axis=-1)
    for index, radius, z in ((1, r1, 0 * height), (2, r2, height)):
        dx, dy = _disk(rng, radius, (b, p))
        disk = np.stack([dx, dy, np.broadcast_to(z, (b, p))], axis=-1)
        pts[part == index] = disk[part == index]
    return pts - np.concatenate([0 * r1, 0 * r1, height / 2], axis=1)[:, None, :]


def _cone(rng, b, p):
    return _frustum_like(rng, b, p, (0.0, 0.0))


def _frustum(rng, b, p):
    return _frustum_like(rng, b, p, (0.3, 0.55))


def _hemisphere(rng, b, p):
    part = _parts(rng, np.tile([2.0, 1.0], (b, 1)), p)  # dome 2 pi r^2, disk pi r^2
    pts = _cap(rng, b, p)
    dx, dy = _disk(rng, np.ones((b, 1)), (b, p))
    disk = np.stack([dx, dy, np.zeros((b, p))], axis=-1)
    pts[part == 1] = disk[part == 1]
    return pts


def _torus(rng, b, p):
    minor = rng.uniform(0.2, 0.45, (b, 1))
    # the tube angle phi has density proportional to 1 + minor cos(phi): rejection from 2p candidates
    phi = rng.uniform(0, 2 * np.pi, (b, 2 * p))
    accept = rng.random((b, 2 * p)) * (1 + minor) < 1 + minor * np.cos(phi)
    phi = np.take_along_axis(phi, np.argsort(~accept, axis=1, kind="stable")[:, :p], axis=1)
    theta = rng.uniform(0, 2 * np.pi, (b, p))
    ring = 1 + minor * np.cos(phi)
    return np.stack([ring * np.cos(theta), ring * np.sin(theta), minor * np.sin(phi)], axis=-1)


_CUBE = [(x, y, z) for x in (-1, 1) for y in (-1, 1) for z in (-1, 1)]
_CUBE_FACES = [(0, 1, 3), (0, 3, 2), (4, 6, 7), (4, 7, 5), (0, 4, 5), (0, 5, 1),
               (2, 3, 7), (2, 7, 6), (0, 2, 6), (0, 6, 4), (1, 5, 7), (1, 7, 3)]
_PYRAMID = [(-1, -1, 0), (1, -1, 0), (1, 1, 0), (-1, 1, 0), (0, 0, 1.5)]
_PYRAMID_FACES = [(0, 1, 2), (0, 2, 3), (0, 1, 4), (1, 2, 4), (2, 3, 4), (3, 0, 4)]
_TETRA = [(1, 1, 1), (1, -1, -1), (-1, 1, -1), (-1, -1, 1)]
_TETRA_FACES = [(0, 1, 2), (0, 1, 3), (0, 2, 3), (1, 2, 3)]
_OCTA = [(1, 0, 0), (-1, 0, 0), (0, 1, 0), (0, -1, 0), (0, 0, 1), (0, 0, -1)]
_OCTA_FACES = [(a, b, c) for a in (0, 1) for b in (2, 3) for c in (4, 5)]

SHAPES: dict[str, Sampler] = {
    "sphere": _sphere,
    "ellipsoid": _ellipsoid,
    "cube": _polyhedron(_CUBE, _CUBE_FACES, 0.15),
    "octahedron": _polyhedron(_OCTA, _OCTA_FACES, 0.15),
    "cylinder": _cylinder,
    "tube": _tube,
    "capsule": _capsule,
    "cone": _cone,
    "frustum": _frustum,
    "hemisphere": _hemisphere,
    "torus": _torus,
    "pyramid": _polyhedron(_PYRAMID, _PYRAMID_FACES, 0.15),
    "tetrahedron": _polyhedron(_TETRA, _TETRA_FACES, 0.2),
}


# ----------------------------------------------------------------------------- pose and noise

def _rotations(rng: np.random.Generator, b: int) -> np.ndarray:
    """Uniformly random rotation matrices (B, 3, 3) from unit quaternions."""
    w, x, y, z = _unit(rng.normal(size=(b, 4))).T
    return np.stack([
        np.stack([1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)], -1),
        np.stack([2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)], -1),
        np.stack([2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)], -1),
    ], axis=1)


def generate_shapes(name: str, count: int, num_points: int, rng: np.random.Generator,
                    anisotropy: float = 1.25, noise: float = 0.02) -> np.ndarray:
    """``count`` clouds (count, num_points, 3) float32 of shape ``name``, in the unit sphere.

    Each gets a per-axis scale in [1/anisotropy, anisotropy], a random rotation and
    Gaussian noise of a std drawn from U[0, noise] (relative to the unit sphere)."""
    if count == 0:
        return np.zeros((0, num_points, 3), dtype=np.float32)
    pts = SHAPES[name](rng, count, num_points)
    pts = pts * np.exp(rng.uniform(-np.log(anisotropy), np.log(anisotropy), (count, 1, 3)))
    pts = np.einsum("bpi,bji->bpj", pts, _rotations(rng, count))
    pts = normalize_unit_sphere(pts)
    pts = pts + rng.standard_normal(pts.shape, dtype=np.float32) * rng.uniform(0, noise, (count, 1, 1)).astype(np.float32)
    return normalize_unit_sphere(pts)


def _per_split(key: str, given, defaults: dict[str, int], least: int) -> dict[str, int]:
    """``{train: .., test: ..}`` over the defaults (a split left out keeps its default)."""
    if given is None:
        return dict(defaults)
    if not isinstance(given, dict) or set(given) - set(defaults):
        raise ConfigError(f"data.{key} must be a mapping of train and/or test to integers, got {given!r:.80}")
    for split, value in given.items():
        checks.integer(f"data.{key}.{split}", value, least)
    return {**defaults, **given}


_SAMPLES_PER_CLASS = {"train": 64, "test": 16}
_SEEDS = {"train": 0, "test": 1}


@dataclass
class ShapesOptions(DataOptions):
    normalize: bool = True
    samples_per_class: dict[str, int] = field(default_factory=lambda: dict(_SAMPLES_PER_CLASS))
    seeds: dict[str, int] = field(default_factory=lambda: dict(_SEEDS))  # the content of each split
    anisotropy: float = 1.25  # per-axis scale in [1/anisotropy, anisotropy]
    noise: float = 0.02  # Gaussian noise std drawn per cloud from U[0, noise]

    def __post_init__(self) -> None:
        super().__post_init__()
        unknown = [n for n in self.class_names or () if n not in SHAPES]
        if unknown:
            raise ConfigError(f"data.class_names {unknown} are not procedural shapes; known: {list(SHAPES)}")
        self.samples_per_class = _per_split("samples_per_class", self.samples_per_class, _SAMPLES_PER_CLASS, 0)
        self.seeds = _per_split("seeds", self.seeds, _SEEDS, 0)
        checks.number("data.anisotropy", self.anisotropy, above=0)
        checks.number("data.noise", self.noise, at_least=0)


@register_data_format("shapes", ShapesOptions)
def load_shapes(cfg: ShapesOptions, source_split: str, pool_size: int) -> LoadedSplit:
    """Procedural shapes generated from a seed (no files): 13 classes."""
    names = cfg.class_names or list(SHAPES)
    per_class, seed = cfg.samples_per_class[source_split], cfg.seeds[source_split]
    clouds, labels = [], []
    for label, name in enumerate(names):
        rng = np.random.default_rng([seed, list(SHAPES).index(name)])
        clouds.append(generate_shapes(name, per_class, pool_size, rng, float(cfg.anisotropy), float(cfg.noise)))
        labels.append(np.full(per_class, label, dtype=np.int64))
    return LoadedSplit(np.concatenate(clouds), np.concatenate(labels), names)
