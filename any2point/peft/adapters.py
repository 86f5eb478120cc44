"""Any2Point's method: a guided adapter in every frozen block (docs/method.md#guided-adapter).

The adapters live in ``model.adapters`` (:class:`~any2point.adapters.GuidedAdapters`); the cells
and voxels of a forward pass are this method's per-pass state (``context.state``, a
:class:`~any2point.adapters.CellAssignment`). Tools that need the adapters (benchmarks,
pictures) read them with :func:`guided_adapters`, None for every other method."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import torch
from torch import nn

from any2point.adapters import CellAssignment, GuidedAdapters

from .base import PeftConfig, PeftMethod, parameters_outside_source
from .registry import register_peft_method

__all__ = ["Any2PointConfig", "Any2PointMethod", "aggregate_points", "guided_adapters", "source_norm_parameters"]


@dataclass
class Any2PointConfig(PeftConfig):
    name: str = "any2point"
    # Also train the frozen source's LayerNorm gains and biases (0.05 % of MiniLM), as studies of
    # frozen pretrained transformers on other modalities do; every other source tensor stays frozen.
    # Off in the paper's method; a hypothesis of docs/results/source-controls.md.
    source_norms: bool = False


def source_norm_parameters(source: nn.Module) -> Iterator[nn.Parameter]:
    """The gains and biases of every LayerNorm inside the source (stem and blocks)."""
    for module in source.modules():
        if isinstance(module, nn.LayerNorm):
            yield from module.parameters()


@register_peft_method("any2point", Any2PointConfig)
class Any2PointMethod(PeftMethod):
    """Any2Point: guided adapters (bottleneck + view-guided aggregation); tokenizer, cls, final norm and head train."""

    def trainable_parameters(self, model) -> Iterator[nn.Parameter]:
        yield from parameters_outside_source(model)
        if self.config.source_norms:
            yield from source_norm_parameters(model.source)

    def inject(self, model) -> None:
        model.adapters = GuidedAdapters(model.source.width, model.source.depth, model.config.projection.views,
                                        model.config.adapter, canvas=model.source.position.canvas,
                                        length=getattr(model.views, "length", None))

    def initialised_parts(self, model) -> list[nn.Module]:
        return [model.adapters]

    def pass_state(self, model, where, centres: torch.Tensor) -> CellAssignment:
        """The cells, same-cell pairs and voxels every block's adapter shares."""
        return model.adapters.assign(where, centres)

    def run_block(self, model, i: int, block: nn.Module, x: torch.Tensor, context) -> torch.Tensor:
        bottleneck = model.adapters.blocks[i].bottleneck  # the block's FFN hook
        if getattr(block, "post_norm", False) and model.adapters.config.seam == "before_norm":
            # post-LN: the aggregation joins the residual sum, the block's output LayerNorm normalises both
            return block.output_norm(aggregate_points(model, i, block.residual(x, bottleneck), context))
        return aggregate_points(model, i, block(x, bottleneck), context)


def aggregate_points(model, i: int, x: torch.Tensor, context) -> torch.Tensor:
    """Block ``i``'s guided aggregation on the point tokens of ``x`` (B, 1 + G, D); the cls token passes."""
    points = model.adapters.aggregate(i, x[:, 1:], context.state)
    return torch.cat([x[:, :1], points], dim=1)


def guided_adapters(model) -> GuidedAdapters | None:
    """The guided adapters of ``model`` (peft=any2point and the controls built on it), None for a
    model of any other method."""
    if not isinstance(model.peft_method, Any2PointMethod):
        return None
    return model.adapters
