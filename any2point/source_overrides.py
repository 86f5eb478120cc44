"""Command-line overrides for a source named by library (``source.name=timm:...``).

The training config picks the model preset by the *source group option*
(``optional model: ${source}`` in conf/train.yaml), which a ``source.name=...`` override does
not change: ``any2point-train source.name=timm:vit_small_patch14_dinov2`` would still compose
the default option's preset (MiniLM's 1D settings) under a 2D ViT. A library model has no
preset, so such a command runs on ``model/base.yaml``: this adds ``model=base`` unless the
command chooses the model preset itself.
"""
from __future__ import annotations

__all__ = ["names_library_source", "route_source_overrides"]


def names_library_source(override: str) -> bool:
    """Whether ``override`` sets ``source.name`` to a prefixed name (any of a sweep's values)."""
    key, sep, value = override.partition("=")
    return bool(sep) and key.lstrip("+~") == "source.name" and ":" in value


def _chooses(overrides: list[str], group: str) -> bool:
    return any(o.partition("=")[0].lstrip("+~") == group for o in overrides if "=" in o)


def route_source_overrides(overrides: list[str]) -> list[str]:
    """``overrides`` plus ``model=base`` when they name a library source and choose no preset."""
    where = [i for i, o in enumerate(overrides) if names_library_source(o)]
    if where and not _chooses(overrides, "model"):
        at = where[-1] + 1  # beside it: flags such as --cfg job may follow, and argparse wants overrides together
        return [*overrides[:at], "model=base", *overrides[at:]]
    return list(overrides)
