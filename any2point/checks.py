"""Refusing a config value by its full key: the helpers the config dataclasses' ``__post_init__`` use.

Every config dataclass sits at one place of the composed config (``TokenizerConfig`` is always
``model.tokenizer``), so each names its keys in full and a bad value stops with one line such
as ``model.adapter.pool='max' is not one of: mean, mean_max``. The apps build every section
once right after composing (:func:`any2point.config.check_train_settings`), before any data
is read; code that builds the dataclasses itself gets the same :class:`ConfigError`.
"""
from __future__ import annotations

import math
from typing import Any, Iterable

from .errors import ConfigError

__all__ = ["one_of", "number", "integer", "optional_integer", "fraction"]


def _show(value: Any) -> str:
    return repr(value) if isinstance(value, str) else str(value)


def one_of(key: str, value: Any, allowed: Iterable[Any]) -> None:
    """``value`` must be one of ``allowed`` (an enum-like setting)."""
    allowed = tuple(allowed)
    if value not in allowed:
        raise ConfigError(f"{key}={_show(value)} is not one of: {', '.join(map(str, allowed))}")


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def number(key: str, value: Any, *, above: float | None = None, at_least: float | None = None,
           below: float | None = None, at_most: float | None = None) -> None:
    """``value`` must be a finite number within the bounds given (``above``/``below`` exclusive)."""
    rules = [f"> {above}" if above is not None else None, f">= {at_least}" if at_least is not None else None,
             f"< {below}" if below is not None else None, f"<= {at_most}" if at_most is not None else None]
    ok = _is_number(value) and (above is None or value > above) and (at_least is None or value >= at_least) \
        and (below is None or value < below) and (at_most is None or value <= at_most)
    if not ok:
        bounds = " and ".join(r for r in rules if r)
        raise ConfigError(f"{key}={_show(value)} must be a finite number" + (f" {bounds}" if bounds else ""))


def integer(key: str, value: Any, at_least: int) -> None:
    """``value`` must be an integer >= ``at_least``."""
    if not (isinstance(value, int) and not isinstance(value, bool) and value >= at_least):
        raise ConfigError(f"{key}={_show(value)} must be an integer >= {at_least}")


def optional_integer(key: str, value: Any, at_least: int, null_means: str) -> None:
    """``value`` must be null (saying ``null_means``) or an integer >= ``at_least``."""
    if value is not None and not (isinstance(value, int) and not isinstance(value, bool) and value >= at_least):
        raise ConfigError(f"{key}={_show(value)} must be null ({null_means}) or an integer >= {at_least}")


def fraction(key: str, value: Any) -> None:
    """``value`` must be in [0, 1) (a dropout rate, a share of the data)."""
    number(key, value, at_least=0, below=1)
