"""Training augmentations: small seeded transforms composed from a config list.

Each transform is ``transform(points (N, 3) float32, rng) -> points``; the dataset hands
every sample its own generator seeded by (seed, epoch, index), so augmentations do not
depend on the worker count. Config format::

    augment:
      - {name: scale, low: 0.6667, high: 1.5}      # per-axis (anisotropic) by default
      - {name: translate, shift: 0.2}
      - {name: center}
      - {name: rotate, max_degrees: 180}           # about data.up_axis unless axis is given
      - {name: jitter, sigma: 0.01, clip: 0.05}
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Iterable

import numpy as np

__all__ = ["Scale", "Translate", "Center", "Rotate", "Jitter", "Compose", "TRANSFORMS", "build_transforms"]

_AXES = {"x": 0, "y": 1, "z": 2}


@dataclass(frozen=True)
class Scale:
    """Multiply by a factor from U[low, high], drawn per axis when anisotropic."""

    low: float = 2.0 / 3.0
    high: float = 1.5
    anisotropic: bool = True

    def __call__(self, points: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        factor = rng.uniform(self.low, self.high, size=3 if self.anisotropic else 1)
        return points * factor.astype(np.float32)


@dataclass(frozen=True)
class Translate:
    """Shift by U[-shift, shift] per axis."""

    shift: float = 0.2

    def __call__(self, points: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return points + rng.uniform(-self.shift, self.shift, size=3).astype(np.float32)


@dataclass(frozen=True)
class Center:
    """Move the centroid to the origin (after a scale, before a rotation)."""

    def __call__(self, points: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return points - points.mean(axis=0, keepdims=True)


@dataclass(frozen=True)
class Rotate:
    """Rotate about one axis by an angle from U[-max_degrees, max_degrees]."""

    axis: str = "y"
    max_degrees: float = 180.0

    def __post_init__(self):
        if self.axis not in _AXES:
            raise ValueError(f"rotate: axis must be one of x, y, z, got {self.axis!r}")

    def __call__(self, points: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        angle = np.deg2rad(rng.uniform(-self.max_degrees, self.max_degrees))
        c, s = np.cos(angle), np.sin(angle)
        i, j = [k for k in range(3) if k != _AXES[self.axis]]  # the plane that turns
        rot = np.eye(3)
        rot[i, i], rot[i, j], rot[j, i], rot[j, j] = c, -s, s, c
        return points @ rot.T.astype(np.float32)


@dataclass(frozen=True)
class Jitter:
    """Add Gaussian noise of std ``sigma`` clipped to [-clip, clip] to every point."""

    sigma: float = 0.01
    clip: float = 0.05

    def __call__(self, points: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        noise = np.clip(rng.normal(0.0, self.sigma, size=points.shape), -self.clip, self.clip)
        return points + noise.astype(np.float32)


@dataclass(frozen=True)
class Compose:
    transforms: tuple = ()

    def __call__(self, points: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        for transform in self.transforms:
            points = transform(points, rng)
        return points

    def __len__(self) -> int:
        return len(self.transforms)


TRANSFORMS = {"scale": Scale, "translate": Translate, "center": Center, "rotate": Rotate, "jitter": Jitter}


def build_transforms(specs: Iterable[dict[str, Any]] | None, up_axis: str = "y") -> Compose:
    """Transforms from config entries ``{name: ..., **params}``; ``rotate`` defaults to ``up_axis``."""
    built = []
    for spec in specs or ():
        spec = dict(spec)
        name = spec.pop("name", None)
        if name not in TRANSFORMS:
            raise ValueError(f"unknown augmentation {name!r} in data.augment; known: {sorted(TRANSFORMS)}")
        cls = TRANSFORMS[name]
        if cls is Rotate:
            spec.setdefault("axis", up_axis)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(spec) - known
        if unknown:
            raise ValueError(f"augmentation {name!r} does not take {sorted(unknown)}; it takes {sorted(known)}")
        built.append(cls(**spec))
    return Compose(tuple(built))
