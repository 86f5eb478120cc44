"""Methods that put adapters in every frozen block: Any2Point's guided adapters, and plain
bottleneck adapters (the same adapters without the view-guided aggregation)."""
from __future__ import annotations

import dataclasses

import torch
from torch import nn

from any2point.adapters import GuidedAdapters

from .base import PeftMethod
from .registry import register_peft_method

__all__ = ["Any2PointMethod", "BottleneckAdapterMethod"]


@register_peft_method("any2point")
class Any2PointMethod(PeftMethod):
    """Any2Point: guided adapters (bottleneck + view-guided aggregation); tokenizer, cls, final norm and head train."""

    guided = True

    def inject(self, model) -> None:
        config = model.config.adapter
        if not self.guided:
            config = dataclasses.replace(config, guided=False)
        model.adapters = GuidedAdapters(model.source.width, model.source.depth, model.config.projection.views,
                                        config, canvas=model.source.position.canvas,
                                        length=getattr(model.views, "length", None))

    def run_block(self, model, i: int, block: nn.Module, x: torch.Tensor, context) -> torch.Tensor:
        x = block(x, model.adapters.ffn_hook(i))
        if context.cells is None:  # plain bottleneck adapters: nothing to aggregate
            return x
        points = model.adapters.aggregate(i, x[:, 1:], context.cells)
        return torch.cat([x[:, :1], points], dim=1)


@register_peft_method("adapter")
class BottleneckAdapterMethod(Any2PointMethod):
    """Baseline: plain bottleneck adapters in every block (no view-guided aggregation)."""

    guided = False
