"""Methods that put adapters in every frozen block: Any2Point's guided adapters, and plain
bottleneck adapters (the same adapters without the view-guided aggregation)."""
from __future__ import annotations

import dataclasses

import torch
from torch import nn

from any2point.adapters import GuidedAdapters

from .base import PeftMethod
from .registry import register_peft_method

__all__ = ["Any2PointMethod", "BottleneckAdapterMethod", "aggregate_points"]


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
        hook = model.adapters.ffn_hook(i)
        if context.cells is None:  # plain bottleneck adapters: nothing to aggregate
            return block(x, hook)
        if getattr(block, "post_norm", False) and model.adapters.config.seam == "before_norm":
            # post-LN: the aggregation joins the residual sum, the block's output LayerNorm normalises both
            return block.output_norm(aggregate_points(model, i, block.residual(x, hook), context))
        return aggregate_points(model, i, block(x, hook), context)


def aggregate_points(model, i: int, x: torch.Tensor, context) -> torch.Tensor:
    """Block ``i``'s guided aggregation on the point tokens of ``x`` (B, 1 + G, D); the cls token passes."""
    points = model.adapters.aggregate(i, x[:, 1:], context.cells)
    return torch.cat([x[:, :1], points], dim=1)


@register_peft_method("adapter")
class BottleneckAdapterMethod(Any2PointMethod):
    """Baseline: plain bottleneck adapters in every block (no view-guided aggregation)."""

    guided = False
