"""The source-model registry: names -> factories that build frozen sources.

Two kinds of names:

- named sources (``minilm``, ``dinov2``, ...): curated presets registered with
  ``register_source``; their facts (sizes, position table) are values, shown without
  building anything;
- names with a library prefix (``timm:<model>``, ``hf:<id or folder>``,
  ``open_clip:<arch>:<tag>[:visual]``): any fitting model of that library, its facts read
  from the model when it is built. A family registers its prefix with ``register_family``.

The family files of this package (:data:`BUILTIN_FAMILIES`) register when the registry is
first used; third-party packages register through the entry-point group ``any2point.sources``
(an entry point names a module or a callable; loading it must call ``register_source``).
Which model preset a name runs on is decided here too (:func:`source_preset`).
"""
from __future__ import annotations

import difflib
import importlib
import re
from importlib import resources
from dataclasses import dataclass, field
from typing import Callable

from any2point.errors import UnknownSourceError
from any2point.plugins import load_entry_points

__all__ = ["SourceSpec", "SourceFamily", "register_source", "register_family", "list_sources", "list_families",
           "get_source_spec", "create_source", "split_prefix", "source_preset", "BASE_PRESET"]

ENTRY_POINT_GROUP = "any2point.sources"
# the modules of this package that register sources, in registration order (prefixes first)
BUILTIN_FAMILIES = ("vit", "hf", "clip_visual", "imagebind_audio", "tiny", "dinov2_small", "e5_small")


@dataclass(frozen=True)
class SourceSpec:
    """What is known about a named source without building it (shown by ``any2point-sources``)."""

    name: str
    factory: Callable
    family: str
    position: "PositionTable"  # any2point.backbones.base.PositionTable: kind, shape, canvas, patch, cls
    width: int
    depth: int
    heads: int
    origin: str  # where pretrained weights come from
    licence: str
    weights_available: Callable[[], bool] = field(default=lambda: False, compare=False)
    description: str = ""
    caveat: str = ""  # what a user must know about these weights (e.g. fine-tuned, quantised); "" for none

    @property
    def table(self) -> str:
        """The position table in words, rendered from ``position``."""
        return self.position.describe()


@dataclass(frozen=True)
class SourceFamily:
    """A library prefix: ``factory(model: str, pretrained: bool = True, **options)`` builds
    any fitting model of the library named by what follows ``<prefix>:``."""

    prefix: str
    factory: Callable
    library: str
    syntax: str  # e.g. "timm:<model name>"
    accepts: str  # which models fit
    example: str


_REGISTRY: dict[str, SourceSpec] = {}
_FAMILIES: dict[str, SourceFamily] = {}
_loaded_builtin = False


def register_source(name: str, *, family: str, position, width: int, depth: int, heads: int,
                    origin: str, licence: str, weights_available: Callable[[], bool] | None = None,
                    description: str = "", caveat: str = ""):
    """Decorator registering ``factory(pretrained: bool = True, **overrides) -> FrozenSource``.

    ``position`` is the source's ``PositionTable`` (the value its built model reports);
    ``caveat`` says how the weights differ from the model they are named after."""
    from .base import PositionTable

    if not isinstance(position, PositionTable):
        raise TypeError(f"register_source({name!r}): position must be a PositionTable, e.g. "
                        f"PositionTable('2d', (37, 37), canvas=(518, 518), patch=(14, 14), cls=True); "
                        f"got {position!r}")
    if ":" in name:
        raise ValueError(f"register_source({name!r}): ':' is reserved for library prefixes (timm:, hf:, open_clip:)")

    def decorate(factory: Callable) -> Callable:
        if name in _REGISTRY and _REGISTRY[name].factory is not factory:
            raise ValueError(f"a source named {name!r} is already registered (by {_REGISTRY[name].factory.__module__})")
        _REGISTRY[name] = SourceSpec(name=name, factory=factory, family=family, position=position, width=width,
                                     depth=depth, heads=heads, origin=origin, licence=licence,
                                     weights_available=weights_available or (lambda: False),
                                     description=description or (factory.__doc__ or "").strip().split("\n")[0],
                                     caveat=caveat)
        return factory

    return decorate


def register_family(prefix: str, *, library: str, syntax: str, accepts: str, example: str):
    """Decorator registering the factory of the names ``<prefix>:...``."""

    def decorate(factory: Callable) -> Callable:
        if prefix in _FAMILIES and _FAMILIES[prefix].factory is not factory:
            raise ValueError(f"the prefix {prefix!r} is already registered (by {_FAMILIES[prefix].factory.__module__})")
        _FAMILIES[prefix] = SourceFamily(prefix, factory, library, syntax, accepts, example)
        return factory

    return decorate


def _load_all() -> None:
    global _loaded_builtin
    if not _loaded_builtin:
        _loaded_builtin = True
        for module in BUILTIN_FAMILIES:
            importlib.import_module(f"{__package__}.{module}")
    load_entry_points(ENTRY_POINT_GROUP, "source")


def list_sources() -> list[str]:
    """Names of every registered (named) source, sorted."""
    _load_all()
    return sorted(_REGISTRY)


def list_families() -> list[SourceFamily]:
    """The library prefixes, in registration order."""
    _load_all()
    return list(_FAMILIES.values())


def split_prefix(name: str) -> tuple[str, str] | None:
    """``("timm", "vit_small_patch14_dinov2")`` for a prefixed name, None for a named source."""
    prefix, sep, rest = name.partition(":")
    return (prefix, rest) if sep else None


BASE_PRESET = "base"  # conf/model/base.yaml: the model settings of a source without a preset of its own
# a preset is a file of one folder: a name that could leave it (``/``, ``..``) or names a library model never has one
_PRESET_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")


def source_preset(name: str) -> str:
    """The model preset a source name runs on: ``conf/model/<name>.yaml`` when the source has
    one (a named source's ScanObjectNN settings of the release), else :data:`BASE_PRESET`.

    The one rule for every path: :func:`any2point.create_model`, and the training app, whose
    defaults list selects ``model: ${a2p_preset:${source}}`` and whose ``source.name=...``
    overrides choose ``model=`` by it (:mod:`any2point.hydra_app`). A library name
    (``timm:``, ``hf:org/name``, ``open_clip:...``) or any name with ``/`` has no preset."""
    if split_prefix(name) is not None or not _PRESET_NAME.fullmatch(name) or name == BASE_PRESET:
        return BASE_PRESET
    return name if resources.files("any2point.conf").joinpath("model", f"{name}.yaml").is_file() else BASE_PRESET


def _family(name: str) -> tuple[SourceFamily, str]:
    prefix, rest = split_prefix(name)
    if prefix not in _FAMILIES:
        raise UnknownSourceError(f"unknown source prefix {prefix!r} in {name!r}; prefixes: "
                                 + ", ".join(f.syntax for f in _FAMILIES.values()))
    if not rest:
        raise UnknownSourceError(f"{name!r} names no model after the prefix; expected {_FAMILIES[prefix].syntax}, "
                                 f"e.g. {_FAMILIES[prefix].example}")
    return _FAMILIES[prefix], rest


def get_source_spec(name: str) -> SourceSpec:
    """The facts of a named source (a prefixed name has none before it is built)."""
    _load_all()
    if split_prefix(name) is not None:
        family, _ = _family(name)
        raise UnknownSourceError(f"{name!r} is built by name from {family.library}: its sizes and position table "
                                 f"are read from the model when it is built (any2point.create_source)")
    if name not in _REGISTRY:
        close = difflib.get_close_matches(name, list(_REGISTRY), n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        prefixes = ", ".join(f.syntax for f in _FAMILIES.values())
        raise UnknownSourceError(f"unknown source {name!r}.{hint} Registered sources: {', '.join(sorted(_REGISTRY))}; "
                                 f"or any library model by name: {prefixes}")
    return _REGISTRY[name]


def create_source(name: str, pretrained: bool = True, **overrides):
    """Build the source ``name`` (a registered name, or ``timm:``/``hf:``/``open_clip:`` and a
    model of that library) with every parameter frozen (``requires_grad=False``)."""
    _load_all()
    if split_prefix(name) is not None:
        family, model = _family(name)
        source = family.factory(model, pretrained=pretrained, **overrides)
    else:
        source = get_source_spec(name).factory(pretrained=pretrained, **overrides)
    source.freeze()
    return source
