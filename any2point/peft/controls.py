"""Controls that say what the frozen source brings: the 3D parts alone (``tokenizer_only``),
the method with the source's position table scrambled (``any2point_shuffled_position``), and
the method on a source whose block tensors are each permuted within themselves
(``any2point_shuffled_source``: the fair random transformer, same value scales, no learned
structure).

``peft=any2point_random_source`` (a YAML option, ``source.pretrained=false``) is the other,
weaker random control: the library's initialisation (weights N(0, 0.02), LayerNorm gains 1),
whose blocks stay close to the identity on 3D tokens, so it mostly measures the 3D parts
alone; see docs/controls.md."""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch
from torch import nn

from any2point.backbones.base import FrozenSource

from .adapters import Any2PointConfig, Any2PointMethod
from .base import PeftMethod
from .registry import register_peft_method

__all__ = ["TokenizerOnlyMethod", "ShuffledPositionConfig", "ShuffledPositionMethod", "SourceFacts",
           "ShuffledSourceConfig", "ShuffledSourceMethod", "shuffled_blocks_source"]


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

    # nothing of the source may reach the head: no cls token, no position encoding, no copy of
    # the source's final norm
    unused_parts = frozenset({"cls_token", "cls_position", "norm", "learned_position"})

    def prepare_source(self, source: FrozenSource) -> FrozenSource:
        return SourceFacts(source)

    def frozen_modules(self, model) -> list[nn.Module]:
        return []

    def encode(self, model, points: torch.Tensor) -> torch.Tensor:
        tokens, _ = model.tokenizer(points)
        return torch.cat([tokens.amax(dim=1), tokens.mean(dim=1)], dim=-1)


@dataclass
class ShuffledPositionConfig(Any2PointConfig):
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


@dataclass
class ShuffledSourceConfig(Any2PointConfig):
    name: str = "any2point_shuffled_source"
    seed: int = 0  # seed of the fixed permutations of the block tensors


def shuffled_blocks_source(source: FrozenSource, seed: int) -> FrozenSource:
    """A copy of ``source`` whose block tensors are each permuted within themselves.

    Every floating-point parameter of ``source.blocks`` (attention and FFN weights and biases,
    LayerNorm gains and biases, LayerScale) has its entries shuffled by a permutation drawn
    from a CPU generator seeded with ``seed``, tensor after tensor in ``named_parameters``
    order: the same permutations everywhere for the same source architecture. Each tensor
    keeps its exact multiset of values (its scale, its LayerNorm gain level), its learned
    structure is gone. Everything outside the blocks is the source's own, shared, not copied:
    embeddings and stem, position table, cls token and row, final norm. ``source`` itself is
    left as it was (only the module tree and the block tensors are new)."""
    generator = torch.Generator().manual_seed(seed)
    memo: dict[int, object] = {}
    for p in source.blocks.parameters():
        if p.is_floating_point():
            order = torch.randperm(p.numel(), generator=generator).to(p.device)
            shuffled = p.detach().reshape(-1).index_select(0, order).reshape(p.shape)
            memo[id(p)] = nn.Parameter(shuffled, requires_grad=p.requires_grad)
    for t in [*source.parameters(), *source.buffers()]:
        memo.setdefault(id(t), t)  # outside the blocks (and integer tensors): the same tensor, no copy
    return copy.deepcopy(source, memo)


@register_peft_method("any2point_shuffled_source", ShuffledSourceConfig)
class ShuffledSourceMethod(Any2PointMethod):
    """Control: Any2Point on the source with every block tensor permuted within itself by a fixed seed (values kept)."""

    def prepare_source(self, source: FrozenSource) -> FrozenSource:
        return shuffled_blocks_source(source, self.config.seed)
