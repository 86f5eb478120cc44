"""The point protocol of the release: which points of a stored cloud a sample uses.

Each stored cloud is a *pool*, FPS-ordered when it had more points than needed:
- train: a random ``num_points`` of the first ``train_fps`` pool points, drawn anew
  each epoch (the release's "FPS 1200, then a random 1024");
- val / test: the first ``num_points`` pool points, i.e. FPS ``num_points``.

A file with fewer points than the protocol wants is used whole: with exactly
``num_points`` (the 1,024-point HDF5 files and FPS 1,200) training takes all points in
a random order each epoch; with fewer, points are repeated (randomly in training,
cyclically in evaluation) up to ``num_points``.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import ConfigError
from .sampling import pad_or_trim

__all__ = ["PointProtocol", "SPLITS"]

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class PointProtocol:
    num_points: int = 1024
    train_fps: int = 1200

    def __post_init__(self):
        if self.num_points < 1 or self.train_fps < self.num_points:
            raise ConfigError(f"need 1 <= num_points <= protocol.train_fps, got num_points={self.num_points} "
                             f"and train_fps={self.train_fps}")

    def pool_size(self, split: str) -> int:
        """Points to keep per stored cloud: train and val share one pool (one FPS, one cache entry)."""
        if split in ("train", "val"):
            return self.train_fps
        return self.num_points

    def select(self, pool: np.ndarray, training: bool, rng: np.random.Generator) -> np.ndarray:
        if not training:
            return pad_or_trim(pool, self.num_points)
        candidates = min(self.train_fps, len(pool))
        if candidates >= self.num_points:
            return pool[rng.choice(candidates, self.num_points, replace=False)]
        order = np.concatenate([rng.permutation(candidates),
                                rng.integers(0, candidates, self.num_points - candidates)])
        return pool[order]
