"""The bottleneck baseline: a bottleneck beside every frozen block's FFN and nothing else.

It is the guided adapter's first part alone (docs/method.md#guided-adapter, step 1), with the
adapter's own settings (``model.adapter.rank``, ``scale``, ``dropout``), so that it measures what
the view-guided aggregation adds. Before issue 27 it had two spellings, ``peft=adapter`` and
``peft=any2point model.adapter.guided=false``; checkpoints recorded under either load as it
(any2point.recorded reads such records as today's settings)."""
from __future__ import annotations

import torch
from torch import nn

from any2point.adapters import Bottleneck

from .base import PeftMethod
from .registry import register_peft_method

__all__ = ["BottleneckMethod"]


@register_peft_method("bottleneck")
class BottleneckMethod(PeftMethod):
    """Baseline: a bottleneck beside each block's FFN, no aggregation; tokenizer, cls, final norm and head train."""

    def inject(self, model) -> None:
        settings, source = model.config.adapter, model.source
        model.bottlenecks = nn.ModuleList(Bottleneck(source.width, settings.rank, settings.scale, settings.dropout)
                                          for _ in range(source.depth))

    def initialised_parts(self, model) -> list[nn.Module]:
        return [model.bottlenecks]

    def run_block(self, model, i: int, block: nn.Module, x: torch.Tensor, context) -> torch.Tensor:
        return block(x, model.bottlenecks[i])
