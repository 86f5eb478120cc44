"""Which splits of the data config a run uses, and which one its reported metrics refer to.

The test split is optional: a dataset folder may hold only training files (the shared
ModelNet40 copy does). When it cannot be read, the run goes on, says so, and reports the
validation split instead. Validation exists when ``data.val_fraction > 0``.

With ``data.fewshot`` set, one few-shot episode decides the splits instead
(:mod:`any2point.data.fewshot`): support clouds train, queries from the rest of the training
split validate, queries from the test split (when readable) test.

With ``data.classes`` set (:mod:`any2point.data.classes`), train, val and test hold the seen
classes' clouds only, and the unseen classes' clouds go to the zero-shot evaluation data
(:mod:`any2point.zeroshot`), never to the training loader.

Every function here takes the ``data`` section already converted to its format's options
(:func:`any2point.data.data_options`, called once where the run reads its config).
"""
from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass

from ..data import DataOptions, PointCloudDataset, build_dataset
from ..data.classes import ClassSelection
from ..data.fewshot import FewShotConfig, build_episode
from ..errors import ConfigError, DataError
from ..zeroshot import ZeroShotData, zero_shot_data

__all__ = ["RunSplits", "load_splits", "load_eval_split", "EVAL_SPLITS"]

log = logging.getLogger(__name__)

EVAL_SPLITS = ("auto", "test", "val", "train")


@dataclass
class RunSplits:
    train: PointCloudDataset
    val: PointCloudDataset | None
    test: PointCloudDataset | None
    test_skipped: str | None  # why there is no test split
    zero_shot: ZeroShotData | None = None  # the unseen classes' evaluation data (data.classes.eval)

    @property
    def class_names(self) -> list[str]:
        return self.train.class_names

    @property
    def report(self) -> str | None:
        """The split the run's final ``oa`` / ``macc`` refer to: test when present, else val."""
        return "test" if self.test is not None else "val" if self.val is not None else None


def _try_test(data: DataOptions, seed: int, classes=None) -> tuple[PointCloudDataset | None, str | None]:
    try:
        return build_dataset(data, "test", seed, classes=classes), None
    except DataError as exc:
        return None, str(exc)


def _check_classes(reference: PointCloudDataset, other: PointCloudDataset | None) -> None:
    if other is not None and other.class_names != reference.class_names:
        raise DataError(f"the {other.split} split of {reference.name!r} has classes {other.class_names}, "
                        f"the training split {reference.class_names}")


def _episode_splits(data: DataOptions, seed: int, fewshot: FewShotConfig) -> RunSplits:
    whole = dataclasses.replace(data, val_fraction=0.0)  # the episode draws from the whole training split
    test, skipped = _try_test(whole, seed)
    if test is None:
        log.warning("test split skipped: %s; the episode's validation queries are reported", skipped)
    support, val, test = build_episode(build_dataset(whole, "train", seed), test, fewshot)
    return RunSplits(train=support, val=val, test=test, test_skipped=skipped)


def _selected_splits(data: DataOptions, seed: int, selection: ClassSelection) -> RunSplits:
    """The seen classes' train / val / test, and the zero-shot data when there are unseen classes."""
    train = build_dataset(data, "train", seed, classes=selection.train)
    val = build_dataset(data, "val", seed, classes=selection.train) if data.val_fraction > 0 else None
    test, skipped = _try_test(data, seed, classes=selection.train)
    if test is None:
        log.warning("test split skipped: %s", skipped)
    zero_shot = zero_shot_data(data, seed, selection, "auto" if test is not None else "val", seen_val=val,
                               seen_test=test) if selection.unseen else None
    log.info("training on %d of the classes (%d clouds)%s", len(selection.train), len(train),
             f"; {len(selection.unseen)} unseen classes held out" if selection.unseen else "")
    return RunSplits(train=train, val=val, test=test, test_skipped=skipped, zero_shot=zero_shot)


def load_splits(data: DataOptions, seed: int) -> RunSplits:
    """train, val (when ``data.val_fraction > 0``) and test (when readable) of a training run;
    with ``data.fewshot``, the splits of that episode; with ``data.classes``, the seen classes'
    splits and the unseen classes' evaluation data."""
    fewshot = data.fewshot_episode()
    selection = data.class_selection()
    if fewshot is not None and selection is not None:
        raise ConfigError("data.fewshot and data.classes cannot be combined: an episode draws its own classes")
    if fewshot is not None:
        return _episode_splits(data, seed, fewshot)
    if selection is not None:
        return _selected_splits(data, seed, selection)
    train = build_dataset(data, "train", seed)
    val = build_dataset(data, "val", seed) if data.val_fraction > 0 else None
    test, skipped = _try_test(data, seed)
    if test is None:
        log.warning("test split skipped: %s", skipped)
    for split in (val, test):
        _check_classes(train, split)
    return RunSplits(train=train, val=val, test=test, test_skipped=skipped)


def load_eval_split(data: DataOptions, split: str, seed: int) -> PointCloudDataset:
    """One split for evaluation; ``auto`` is the test split, else validation when configured."""
    if split not in EVAL_SPLITS:
        raise ValueError(f"eval.split must be one of {', '.join(EVAL_SPLITS)}, got {split!r}")
    fewshot = data.fewshot_episode()
    if fewshot is not None:
        episode = _episode_splits(data, seed, fewshot)
        if split == "test" and episode.test is None:
            raise DataError(f"no test split to evaluate ({episode.test_skipped}); the few-shot episode's "
                            f"validation queries are eval.split=val")
        return {"auto": episode.test if episode.test is not None else episode.val, "train": episode.train, "val": episode.val,
                "test": episode.test}[split]
    selection = data.class_selection()
    classes = list(selection.train) if selection is not None else None
    if split != "auto":
        return build_dataset(data, split, seed, classes=classes)
    test, skipped = _try_test(data, seed, classes=classes)
    if test is not None:
        return test
    if data.val_fraction > 0:
        log.warning("no test split (%s): evaluating the validation split", skipped)
        return build_dataset(data, "val", seed, classes=classes)
    raise DataError(f"no test split to evaluate ({skipped}) and data.val_fraction is 0: set eval.split=train, "
                    f"or data.val_fraction to what the training run used")
