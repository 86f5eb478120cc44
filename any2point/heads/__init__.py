"""Heads: the last part of the composition, a registered unit chosen by ``model.head.name``.

Built in: ``classifier`` (an MLP, one logit per training class) and ``contrastive`` (the 3D
feature projected into a frozen text encoder's space and scored against class texts: zero-shot
classes, open-vocabulary labels, text-to-shape retrieval). See :mod:`.registry` to add one.
"""
from __future__ import annotations

from .base import Head, pool_tokens, pooled_width
from .config import DEFAULT_TEMPLATES, HeadConfig
from .registry import create_head, get_head, list_heads, register_head

# the built-in heads register on import
from .classifier import ClassifierHead  # noqa: E402  isort: skip
from .contrastive import ContrastiveHead, check_class_names  # noqa: E402  isort: skip

__all__ = ["Head", "HeadConfig", "DEFAULT_TEMPLATES", "register_head", "list_heads", "get_head", "create_head", "pool_tokens",
           "pooled_width", "ClassifierHead", "ContrastiveHead", "check_class_names"]
