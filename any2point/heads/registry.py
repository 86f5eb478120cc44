"""The head registry: ``model.head.name`` -> the :class:`Head` subclass that builds it.

Built-in heads register when ``any2point.heads`` is imported; another package registers its
own with :func:`register_head` (before the model is built).
"""
from __future__ import annotations

import difflib
from typing import Callable

from ..errors import ConfigError
from .base import Head
from .config import HeadConfig

__all__ = ["register_head", "list_heads", "get_head", "create_head"]

_REGISTRY: dict[str, type[Head]] = {}


def register_head(name: str) -> Callable[[type[Head]], type[Head]]:
    """Class decorator: ``model.head.name=<name>`` builds this :class:`Head` subclass as
    ``cls(config, width=<source width>, num_classes=<training classes>)``."""

    def decorate(cls: type[Head]) -> type[Head]:
        if not (isinstance(cls, type) and issubclass(cls, Head)):
            raise TypeError(f"head {name!r}: {cls!r} is not a subclass of any2point.heads.Head")
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise ValueError(f"a head named {name!r} is already registered (by {_REGISTRY[name].__module__})")
        _REGISTRY[name] = cls
        return cls

    return decorate


def list_heads() -> list[str]:
    return sorted(_REGISTRY)


def get_head(name: str) -> type[Head]:
    """The head class registered as ``name``, or a ConfigError listing the registered ones."""
    cls = _REGISTRY.get(name)
    if cls is None:
        close = difflib.get_close_matches(name, list(_REGISTRY), n=1)
        raise ConfigError(f"unknown model.head.name {name!r}{f' (did you mean {close[0]!r}?)' if close else ''}; "
                          f"registered heads: {', '.join(list_heads())}")
    return cls


def create_head(config: HeadConfig, width: int, num_classes: int) -> Head:
    """The head ``config.name`` on tokens of ``width`` with ``num_classes`` training classes."""
    return get_head(config.name)(config, width=width, num_classes=num_classes)
