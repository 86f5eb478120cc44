"""Controls that say what the frozen source brings (issue 17): the 3D parts alone, and the
method with the source's position table scrambled. (The randomly initialised source is the
``peft=any2point_random_source`` option: the any2point method on ``source.pretrained=false``.)"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from any2point.backbones.base import FrozenSource

from .adapters import Any2PointMethod
from .base import PeftConfig, PeftMethod
from .registry import register_peft_method

__all__ = ["TokenizerOnlyMethod", "ShuffledPositionConfig", "ShuffledPositionMethod", "SourceFacts"]


class SourceFacts(FrozenSource):
    """A source reduced to its facts (name, width, position kind, weights tag): no blocks, no
    tensors. Checkpoints still record which source the run was configured with."""

    def __init__(self, source: FrozenSource):
        super().__init__(source.name, source.width, source.heads, source.position, nn.ModuleList(), nn.Identity(),
                         source.weights_tag)

    def position_table(self) -> torch.Tensor:
        raise RuntimeError(f"{self.name}: the source was dropped (peft=tokenizer_only), it has no position table")


@register_peft_method("tokenizer_only")
class TokenizerOnlyMethod(PeftMethod):
    """Control: no source at all; the tokenizer's tokens, max + mean pooled, into the same head; everything trains."""

    def prepare_source(self, source: FrozenSource) -> FrozenSource:
        return SourceFacts(source)

    def inject(self, model) -> None:
        # nothing of the source may reach the head: no cls token, no position encoding, no
        # copy of the source's final norm
        model.cls_token = model.cls_position = None
        model.norm = model.learned_position = None

    def frozen_modules(self, model) -> list[nn.Module]:
        return []

    def encode(self, model, points: torch.Tensor) -> torch.Tensor:
        tokens, _ = model.tokenizer(points)
        return torch.cat([tokens.amax(dim=1), tokens.mean(dim=1)], dim=-1)


@dataclass
class ShuffledPositionConfig(PeftConfig):
    name: str = "any2point_shuffled_position"
    seed: int = 0  # seed of the fixed permutation of the position table


def position_permutation(count: int, seed: int) -> torch.Tensor:
    """The fixed permutation of ``count`` table entries for ``seed`` (CPU generator: the same everywhere)."""
    return torch.randperm(count, generator=torch.Generator().manual_seed(seed))


@register_peft_method("any2point_shuffled_position", ShuffledPositionConfig)
class ShuffledPositionMethod(Any2PointMethod):
    """Control: Any2Point with the source's position rows (1D) or grid cells (2D) permuted by a fixed seed."""

    def inject(self, model) -> None:
        super().inject(model)
        count = math.prod(model.source.position.shape)
        model.register_buffer("position_permutation", position_permutation(count, self.config.seed), persistent=False)

    def position_table(self, model) -> torch.Tensor:
        table = model.source.position_table()
        flat = table.reshape(-1, table.shape[-1])
        return flat.index_select(0, model.position_permutation.to(table.device)).reshape(table.shape)
