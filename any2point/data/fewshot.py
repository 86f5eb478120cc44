"""The few-shot protocol of Point-BERT / Point-MAE, for any labelled dataset.

``data.fewshot = {ways, shots, fold, queries}`` (null: off). Fold ``f`` of a (ways, shots)
setting is one *episode*:

- ``ways`` classes, drawn from the classes that have enough samples (at least
  ``shots + queries`` in the training split, and ``queries`` in the test split when there is
  one); the episode's labels are 0..ways-1 in the classes' original order, names kept;
- per class, ``shots`` support clouds from the training split: the run's training set;
- per class, ``queries`` clouds from the test split: the run's test set (when the dataset has
  one), and ``queries`` further clouds from the rest of the training split (never support):
  the run's validation set, on which a recipe may be chosen. Without a test split the run
  reports this validation set, as in the issue's protocol for ``../shared``.

``data.val_fraction`` is not used: the episode decides every split. The dataset configs do not
define the key (it passes through the data schema): ``+data.fewshot={ways:5,shots:10}`` turns
it on for any dataset, ``experiment=fewshot`` for ModelNet40 with its recipe.

**The draw depends on (ways, shots, fold) and the dataset's labels only** (not on the run's
``seed``, the machine, or the number of workers). Each candidate list (every class; the
training rows of one class; its test rows) is ordered by 64-bit keys from the PCG64 bit
generator seeded with ``numpy.random.SeedSequence([0xF3E7, ways, shots, fold, part, class])``
(part 0: classes, 1: training rows, 2: test rows), taking the first ones in that order. The
raw PCG64 stream and SeedSequence are fixed by their definitions, so the episode does not
change with the numpy version either. Rows are indices into a split as its loader reads it
(for ModelNet40's HDF5 release: the files in ``train_files.txt`` order, the clouds of a file in
order); the support set of the first class comes first.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np

from ..errors import ConfigError, DataError
from .base import PointCloudDataset

__all__ = ["FewShotConfig", "Episode", "draw_episode", "fewshot_of", "build_episode"]

log = logging.getLogger(__name__)

_ENTROPY = 0xF3E7  # keeps the episodes' streams apart from every other seeded stream
_CLASSES, _TRAIN_ROWS, _TEST_ROWS = 0, 1, 2


@dataclass
class FewShotConfig:
    """``data.fewshot``: one episode of the few-shot protocol."""

    ways: int
    shots: int
    fold: int = 0
    queries: int = 20  # test (and validation) clouds per class


@dataclass(frozen=True)
class Episode:
    classes: np.ndarray  # (ways,) original labels, ascending: episode label i is classes[i]
    support: np.ndarray  # rows of the training split, class by class
    val: np.ndarray  # rows of the training split (not support), class by class
    test: np.ndarray | None  # rows of the test split, class by class; None without a test split

    def label_map(self, num_classes: int) -> np.ndarray:
        """original label -> episode label (-1 for classes outside the episode)."""
        mapping = np.full(num_classes, -1, dtype=np.int64)
        mapping[self.classes] = np.arange(len(self.classes))
        return mapping


def fewshot_of(data_cfg: Mapping[str, Any]) -> FewShotConfig | None:
    """``data.fewshot`` checked, or None when few-shot is off."""
    node = data_cfg.get("fewshot") if isinstance(data_cfg, Mapping) else None
    if node is None:
        return None
    if not isinstance(node, Mapping):
        raise ConfigError(f"data.fewshot must be null or a mapping with ways, shots, fold, queries; got {node!r}")
    unknown = sorted(set(node) - {"ways", "shots", "fold", "queries"})
    if unknown:
        raise ConfigError(f"data.fewshot has unknown keys {unknown}; expected ways, shots, fold, queries")
    missing = [k for k in ("ways", "shots") if k not in node]
    if missing:
        raise ConfigError(f"data.fewshot needs {' and '.join(missing)} (and optionally fold, queries); "
                          f"got {dict(node)}")
    cfg = FewShotConfig(**node)
    for key, least in (("ways", 1), ("shots", 1), ("fold", 0), ("queries", 1)):
        value = getattr(cfg, key)
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < least:
            raise ConfigError(f"data.fewshot.{key} must be an integer >= {least}, got {value!r}")
    return cfg


def _order(candidates: np.ndarray, cfg: FewShotConfig, part: int, cls: int = 0) -> np.ndarray:
    """``candidates`` in the order of their PCG64 keys (see the module docstring)."""
    seed = np.random.SeedSequence([_ENTROPY, cfg.ways, cfg.shots, cfg.fold, part, cls])
    keys = np.random.PCG64(seed).random_raw(len(candidates))
    return candidates[np.argsort(keys, kind="stable")]


def _rows_of(labels: np.ndarray, cls: int) -> np.ndarray:
    return np.flatnonzero(labels == cls).astype(np.int64)


def draw_episode(train_labels: np.ndarray, test_labels: np.ndarray | None, num_classes: int,
                 cfg: FewShotConfig, class_names: list[str] | None = None) -> Episode:
    """The episode of ``cfg`` for a dataset with these labels (see the module docstring)."""
    train_labels = np.asarray(train_labels, dtype=np.int64)
    train_counts = np.bincount(train_labels, minlength=num_classes)
    eligible = train_counts >= cfg.shots + cfg.queries
    if test_labels is not None:
        test_labels = np.asarray(test_labels, dtype=np.int64)
        eligible &= np.bincount(test_labels, minlength=num_classes) >= cfg.queries
    if eligible.sum() < cfg.ways:
        names = class_names or [str(c) for c in range(num_classes)]
        short = [names[c] for c in np.flatnonzero(~eligible)]
        raise DataError(f"a {cfg.ways}-way {cfg.shots}-shot episode with {cfg.queries} queries needs {cfg.ways} "
                        f"classes with at least {cfg.shots + cfg.queries} training clouds"
                        + (f" and {cfg.queries} test clouds" if test_labels is not None else "")
                        + f"; only {int(eligible.sum())} of {num_classes} have them (too few: {short})")
    ordered = _order(np.arange(num_classes, dtype=np.int64), cfg, _CLASSES)
    classes = np.sort(ordered[eligible[ordered]][:cfg.ways])
    support, val, test = [], [], []
    for cls in classes:
        rows = _order(_rows_of(train_labels, cls), cfg, _TRAIN_ROWS, int(cls))
        support.append(rows[:cfg.shots])
        val.append(rows[cfg.shots:cfg.shots + cfg.queries])
        if test_labels is not None:
            test.append(_order(_rows_of(test_labels, cls), cfg, _TEST_ROWS, int(cls))[:cfg.queries])
    return Episode(classes, np.concatenate(support), np.concatenate(val),
                   np.concatenate(test) if test_labels is not None else None)


def build_episode(train: PointCloudDataset, test: PointCloudDataset | None, cfg: FewShotConfig
                  ) -> tuple[PointCloudDataset, PointCloudDataset, PointCloudDataset | None]:
    """(support as 'train', validation queries as 'val', test queries as 'test' or None) of the
    episode, from the whole training split and the test split (when there is one)."""
    if test is not None and test.class_names != train.class_names:
        raise DataError(f"the test split of {train.name!r} has classes {test.class_names}, "
                        f"the training split {train.class_names}")
    episode = draw_episode(train.labels, None if test is None else test.labels, train.num_classes, cfg,
                           train.class_names)
    mapping = episode.label_map(train.num_classes)
    names = [train.class_names[c] for c in episode.classes]
    support = train.subset(episode.support, "train", mapping, names)
    val = train.subset(episode.val, "val", mapping, names)
    test_split = None if test is None else test.subset(episode.test, "test", mapping, names)
    log.info("few-shot episode %d-way %d-shot fold %d: classes %s; %d support, %d validation queries%s",
             cfg.ways, cfg.shots, cfg.fold, names, len(support), len(val),
             f", {len(test_split)} test queries" if test_split is not None else " (no test split: reported)")
    return support, val, test_split
