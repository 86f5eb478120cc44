"""Plug-ins from other packages: the one loader of the entry-point groups any2point reads.

Sources (``any2point.sources``), PEFT methods (``any2point.peft_methods``) and data formats
(``any2point.data_formats``) are extended the same way: an entry point names a module, which
registers on import, or a callable, which registers when called. Each registry reads its group
once per process, on first use.
"""
from __future__ import annotations

import importlib.metadata
import logging

__all__ = ["load_entry_points"]

log = logging.getLogger(__name__)

_loaded: set[str] = set()  # the groups already read


def load_entry_points(group: str, what: str) -> None:
    """Load every entry point of ``group``, once per process. A broken plug-in is logged, never
    fatal: it must not hide the built-in ``what``s (e.g. ``"source"``)."""
    if group in _loaded:
        return
    _loaded.add(group)
    for ep in importlib.metadata.entry_points(group=group):
        try:
            obj = ep.load()
            if callable(obj) and not isinstance(obj, type):
                obj()
        except Exception as exc:
            log.warning("could not load %s plug-in %r (%s): %s", what, ep.name, ep.value, exc)
