"""The bottleneck baseline: a bottleneck beside every frozen block's FFN and nothing else.

It is the guided adapter's first part alone (docs/method.md#guided-adapter, step 1), with the
adapter's own settings (``model.adapter.rank``, ``scale``, ``dropout``), so that it measures what
the view-guided aggregation adds. Before issue 27 it had two spellings, ``peft=adapter`` and
``peft=any2point model.adapter.guided=false``; checkpoints recorded under either load as it
(any2point.checkpoint)."""
from __future__ import annotations

import torch
from torch import nn

from any2point.adapters import Bottleneck

from .adapters import Any2PointMethod
from .base import PeftMethod
from .registry import RENAMED_METHODS, get_peft_method, register_peft_method

__all__ = ["BottleneckMethod", "recorded_method"]


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


def recorded_method(name: str, guided: bool = True) -> str:
    """The method a run or checkpoint recorded as ``peft=name`` with ``model.adapter.guided=guided``
    (a setting removed in issue 27) is today. ``guided=false`` turned every method built on
    Any2Point's into bottlenecks alone: for ``any2point`` that is ``bottleneck``; a control built
    on it has no such variant now (ValueError)."""
    name = RENAMED_METHODS.get(name, name)
    if guided is not False or name == "bottleneck":
        return name
    if name == "any2point":
        return "bottleneck"
    try:
        method = get_peft_method(name).method
    except ValueError:
        return name  # an unknown method: refused by name where it is built
    if issubclass(method, Any2PointMethod):
        raise ValueError(f"model.adapter.guided=false with peft={name} (bottlenecks only, a setting removed in issue "
                         f"27) has no equivalent method")
    return name  # the setting did nothing for this method
