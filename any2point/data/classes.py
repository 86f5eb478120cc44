"""``data.classes``: which classes a run trains on and which it holds out (zero-shot protocols).

    data.classes.train: [airplane, bench, ...]      # or a named split, e.g. modelnet40_zsl_30_10
    data.classes.eval:  [bathtub, bed, ...]         # the unseen classes; or the same named split

``train`` are the seen classes: the only clouds the training loader gets, labelled in this
order. ``eval`` are the unseen classes, never trained on: a run with a contrastive head reports
ZSL on them alone and GZSL over train + eval (in that order). ``eval`` may be left out (null)
for a plain run on a subset of the classes. Lists must be non-empty, without repeats, and must
not overlap; every name must be a class of the data (checked when the data is read).

Named splits:

- ``modelnet40_zsl_30_10`` (Cheraghian et al. 2019): unseen = the ten ModelNet10 classes,
  seen = the other 30 ModelNet40 classes, both in ModelNet40's class order.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from ..errors import ConfigError

__all__ = ["ClassSelection", "class_selection_of", "NAMED_SPLITS", "MODELNET40_CLASSES", "MODELNET10_CLASSES"]

MODELNET40_CLASSES = (
    "airplane", "bathtub", "bed", "bench", "bookshelf", "bottle", "bowl", "car", "chair", "cone", "cup", "curtain",
    "desk", "door", "dresser", "flower_pot", "glass_box", "guitar", "keyboard", "lamp", "laptop", "mantel", "monitor",
    "night_stand", "person", "piano", "plant", "radio", "range_hood", "sink", "sofa", "stairs", "stool", "table",
    "tent", "toilet", "tv_stand", "vase", "wardrobe", "xbox")
MODELNET10_CLASSES = ("bathtub", "bed", "chair", "desk", "dresser", "monitor", "night_stand", "sofa", "table",
                      "toilet")

# name -> (seen, unseen)
NAMED_SPLITS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "modelnet40_zsl_30_10": (tuple(c for c in MODELNET40_CLASSES if c not in MODELNET10_CLASSES),
                             MODELNET10_CLASSES),
}


@dataclass(frozen=True)
class ClassSelection:
    train: tuple[str, ...]  # seen classes, in label order
    unseen: tuple[str, ...]  # held-out classes (empty: none)

    @property
    def all(self) -> list[str]:
        """GZSL's classes: the seen ones, then the unseen ones."""
        return [*self.train, *self.unseen]


def _names(value: Any, key: str, side: int) -> tuple[str, ...]:
    if isinstance(value, str):
        if value not in NAMED_SPLITS:
            raise ConfigError(f"data.classes.{key}={value!r} is neither a list of class names nor a named split "
                              f"(named splits: {', '.join(NAMED_SPLITS)})")
        return NAMED_SPLITS[value][side]
    if not isinstance(value, Sequence):
        raise ConfigError(f"data.classes.{key} must be a list of class names or a named split "
                          f"({', '.join(NAMED_SPLITS)}), got {value!r:.80}")
    names = tuple(str(n).strip() for n in value)
    if not names:
        raise ConfigError(f"data.classes.{key} is an empty list; give at least one class name")
    blank = [i for i, n in enumerate(names) if not n]
    if blank:
        raise ConfigError(f"data.classes.{key}[{blank[0]}] is blank")
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ConfigError(f"data.classes.{key} names {repeated} more than once")
    return names


def class_selection_of(data_cfg: Mapping[str, Any]) -> ClassSelection | None:
    """``data.classes`` checked (lists, named splits, overlap), or None when it is not set."""
    node = data_cfg.get("classes") if isinstance(data_cfg, Mapping) else None
    if node is None:
        return None
    if not isinstance(node, Mapping):
        raise ConfigError(f"data.classes must be a mapping with train (and eval) class lists or named splits, "
                          f"got {node!r:.80}")
    unknown = sorted(set(node) - {"train", "eval"})
    if unknown:
        raise ConfigError(f"data.classes has unknown keys {unknown}; expected train and eval")
    if node.get("train") is None:
        raise ConfigError("data.classes.train is not set: give the training (seen) classes, as a list or a named "
                          f"split ({', '.join(NAMED_SPLITS)})")
    train = _names(node["train"], "train", 0)
    unseen = () if node.get("eval") is None else _names(node["eval"], "eval", 1)
    overlap = [c for c in train if c in set(unseen)]
    if overlap:
        raise ConfigError(f"data.classes: {overlap} are both seen (train) and unseen (eval); a class is one or "
                          f"the other")
    return ClassSelection(train, unseen)
