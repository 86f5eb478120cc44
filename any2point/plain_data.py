"""Dataclasses from plain JSON data, strictly: what a received file says is checked, never run.

:func:`from_plain` builds a (nested) dataclass from ``json.loads`` output: every field must be
present with a value of its annotated type, and a key the dataclass does not have is refused
by name. Nothing is interpolated or resolved (no OmegaConf), so a string such as
``${oc.env:HOME}`` is only a string; :func:`refuse_interpolations` refuses such strings where
the data would later meet OmegaConf.
"""
from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, Union

__all__ = ["PlainDataError", "from_plain", "check_type", "refuse_interpolations"]


class PlainDataError(ValueError):
    """``where`` (a dotted key) holds something else than expected; the message says what."""


def _name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def check_type(value: Any, tp: Any, where: str) -> Any:
    """``value`` if it is plain data of type ``tp`` (int, float, bool, str, None, Any, list[X],
    tuple[X, ...], dict[str, X], X | Y, a dataclass); a dataclass type returns the instance."""
    if tp is Any or tp is object:
        return value
    if dataclasses.is_dataclass(tp):
        return from_plain(tp, value, where)
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (Union, types.UnionType):
        for option in args:
            try:
                return check_type(value, option, where)
            except PlainDataError:
                continue
        raise PlainDataError(f"{where}: expected {' or '.join(_name(a) for a in args)}, got {value!r:.80}")
    if tp is type(None):
        if value is None:
            return None
    elif tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif tp is str:
        if isinstance(value, str):
            return value
    elif origin in (list, tuple) or tp in (list, tuple):
        if isinstance(value, list):
            item = args[0] if args else Any
            return [check_type(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
    elif origin is dict or tp is dict:
        if isinstance(value, dict):
            item = args[1] if len(args) == 2 else Any
            out = {}
            for k, v in value.items():
                if not isinstance(k, str):
                    raise PlainDataError(f"{where}: keys must be strings, got {k!r:.40}")
                out[k] = check_type(v, item, f"{where}.{k}")
            return out
    else:
        raise TypeError(f"{where}: no plain-data check for type {tp!r}")
    raise PlainDataError(f"{where}: expected {_name(tp)}, got {type(value).__name__} {value!r:.80}")


def from_plain(cls: type, data: Any, where: str) -> Any:
    """An instance of dataclass ``cls`` from a dict holding exactly its fields."""
    if not isinstance(data, dict):
        raise PlainDataError(f"{where}: expected an object with the fields of {cls.__name__}, got "
                             f"{type(data).__name__}")
    hints = typing.get_type_hints(cls)
    fields = [f.name for f in dataclasses.fields(cls) if f.init]
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise PlainDataError(f"{where}: unknown keys {unknown} (known: {fields})")
    missing = [f for f in fields if f not in data]
    if missing:
        raise PlainDataError(f"{where}: missing keys {missing}")
    return cls(**{f: check_type(data[f], hints[f], f"{where}.{f}") for f in fields})


def refuse_interpolations(data: Any, where: str) -> None:
    """Refuse any string holding ``${`` (an OmegaConf interpolation such as ``${oc.env:SECRET}``):
    received data is data, and it may later pass through OmegaConf."""
    if isinstance(data, str):
        if "${" in data:
            raise PlainDataError(f"{where}: {data!r:.80} looks like a config interpolation; a received file may "
                                 f"not ask for values to be resolved")
    elif isinstance(data, dict):
        for k, v in data.items():
            refuse_interpolations(k, f"{where} (key)")
            refuse_interpolations(v, f"{where}.{k}")
    elif isinstance(data, list):
        for i, v in enumerate(data):
            refuse_interpolations(v, f"{where}[{i}]")
