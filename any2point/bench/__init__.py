"""Benchmarks run as ``python -m any2point.bench <subcommand> [--json] [--quick] [--threads N] [--device D]``.

Each subcommand is one module of this package, found by name (no list to edit). A
subcommand module defines:

- ``HELP``: one line for ``--help``;
- ``add_arguments(parser)``: its own options (the common ones are added for it);
- ``run(args) -> dict``: the measurements, JSON-serialisable;
- optionally ``report(result) -> str``: the human-readable form (default: indented JSON).

``common`` (shared timing helpers) and ``tensor_memory`` (the CPU peak-memory counter) are
not subcommands.
"""
from __future__ import annotations

import importlib
import pkgutil
from types import ModuleType

__all__ = ["subcommand_names", "load_subcommand"]

_NOT_SUBCOMMANDS = {"common", "tensor_memory", "__main__"}


def subcommand_names() -> list[str]:
    """Names of the subcommand modules in this package, sorted."""
    return sorted(m.name for m in pkgutil.iter_modules(__path__)
                  if not m.name.startswith("_") and m.name not in _NOT_SUBCOMMANDS)


def load_subcommand(name: str) -> ModuleType:
    module = importlib.import_module(f"{__name__}.{name}")
    missing = [attr for attr in ("HELP", "add_arguments", "run") if not hasattr(module, attr)]
    if missing:
        raise TypeError(f"benchmark module {module.__name__} is not a subcommand: it lacks {', '.join(missing)}")
    return module
