"""Zero-shot evaluation: classes never trained on, scored through their names (a contrastive head).

The protocol (Cheraghian et al. 2019 for ModelNet40; docs/zero-shot.md): train on the seen
classes, then

- **ZSL**: every cloud of an unseen class, classified among the unseen classes only;
  ``zsl_top1`` is the instance-level top-1 accuracy;
- **GZSL**: clouds of seen and of unseen classes, classified among all of them (seen first,
  then unseen); ``gzsl_seen`` / ``gzsl_unseen`` are the instance-level accuracies on each part,
  ``gzsl_hm`` their harmonic mean.

Where the data comes from (metrics.json ``split``): ``test`` when the data has a test split
(both parts from it); otherwise ``val+unseen_train``: the unseen classes' clouds of the
training files (which training never reads) and, for GZSL's seen part, the seen classes'
validation split (carved from their training clouds, ``data.val_fraction``).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from .data import DataOptions, PointCloudDataset, build_dataset
from .data.classes import ClassSelection
from .distributed import DistContext
from .engine import Predictions, make_loader, predict
from .errors import ConfigError, DataError
from .metrics import ClassificationResult, classification_metrics

__all__ = ["ZeroShotData", "ZeroShotResult", "zero_shot_data", "evaluate_zero_shot", "ZERO_SHOT_KEYS",
           "FALLBACK_SPLIT"]

log = logging.getLogger(__name__)

ZERO_SHOT_KEYS = ("zsl_top1", "gzsl_seen", "gzsl_unseen", "gzsl_hm")
FALLBACK_SPLIT = "val+unseen_train"
ZERO_SHOT_SPLITS = ("auto", "test", "val")


@dataclass
class ZeroShotData:
    seen: list[str]
    unseen: list[str]
    seen_eval: PointCloudDataset  # GZSL's seen part, labelled in ``seen`` order
    unseen_eval: PointCloudDataset  # ZSL, and GZSL's unseen part, labelled in ``unseen`` order
    split: str  # "test" or FALLBACK_SPLIT

    @property
    def all(self) -> list[str]:
        return [*self.seen, *self.unseen]


def _check_every_class_has_clouds(dataset: PointCloudDataset, where: str) -> None:
    empty = [name for name, n in zip(dataset.class_names, dataset.class_counts()) if n == 0]
    if empty:
        raise DataError(f"{where} has no cloud of the class(es) {empty}: they cannot be evaluated")


def zero_shot_data(data: DataOptions, seed: int, selection: ClassSelection, split: str = "auto",
                   seen_val: PointCloudDataset | None = None,
                   seen_test: PointCloudDataset | None = None) -> ZeroShotData:
    """The evaluation clouds of ``selection`` (see the module docstring). ``data``: the run's data
    options (:func:`any2point.data.data_options`). ``split``: auto (test when readable, else the
    fallback), test, or val (the fallback). ``seen_val`` / ``seen_test``: those splits of the seen
    classes when already built."""
    if split not in ZERO_SHOT_SPLITS:
        raise ConfigError(f"the zero-shot evaluation split must be one of {', '.join(ZERO_SHOT_SPLITS)}, got {split!r}")
    if not selection.unseen:
        raise ConfigError("zero-shot evaluation needs unseen classes: set data.classes.eval")
    seen, unseen = list(selection.train), list(selection.unseen)
    name = data.name
    if split in ("auto", "test"):
        problem = None
        try:
            seen_test = seen_test or build_dataset(data, "test", seed, classes=seen)
        except DataError as exc:
            seen_test, problem = None, str(exc)
        if seen_test is not None:
            unseen_test = build_dataset(data, "test", seed, classes=unseen)
            _check_every_class_has_clouds(unseen_test, f"the test split of {name!r}")
            return ZeroShotData(seen, unseen, seen_test, unseen_test, "test")
        if split == "test":
            raise DataError(f"no test split to evaluate zero-shot on ({problem}); the fallback is eval.split=val")
        log.warning("no test split: %s", problem)
    log.info("zero-shot figures from the unseen classes' clouds of the training files and the seen classes' "
             "validation split (split %s)", FALLBACK_SPLIT)
    if seen_val is None:
        if not data.val_fraction > 0:
            raise ConfigError(f"{name!r} has no test split, so GZSL's seen part is the seen classes' validation split: "
                              f"set data.val_fraction > 0 (as in training)")
        seen_val = build_dataset(data, "val", seed, classes=seen)
    unseen_train = build_dataset(data, "val", seed, classes=unseen, carve=False)
    _check_every_class_has_clouds(unseen_train, f"the training files of {name!r}")
    return ZeroShotData(seen, unseen, seen_val, unseen_train, FALLBACK_SPLIT)


@dataclass(frozen=True)
class ZeroShotResult:
    zsl: ClassificationResult  # among the unseen classes
    gzsl: ClassificationResult  # among all classes, seen part then unseen part
    seen: float  # GZSL accuracy on the seen classes' clouds, percent
    unseen: float  # GZSL accuracy on the unseen classes' clouds, percent
    split: str

    @property
    def hm(self) -> float:
        return 0.0 if self.seen + self.unseen == 0 else 2 * self.seen * self.unseen / (self.seen + self.unseen)

    def metrics(self) -> dict:
        """metrics.json keys, percent like ``oa``."""
        return {"zsl_top1": self.zsl.oa, "zsl_macc": self.zsl.macc, "gzsl_seen": self.seen,
                "gzsl_unseen": self.unseen, "gzsl_hm": self.hm, "zsl_samples": self.zsl.samples,
                "gzsl_seen_samples": self.gzsl.samples - self.zsl.samples, "gzsl_unseen_samples": self.zsl.samples}


def _predict(model, dataset, ctx, names, *, batch_size, precision, num_workers, votes, vote_scale, seed, progress,
             desc):
    loader = make_loader(dataset, batch_size, ctx, train=False, seed=seed, num_workers=num_workers)
    with model.head.classes(names):
        return predict(model, loader, ctx, precision=precision, votes=votes, vote_scale=tuple(vote_scale), seed=seed,
                       progress=progress, desc=desc)


def evaluate_zero_shot(model, data: ZeroShotData, ctx: DistContext, *, batch_size: int, precision: str = "32",
                       num_workers: int = 0, votes: int = 1, vote_scale=(0.85, 1.15), seed: int = 0,
                       progress: bool = False) -> ZeroShotResult:
    """ZSL and GZSL of ``model`` (an open-vocabulary head) on ``data``."""
    if not getattr(model.head, "open_vocabulary", False):
        raise ConfigError(f"zero-shot evaluation scores classes by their names, which the {model.head.config.name} "
                          f"head cannot: train with model.head.name=contrastive")
    kw = dict(batch_size=batch_size, precision=precision, num_workers=num_workers, votes=votes, vote_scale=vote_scale,
              seed=seed, progress=progress)
    seen = _predict(model, data.seen_eval, ctx, data.all, desc="gzsl seen", **kw)
    unseen = _predict(model, data.unseen_eval, ctx, data.all, desc="unseen", **kw)
    offset = len(data.seen)
    if votes == 1:
        # One pass over the unseen clouds serves both: the logits of a class do not depend on the
        # other classes scored, so the best unseen column of the 40-way softmax is the 10-way argmax.
        zsl = Predictions(probs=unseen.probs[:, offset:], targets=unseen.targets)
    else:  # averaged softmaxes depend on the classes each is taken over
        zsl = _predict(model, data.unseen_eval, ctx, data.unseen, desc="zsl", **kw)
    preds = np.concatenate([seen.preds, unseen.preds])
    targets = np.concatenate([seen.targets, unseen.targets + offset])
    return ZeroShotResult(
        zsl=classification_metrics(zsl.preds, zsl.targets, len(data.unseen)),
        gzsl=classification_metrics(preds, targets, len(data.all)),
        seen=100.0 * float(np.mean(seen.preds == seen.targets)),
        unseen=100.0 * float(np.mean(unseen.preds == unseen.targets + offset)),
        split=data.split)
