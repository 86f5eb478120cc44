"""The old path of the source registry, kept for third-party plug-ins that register through the
``any2point.sources`` entry point with ``from any2point.registry import register_source``.
The registry lives in :mod:`any2point.backbones.registry`; new code imports
``any2point.register_source`` (or ``any2point.backbones.registry``)."""
from .backbones.registry import register_family, register_source

__all__ = ["register_source", "register_family"]
