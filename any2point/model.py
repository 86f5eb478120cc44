"""The Any2Point composition: tokenizer -> virtual-projection PE -> frozen source blocks with
adapters -> trainable final norm -> head.

    points (B, N, 3)
      -> tokenizer: tokens (B, G, D), centres (B, G, 3)
      -> per-view positions of the centres (once) -> PE from the source's frozen table
      -> [cls] + tokens -> source stem -> L frozen blocks, each with its adapter
      -> final norm -> pooled as the head asks (concat(max over point tokens, cls) by default)
      -> head (a registered unit, any2point.heads) -> logits (B, C)

Geometry (per-view positions, cells, voxels) is computed once per forward pass and handed
down as immutable records; no block recomputes it.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, Mapping

import torch
from torch import nn

from any2point.adapters import AdapterConfig, CellAssignment
from any2point.backbones.base import FrozenSource
from any2point.projections import LearnedPositionEncoding, ProjectionConfig, VirtualProjection

from . import checks
from .errors import ConfigError
from .heads import ClassifierHead, HeadConfig, create_head
from .init import INIT_SCHEMES, initialise
from .peft import PeftConfig, create_peft_method
from .recompute import run_maybe_recomputed
from .tokenizer import PointTokenizer, TokenizerConfig

__all__ = ["HeadConfig", "ModelConfig", "Any2PointModel", "ClassifierHead"]


CLS_CHOICES = ("source", "random")  # ModelConfig.cls_token / cls_position


@dataclass
class ModelConfig:
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    projection: ProjectionConfig = field(default_factory=ProjectionConfig)
    adapter: AdapterConfig = field(default_factory=AdapterConfig)
    head: HeadConfig = field(default_factory=HeadConfig)
    # initialisation of the trainable parts (any2point.init): torch | scan | modelnet (the release's per dataset)
    init: str = "torch"
    # source: the source's cls token / cls position where it has one, else N(0, 0.02); random: N(0, 0.02)
    cls_token: str = "source"
    cls_position: str = "source"
    # run the frozen source's own dropout / drop-path in training (weights stay frozen); the rates
    # are the source's, set at creation (source.options, e.g. attn_drop_rate, drop_path_rate)
    source_dropout: bool = False

    def __post_init__(self) -> None:  # each section checked its own values when it was built
        checks.one_of("model.init", self.init, INIT_SCHEMES)
        checks.one_of("model.cls_token", self.cls_token, CLS_CHOICES)
        checks.one_of("model.cls_position", self.cls_position, CLS_CHOICES)


@dataclass(frozen=True)
class ForwardContext:
    """What one forward pass computes once and every block reads."""

    position: torch.Tensor | None  # (B, 1 + G, D) cls position + token PE, or None
    cells: CellAssignment | None


class Any2PointModel(nn.Module):
    def __init__(self, source: FrozenSource, num_classes: int, config: ModelConfig | None = None,
                 peft: PeftConfig | str | Mapping[str, Any] | None = None):
        super().__init__()
        config = config or ModelConfig()
        # the PEFT method (any2point.peft): prepares the source, injects its modules, names
        # what trains and runs the blocks; the model never branches on its name
        self.peft_method = create_peft_method(peft)
        self.config, self.peft_config, self.num_classes = config, self.peft_method.config, num_classes
        source = self.peft_method.prepare_source(source)
        D = source.width  # the config's values were checked when it was built (ModelConfig.__post_init__)
        self.source = source
        self.tokenizer = PointTokenizer(D, config.tokenizer)
        self.views = VirtualProjection(source.position, config.projection)
        self.learned_position = (LearnedPositionEncoding(D) if config.projection.kind == "learned" else None)

        cls = source.cls_token() if config.cls_token == "source" else None
        self.cls_token = nn.Parameter(cls.detach().clone() if cls is not None else torch.randn(D) * 0.02)
        cls_pos = source.cls_position() if config.cls_position == "source" else None
        self.cls_position = nn.Parameter(cls_pos.detach().clone() if cls_pos is not None else torch.randn(D) * 0.02)

        # The final norm trains: a copy of the source's own (or a fresh LayerNorm for post-LN sources).
        has_norm = any(True for _ in source.final_norm.parameters())
        self.norm = copy.deepcopy(source.final_norm) if has_norm else nn.LayerNorm(D)
        self.adapters = self.prompts = None  # set by the methods that use them
        self.peft_method.inject(self)  # before the head: a seed gives the same adapters as always
        self.head = create_head(config.head, D, num_classes)
        if self.peft_method.encode is not None and self.head.in_features != 2 * D:
            raise ConfigError(f"model.head.pool={config.head.pool} pools the source's tokens, which peft="
                              f"{self.peft_config.name} does not run; use model.head.pool=max_cls")
        initialise(self, config.init)
        self.peft_method.mark_trainable(self)
        self.activation_checkpointing = False

    @property
    def activation_checkpointing(self) -> bool:
        """Recompute activations in backward instead of storing them: each tokenizer stage's
        grouped features (and, within that recomputation, each of the stage's residual blocks)
        and each block with its adapter; extra forwards of those parts for most of the step's
        activation memory; BatchNorm statistics are updated once."""
        return self._activation_checkpointing

    @activation_checkpointing.setter
    def activation_checkpointing(self, on: bool) -> None:
        self._activation_checkpointing = bool(on)
        for stage in self.tokenizer.stages:
            stage.activation_checkpointing = bool(on)

    def train(self, mode: bool = True) -> "Any2PointModel":
        """Frozen parts stay in eval mode (their BatchNorm statistics and dropout never change),
        except the source's own dropout / drop-path when ``model.source_dropout`` is on: a source
        has no running statistics, so its training mode only switches those on."""
        super().train(mode)
        for module in self.peft_method.frozen_modules(self):
            module.eval()
        if self.config.source_dropout:
            self.source.train(mode)
        for module in self.peft_method.trained_inside_frozen(self):  # e.g. LoRA layers: their dropout
            module.train(mode)
        return self

    # -- the three steps of forward, separately callable for tests and benchmarks --------------

    def embed(self, points: torch.Tensor) -> tuple[torch.Tensor, ForwardContext]:
        """Points -> input sequence (B, 1 + G, D) for the blocks, and the per-pass context."""
        tokens, centres = self.tokenizer(points)
        # the sequence (and so the blocks' residual stream) in the parameters' dtype: under autocast
        # the bf16 tokens join float32 positions, as a timm ViT's patches join its pos_embed
        dtype = torch.promote_types(tokens.dtype, self.cls_token.dtype)
        where = self.views.positions(centres)
        inject = self.config.projection.inject
        position = None
        if inject != "none":
            if self.learned_position is not None:
                pe = self.learned_position(centres.to(tokens.dtype))
            else:
                pe = self.views.encode(self.position_table(), where)
            cls_pos = self.cls_position.to(pe.dtype).expand(pe.shape[0], 1, -1)
            position = torch.cat([cls_pos, pe], dim=1).to(dtype)
        cells = self.adapters.assign(where, centres) if self.adapters is not None else None
        cls = self.cls_token.to(dtype).expand(tokens.shape[0], 1, -1)
        x = torch.cat([cls, tokens.to(dtype)], dim=1)
        if position is not None:
            x = x + position
        return x, ForwardContext(position if inject in ("every", "input_and_every") else None, cells)

    def run_blocks(self, x: torch.Tensor, context: ForwardContext) -> torch.Tensor:
        """The source's stem and blocks, with PE re-injection and adapters; no final norm."""
        x = self.source.stem(x)
        first = 0 if self.config.projection.inject == "input_and_every" else 1
        for i, block in enumerate(self.source.blocks):
            if i >= first and context.position is not None:
                x = x + context.position
            x = self._run_block(i, block, x, context)
        return x

    def _run_block(self, i: int, block: nn.Module, x: torch.Tensor, context: ForwardContext) -> torch.Tensor:
        return run_maybe_recomputed(self.activation_checkpointing, self, self._adapted_block, i, block, x, context)

    def _adapted_block(self, i: int, block: nn.Module, x: torch.Tensor, context: ForwardContext) -> torch.Tensor:
        """Source block ``i`` as the PEFT method runs it (with its adapter and the guided
        aggregation, with prompts, or as it is)."""
        return self.peft_method.run_block(self, i, block, x, context)

    def position_table(self) -> torch.Tensor:
        """The source's position table as the PEFT method presents it (a control permutes it)."""
        return self.peft_method.position_table(self)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Final norm, then the head's pooling (by default concat(max over point tokens, cls) -> (B, 2D))."""
        return self.head.pool(self.norm(x))

    def head_input(self, points: torch.Tensor) -> torch.Tensor:
        """The pooled 3D feature of ``points``: what the head maps to class scores."""
        if self.peft_method.encode is not None:  # a method that replaces the pipeline (tokenizer_only)
            return self.peft_method.encode(self, points)
        x, context = self.embed(points)
        return self.features(self.run_blocks(x, context))

    def forward(self, points: torch.Tensor) -> torch.Tensor:
        return self.head(self.head_input(points))
