"""Which parts of the composition train, per PEFT method (the ``peft`` config group).

Trainability is decided structurally, by module, never by matching parameter names:

- ``any2point``: tokenizer, cls token and position, guided adapters, final norm, head.
- ``adapter``: the same with plain bottleneck adapters (no view-guided aggregation).
- ``linear``: only the head, on the frozen pipeline (tokenizer frozen at initialisation).
- ``full``: everything, the source included.
"""
from __future__ import annotations

from dataclasses import dataclass

from torch import nn

__all__ = ["PeftConfig", "PEFT_METHODS", "apply_peft", "frozen_modules"]

PEFT_METHODS = ("any2point", "adapter", "linear", "full")


@dataclass
class PeftConfig:
    name: str = "any2point"


def frozen_modules(model: nn.Module) -> list[nn.Module]:
    """The submodules whose parameters do not train (and stay in eval mode)."""
    name = model.peft_config.name
    if name == "full":
        return []
    if name == "linear":
        return [model.source, model.tokenizer, model.norm] + (
            [model.learned_position] if model.learned_position is not None else [])
    return [model.source]


def apply_peft(model: nn.Module, config: PeftConfig) -> None:
    if config.name not in PEFT_METHODS:
        raise ValueError(f"unknown peft method {config.name!r}; choose one of {', '.join(PEFT_METHODS)}")
    for p in model.parameters():
        p.requires_grad_(True)
    for module in frozen_modules(model):
        for p in module.parameters():
            p.requires_grad_(False)
    if config.name == "linear":
        model.cls_token.requires_grad_(False)
        model.cls_position.requires_grad_(False)
