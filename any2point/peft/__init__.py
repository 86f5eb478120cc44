"""PEFT methods: registered units, each a config dataclass plus a :class:`PeftMethod` that
injects its modules, names what trains and, where needed, wraps the blocks.

Built in: ``any2point``, ``bottleneck``, ``lora``, ``prompt``, ``linear``, ``full`` and the
controls ``tokenizer_only``, ``any2point_shuffled_position`` and ``any2point_shuffled_source``.
Other packages add methods through the entry-point group ``any2point.peft_methods`` (see
:mod:`.registry`).
"""
from __future__ import annotations

from .base import OPTIONAL_PARTS, PeftConfig, PeftMethod, parameters_outside_source
from .registry import (ENTRY_POINT_GROUP, REMOVED_SETTINGS, RENAMED_METHODS, PeftMethodSpec, create_peft_method,
                       get_peft_method, list_peft_methods, load_peft_methods, peft_config, refuse_removed_setting,
                       refuse_renamed_method, register_peft_method)

# the built-in methods register on import
from . import adapters, baselines, bottleneck, controls, prompt  # noqa: E402,F401  isort: skip
from .adapters import Any2PointConfig, guided_adapters  # noqa: E402  isort: skip
from .lora import LoraPeftConfig, lora_layers  # noqa: E402  isort: skip
from .prompt import PromptPeftConfig  # noqa: E402  isort: skip
from .controls import ShuffledPositionConfig, ShuffledSourceConfig  # noqa: E402  isort: skip

__all__ = ["Any2PointConfig", "PeftConfig", "PeftMethod", "PeftMethodSpec", "register_peft_method", "list_peft_methods",
           "get_peft_method", "peft_config", "create_peft_method", "load_peft_methods", "parameters_outside_source",
           "lora_layers", "LoraPeftConfig", "PromptPeftConfig", "ShuffledPositionConfig", "ShuffledSourceConfig",
           "ENTRY_POINT_GROUP", "OPTIONAL_PARTS", "guided_adapters", "RENAMED_METHODS", "REMOVED_SETTINGS",
           "refuse_renamed_method", "refuse_removed_setting"]
