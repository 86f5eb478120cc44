"""The source-model registry: names -> factories that build frozen sources.

Family files in ``any2point.backbones`` register their sources on import; third-party
packages register theirs through the entry-point group ``any2point.sources`` (an entry
point names a module or a callable; loading it must call ``register_source``).
"""
from __future__ import annotations

import difflib
import importlib.metadata
import logging
from dataclasses import dataclass, field
from typing import Callable

from .errors import UnknownSourceError

__all__ = ["SourceSpec", "register_source", "list_sources", "get_source_spec", "create_source"]

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "any2point.sources"


@dataclass(frozen=True)
class SourceSpec:
    """What is known about a source without building it (shown by ``any2point-sources``)."""

    name: str
    factory: Callable
    family: str
    position: str  # '1d' or '2d'
    width: int
    depth: int
    heads: int
    table: str  # human description of the position table, e.g. "77 rows", "37x37 (+cls)"
    origin: str  # where pretrained weights come from
    licence: str
    weights_available: Callable[[], bool] = field(default=lambda: False, compare=False)
    description: str = ""


_REGISTRY: dict[str, SourceSpec] = {}
_loaded_builtin = False
_loaded_entry_points = False


def register_source(name: str, *, family: str, position: str, width: int, depth: int, heads: int,
                    table: str, origin: str, licence: str,
                    weights_available: Callable[[], bool] | None = None, description: str = ""):
    """Decorator registering ``factory(pretrained: bool = True, **overrides) -> FrozenSource``."""

    def decorate(factory: Callable) -> Callable:
        if name in _REGISTRY and _REGISTRY[name].factory is not factory:
            raise ValueError(f"a source named {name!r} is already registered (by {_REGISTRY[name].factory.__module__})")
        _REGISTRY[name] = SourceSpec(name=name, factory=factory, family=family, position=position, width=width,
                                     depth=depth, heads=heads, table=table, origin=origin, licence=licence,
                                     weights_available=weights_available or (lambda: False),
                                     description=description or (factory.__doc__ or "").strip().split("\n")[0])
        return factory

    return decorate


def _load_all() -> None:
    global _loaded_builtin, _loaded_entry_points
    if not _loaded_builtin:
        _loaded_builtin = True
        importlib.import_module("any2point.backbones")
    if not _loaded_entry_points:
        _loaded_entry_points = True
        for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
            try:
                obj = ep.load()
                if callable(obj) and not isinstance(obj, type):
                    obj()
            except Exception as exc:  # a broken plug-in must not hide the built-in sources
                log.warning("could not load source plug-in %r (%s): %s", ep.name, ep.value, exc)


def list_sources() -> list[str]:
    """Names of every registered source, sorted."""
    _load_all()
    return sorted(_REGISTRY)


def get_source_spec(name: str) -> SourceSpec:
    _load_all()
    if name not in _REGISTRY:
        close = difflib.get_close_matches(name, list(_REGISTRY), n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise UnknownSourceError(f"unknown source {name!r}.{hint} Registered sources: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name]


def create_source(name: str, pretrained: bool = True, **overrides):
    """Build the source ``name`` with every parameter frozen (``requires_grad=False``)."""
    spec = get_source_spec(name)
    source = spec.factory(pretrained=pretrained, **overrides)
    source.freeze()
    return source
