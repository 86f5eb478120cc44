"""The ``data`` config node as typed options: the keys every format shares (:class:`DataOptions`).

Each data format subclasses :class:`DataOptions` with its own keys (its constructor keyword
arguments are its schema, checked in ``__post_init__``: a bad value is a ConfigError naming
the ``data.`` key). :func:`any2point.data.registry.data_options` converts a Hydra ``data``
section (or a plain mapping) into the chosen format's options once, at the door; loaders and
:func:`any2point.data.build_dataset` read attributes, never dict keys.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

from .. import checks
from ..errors import ConfigError, DataError
from .fps_cache import ArrayCache, default_cache_dir
from .protocol import PointProtocol

if TYPE_CHECKING:
    from .classes import ClassSelection
    from .fewshot import FewShotConfig

log = logging.getLogger(__name__)

__all__ = ["as_dict", "DataOptions", "ProtocolOptions", "protocol_of", "cache_of", "existing_root", "ON_ERROR",
           "UP_AXES", "flag", "optional_limit"]

ON_ERROR = ("raise", "skip")  # what a loader of files does with a bad file (data.on_error)
UP_AXES = ("x", "y", "z")  # data.up_axis: the axis rotations turn about by default


def as_dict(cfg: Any) -> dict:
    """A plain, resolved dict of a DictConfig or mapping (its DictConfig / ListConfig values too)."""
    from omegaconf import Container, DictConfig, OmegaConf

    if isinstance(cfg, DictConfig):
        return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]
    if not isinstance(cfg, Mapping):
        raise TypeError(f"the data config must be a mapping or DictConfig, got {type(cfg).__name__}")
    return {k: OmegaConf.to_container(v, resolve=True) if isinstance(v, Container) else v for k, v in cfg.items()}


def flag(key: str, value: Any) -> bool:
    """``value`` must be true or false."""
    if not isinstance(value, bool):
        raise ConfigError(f"{key}={value!r} must be true or false")
    return value


def optional_limit(key: str, value: Any) -> None:
    """A size limit: null (the reader's default limit) or an integer >= 1."""
    checks.optional_integer(key, value, 1, "the default limit")


def _names(key: str, value: Any) -> list[str] | None:
    if value is None:
        return None
    if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
        raise ConfigError(f"data.{key} must be null or a list of class names, got {value!r:.80}")
    return [str(n) for n in value] or None  # an empty list: the format's own class list, as null


@dataclass
class ProtocolOptions:
    """``data.protocol``: how many points training draws from (docs/method.md#training-recipe)."""

    train_fps: int | None = None  # null: max(1200, num_points)
    fps_pools: int | None = 1  # > 1: that many FPS orderings of each stored cloud, one per epoch in turn

    def __post_init__(self) -> None:
        checks.optional_integer("data.protocol.train_fps", self.train_fps, 1, "max(1200, data.num_points)")
        self.fps_pools = 1 if self.fps_pools is None else self.fps_pools
        checks.integer("data.protocol.fps_pools", self.fps_pools, 1)


@dataclass
class DataOptions:
    """The keys every data format reads (``conf/data/base.yaml``); a format's options subclass it.

    ``normalize`` defaults to false (stored clouds used as released); a format whose clouds are
    not centred and scaled declares ``normalize: bool = True`` in its own options."""

    format: str = ""
    name: str | None = None  # null: the format's name
    root: str | None = None
    num_points: int = 1024
    val_fraction: float = 0.0
    class_names: list[str] | None = None  # null: the format's own class list
    normalize: bool = False
    up_axis: str = "y"
    protocol: ProtocolOptions = field(default_factory=ProtocolOptions)
    augment: list[dict[str, Any]] | None = None  # training augmentations (any2point.data.transforms)
    eval_transforms: list[dict[str, Any]] | None = None  # val / test transforms
    cache: bool = True
    cache_dir: str | None = None  # null: <any2point cache>/fps
    fewshot: dict[str, Any] | None = None  # one few-shot episode (any2point.data.fewshot); null: off
    classes: dict[str, Any] | None = None  # seen / unseen classes (any2point.data.classes); null: all, seen

    def __post_init__(self) -> None:
        from .transforms import build_transforms

        self.name = self.format if self.name is None else str(self.name)
        checks.integer("data.num_points", self.num_points, 1)
        checks.fraction("data.val_fraction", self.val_fraction)
        self.class_names = _names("class_names", self.class_names)
        flag("data.normalize", self.normalize)
        checks.one_of("data.up_axis", self.up_axis, UP_AXES)
        if isinstance(self.protocol, Mapping):
            unknown = sorted(set(self.protocol) - {"train_fps", "fps_pools"})
            if unknown:
                raise ConfigError(f"data.protocol has unknown keys {unknown}; expected train_fps, fps_pools")
            self.protocol = ProtocolOptions(**self.protocol)
        elif self.protocol is None:
            self.protocol = ProtocolOptions()
        flag("data.cache", self.cache)
        for key in ("augment", "eval_transforms"):
            try:
                build_transforms(getattr(self, key), self.up_axis)
            except (TypeError, ValueError) as exc:
                raise ConfigError(f"data.{key}: {exc}") from None
        self.fewshot_episode()
        self.class_selection()

    def fewshot_episode(self) -> FewShotConfig | None:
        """``fewshot`` checked: the run's few-shot episode, or None when few-shot is off."""
        from .fewshot import fewshot_of

        return fewshot_of({"fewshot": self.fewshot})

    def class_selection(self) -> ClassSelection | None:
        """``classes`` checked: the seen (and unseen) classes, or None when every class trains."""
        from .classes import class_selection_of

        return class_selection_of({"classes": self.classes})

    def whole_cloud_points(self) -> int:
        """Points to ask the loader for to get each stored cloud whole (data.protocol.fps_pools > 1):
        the HDF5 releases keep clouds of at most this many points unchanged."""
        return 1 << 20


def protocol_of(options: DataOptions, split: str) -> PointProtocol:
    """The point protocol; the test split ignores ``protocol.train_fps`` (an evaluation may
    ask for more points than training drew from)."""
    num_points = options.num_points
    train_fps = options.protocol.train_fps or max(1200, num_points)
    return PointProtocol(num_points=num_points, train_fps=max(train_fps, num_points) if split == "test" else train_fps)


def cache_of(options: DataOptions) -> ArrayCache:
    """The FPS / preprocessing cache: ``data.cache_dir`` (null = default), off when ``data.cache`` is false."""
    if not options.cache:
        return ArrayCache(None)
    if options.cache_dir:
        return ArrayCache(Path(os.path.expanduser(str(options.cache_dir))))
    try:
        return ArrayCache(default_cache_dir())
    except OSError as exc:  # e.g. ANY2POINT_CACHE names a folder that cannot be created
        log.warning("cannot use the cache folder %s (%s); computing without caching (set ANY2POINT_CACHE or "
                    "data.cache_dir to a writable folder to keep results)", exc.filename or "(default)", exc)
        return ArrayCache(None)


def existing_root(options: DataOptions, expected: str, download: str) -> Path:
    """``data.root`` as a Path, or a DataError saying what belongs there and where to get it."""
    root = options.root
    if not root or root == "???":
        raise DataError(f"data.root is not set for dataset {options.name!r}; expected a folder with {expected}. "
                        f"Download: {download}")
    path = Path(os.path.expanduser(str(root)))
    if not path.is_dir():
        raise DataError(f"dataset {options.name!r} not found: data.root={root} is not a folder "
                        f"(resolved to {path.resolve()}). Expected {expected}. Download: {download}, unpack it and "
                        f"set data.root=/path/to/it (or set ANY2POINT_DATA to the folder that holds it)", str(path))
    return path
