"""The dataset every loader returns: stored point pools + labels + the point protocol.

All randomness of a sample (the random subset, the augmentations) comes from a
generator seeded by (seed, epoch, index), so a sample is the same whatever the number of
DataLoader workers, and a resumed run that calls ``set_epoch`` reproduces an
uninterrupted one. Validation and test samples use no randomness at all.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch.utils.data import Dataset

from .protocol import SPLITS, PointProtocol
from .sampling import normalize_unit_sphere
from .transforms import Compose

__all__ = ["PointCloudDataset", "LoadedSplit"]

_SAMPLE_STREAM = 0x5A3B1E  # keeps the samples' random streams apart from the split's


@dataclass
class LoadedSplit:
    """What a loader reads from disk (or generates) for one source split."""

    pools: np.ndarray  # (N, P, 3) float32, FPS-ordered when the source had more points
    labels: np.ndarray  # (N,) int64
    class_names: list[str]
    skipped: list[tuple[str, str]] = field(default_factory=list)


class PointCloudDataset(Dataset):
    """``dataset[i] -> (points FloatTensor (num_points, 3), label int)``.

    ``rows`` selects which stored pools belong to this split (the val split shares the
    training pools). ``normalize`` centres and scales each selected sample to the unit
    sphere before augmentation. ``transforms`` are the training augmentations, or for val /
    test the deterministic evaluation transforms (``data.eval_transforms``, e.g. centring).
    ``epoch_pools`` (K, N, train_fps): K FPS orderings of every stored cloud; training takes
    ordering ``epoch % K`` as the cloud's pool (data.protocol.fps_pools).
    """

    def __init__(self, pools: np.ndarray, labels: np.ndarray, class_names: list[str], split: str,
                 protocol: PointProtocol, rows: np.ndarray | None = None, transforms: Compose | None = None,
                 seed: int = 0, normalize: bool = False, name: str = "",
                 skipped: list[tuple[str, str]] | None = None, epoch_pools: np.ndarray | None = None):
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        if pools.ndim != 3 or pools.shape[-1] != 3 or len(pools) != len(labels):
            raise ValueError(f"pools must be (N, P, 3) with one label each, got {pools.shape} and {len(labels)} labels")
        self._pools = pools
        self._rows = np.arange(len(pools)) if rows is None else np.asarray(rows, dtype=np.int64)
        self.labels = np.asarray(labels, dtype=np.int64)[self._rows]
        self.class_names = list(class_names)
        self.split = split
        self.protocol = protocol
        self.num_points = protocol.num_points
        self.training = split == "train"
        self.transforms = transforms
        if epoch_pools is not None and (epoch_pools.ndim != 3 or epoch_pools.shape[1] != len(pools)):
            raise ValueError(f"epoch_pools must be (K, {len(pools)}, P), got {epoch_pools.shape}")
        self._epoch_pools = epoch_pools
        self.seed = int(seed)
        self.normalize = normalize
        self.name = name
        self.skipped = list(skipped or [])
        # Shared memory, so persistent DataLoader workers see set_epoch of the main process.
        self._epoch = torch.zeros((), dtype=torch.int64).share_memory_()

    def __len__(self) -> int:
        return len(self._rows)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def epoch(self) -> int:
        return int(self._epoch)

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch's random subsets and augmentations; call before iterating."""
        self._epoch.fill_(int(epoch))

    def class_counts(self) -> np.ndarray:
        return np.bincount(self.labels, minlength=self.num_classes)

    def rng(self, index: int) -> np.random.Generator:
        epoch = self.epoch if self.training else 0
        return np.random.default_rng([self.seed % 2**63, _SAMPLE_STREAM, epoch, index])

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} samples")
        index = int(index) % len(self)
        rng = self.rng(index)
        row = self._rows[index]
        pool = self._pools[row]
        if self._epoch_pools is not None:
            pool = pool[self._epoch_pools[(self.epoch if self.training else 0) % len(self._epoch_pools), row]]
        points = self.protocol.select(pool, self.training, rng)
        if self.normalize:
            points = normalize_unit_sphere(points)
        if self.transforms:
            points = self.transforms(points, rng)
        return torch.from_numpy(np.ascontiguousarray(points, dtype=np.float32)), int(self.labels[index])

    def subset(self, indices: np.ndarray, split: str, label_map: np.ndarray,
               class_names: list[str]) -> "PointCloudDataset":
        """Samples ``indices`` of this dataset as a ``split`` of their own, labels renamed by
        ``label_map`` (old label -> new) to ``class_names``; the stored pools are shared (few-shot)."""
        indices = np.asarray(indices, dtype=np.int64)
        labels = np.full(len(self._pools), -1, dtype=np.int64)
        labels[self._rows[indices]] = np.asarray(label_map)[self.labels[indices]]
        return PointCloudDataset(self._pools, labels, class_names, split, self.protocol, rows=self._rows[indices],
                                 transforms=self.transforms, seed=self.seed, normalize=self.normalize,
                                 name=self.name, skipped=self.skipped)

    def __repr__(self) -> str:
        return (f"PointCloudDataset({self.name or 'data'}, split={self.split}, samples={len(self)}, "
                f"classes={self.num_classes}, num_points={self.num_points})")
