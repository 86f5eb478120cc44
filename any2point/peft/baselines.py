"""The two ends of the range: a linear probe (only the head trains) and full fine-tuning."""
from __future__ import annotations

from typing import Iterator

from torch import nn

from .base import PeftMethod
from .registry import register_peft_method

__all__ = ["LinearProbeMethod", "FullFineTuningMethod"]


@register_peft_method("linear")
class LinearProbeMethod(PeftMethod):
    """Baseline: linear probing, only the head trains (tokenizer frozen at its initialisation, position encoding on)."""

    def trainable_parameters(self, model) -> Iterator[nn.Parameter]:
        return model.head.parameters()

    def frozen_modules(self, model) -> list[nn.Module]:
        return [m for m in (model.source, model.tokenizer, model.norm, model.learned_position) if m is not None]


def _copied_source_parameters(source: nn.Module) -> set[int]:
    """ids of the source's final norm and cls token, of which the composition runs its own copies."""
    copied = list(source.final_norm.parameters())
    cls = source.cls_token()
    if cls is not None:
        ptr = cls.untyped_storage().data_ptr()
        copied += [p for p in source.parameters() if p.untyped_storage().data_ptr() == ptr]
    return {id(p) for p in copied}


@register_peft_method("full")
class FullFineTuningMethod(PeftMethod):
    """Baseline: full fine-tuning, everything trains, the source included (no adapters)."""

    def trainable_parameters(self, model) -> Iterator[nn.Parameter]:
        # The composition's own copies of the final norm and cls token train; the source's
        # originals never see a gradient, so they do not count as trainable.
        copied = _copied_source_parameters(model.source)
        return (p for p in model.parameters() if id(p) not in copied)

    def frozen_modules(self, model) -> list[nn.Module]:
        return []
