"""The data-format registry: ``data.format`` names -> (loader, options dataclass, traits).

A format is a loader function ``load(options, source_split, pool_size) -> LoadedSplit`` and
its options dataclass (a subclass of :class:`~any2point.data.options.DataOptions`: the
constructor keyword arguments are the format's ``data.`` keys), registered by one decorator::

    @register_data_format("blobs", BlobsOptions)
    def load_blobs(options: BlobsOptions, source_split: str, pool_size: int) -> LoadedSplit: ...

Built-in formats register when :mod:`any2point.data` is imported; third-party packages
register theirs through the entry-point group ``any2point.data_formats`` (an entry point names
a module or a callable; loading it must call :func:`register_data_format`), after which
``any2point-train data=base data.format=<name>`` trains on it (docs/guide/data-formats.md).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable

from .. import checks
from ..errors import ConfigError
from ..plugins import load_entry_points
from .base import LoadedSplit
from .options import DataOptions, as_dict

__all__ = ["DataFormat", "register_data_format", "get_data_format", "list_data_formats", "load_data_formats",
           "data_options", "ENTRY_POINT_GROUP"]

ENTRY_POINT_GROUP = "any2point.data_formats"

Loader = Callable[[Any, str, int], LoadedSplit]


@dataclass(frozen=True)
class DataFormat:
    """A registered format. ``stored_clouds``: its loader returns each stored cloud whole when
    asked for ``options.whole_cloud_points()`` points, so ``data.protocol.fps_pools > 1`` can
    draw several FPS orderings of it (a format that generates or samples its clouds cannot)."""

    name: str
    load: Loader
    options: type[DataOptions]
    stored_clouds: bool
    description: str


_REGISTRY: dict[str, DataFormat] = {}


def register_data_format(name: str, options: type[DataOptions] = DataOptions, *,
                         stored_clouds: bool = False) -> Callable[[Loader], Loader]:
    """Function decorator registering a loader under ``name`` with its options dataclass."""
    if not (isinstance(options, type) and issubclass(options, DataOptions) and dataclasses.is_dataclass(options)):
        raise TypeError(f"data format {name!r}: options must be a dataclass subclassing DataOptions, got {options!r}")

    def decorate(load: Loader) -> Loader:
        if not callable(load):
            raise TypeError(f"data format {name!r}: {load!r} is not a loader function")
        if name in _REGISTRY and _REGISTRY[name].load is not load:
            raise ValueError(f"a data format named {name!r} is already registered (by {_REGISTRY[name].load.__module__})")
        description = (load.__doc__ or "").strip().split("\n")[0]
        _REGISTRY[name] = DataFormat(name, load, options, stored_clouds, description)
        return load

    return decorate


def load_data_formats() -> None:
    """Load the third-party formats of the entry-point group (once)."""
    load_entry_points(ENTRY_POINT_GROUP, "data format")


def list_data_formats() -> list[str]:
    """Names of every registered format, sorted."""
    load_data_formats()
    return sorted(_REGISTRY)


def get_data_format(name: Any) -> DataFormat:
    """The format of ``data.format``; an unknown name is a ConfigError listing the known ones."""
    checks.one_of("data.format", name, list_data_formats())
    return _REGISTRY[name]


def data_options(cfg: Any) -> DataOptions:
    """The ``data`` section (a DictConfig, a mapping or options already converted) as the options
    of its format (``data.format``, else ``data.name``); ``normalize: null`` is the format's default.
    Keys the format does not define are left out (another format's keys); a bad value of a key it
    defines is a ConfigError naming it."""
    if isinstance(cfg, DataOptions):
        return cfg
    values = as_dict(cfg)
    fmt = get_data_format(values.get("format") or values.get("name"))
    own = {f.name for f in dataclasses.fields(fmt.options) if f.init}
    if values.get("normalize") is None:  # null (data/base.yaml): the format's own default
        own.discard("normalize")
    required = [f.name for f in dataclasses.fields(fmt.options) if f.init and f.name not in values
                and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    if required:
        raise ConfigError(f"data.{required[0]} is not set; data.format={fmt.name!r} needs it (+data.{required[0]}=...)")
    options = fmt.options(**{k: v for k, v in values.items() if k in own and k != "format"}, format=fmt.name)
    if options.protocol.fps_pools > 1 and not fmt.stored_clouds:
        stored = sorted(n for n, f in _REGISTRY.items() if f.stored_clouds)
        raise ConfigError(f"data.protocol.fps_pools > 1 needs stored clouds; data.format {fmt.name!r} has none "
                          f"(supported: {stored})")
    return options
