"""Seeded, class-stratified validation split carved from a training split."""
from __future__ import annotations

import numpy as np

__all__ = ["stratified_split"]

_SPLIT_STREAM = 0x5A11D  # keeps the split's random stream apart from the samples'


def stratified_split(labels: np.ndarray, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train_rows, val_rows), sorted. Each class gives round(fraction * count) samples to val,
    at least one and never all, when it has two or more; a single sample stays in train."""
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"data.val_fraction must be in [0, 1), got {val_fraction}")
    labels = np.asarray(labels)
    if val_fraction == 0.0:
        return np.arange(len(labels)), np.zeros(0, dtype=np.int64)
    rng = np.random.default_rng([int(seed) % 2**63, _SPLIT_STREAM])
    val = []
    for cls in np.unique(labels):
        rows = np.flatnonzero(labels == cls)
        if len(rows) < 2:
            continue
        take = min(max(int(round(val_fraction * len(rows))), 1), len(rows) - 1)
        val.append(rng.permutation(rows)[:take])
    val_rows = np.sort(np.concatenate(val)) if val else np.zeros(0, dtype=np.int64)
    train_rows = np.setdiff1d(np.arange(len(labels)), val_rows)
    return train_rows, val_rows
