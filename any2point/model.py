"""The Any2Point composition: tokenizer -> virtual-projection PE -> frozen source blocks as the
PEFT method runs them -> trainable final norm -> head.

    points (B, N, 3)
      -> tokenizer: tokens (B, G, D), centres (B, G, 3)
      -> per-view positions of the centres (once) -> PE from the source's frozen table
      -> [cls] + tokens -> source stem -> L frozen blocks, each run by the PEFT method
      -> final norm -> pooled as the head asks (concat(max over point tokens, cls) by default)
      -> head (a registered unit, any2point.heads) -> logits (B, C)

Geometry (per-view positions, and whatever the PEFT method derives from them) is computed
once per forward pass and handed down as immutable records; no block recomputes it. The model
knows no method: what a method adds, initialises, leaves out or computes per pass goes through
the hooks of :class:`any2point.peft.PeftMethod`.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Mapping

import torch
from torch import nn

from any2point.backbones.base import FrozenSource
from any2point.projections import LearnedPositionEncoding, VirtualProjection

from .errors import ConfigError
from .heads import ClassifierHead, HeadConfig, create_head
from .init import initialise
from .model_settings import ModelConfig
from .peft import PeftConfig, create_peft_method
from .recompute import run_maybe_recomputed
from .tokenizer import PointTokenizer

__all__ = ["HeadConfig", "ModelConfig", "Any2PointModel", "ClassifierHead", "ForwardContext"]


@dataclass(frozen=True)
class ForwardContext:
    """What one forward pass computes once and every block reads."""

    position: torch.Tensor | None  # (B, 1 + G, D) cls position + token PE the blocks re-inject, or None
    state: Any = None  # the PEFT method's own record of the pass (PeftMethod.pass_state), opaque here


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
        self._shared_part("learned_position", lambda: LearnedPositionEncoding(D)
                          if config.projection.kind == "learned" else None)

        cls = source.cls_token() if config.cls_token == "source" else None
        self._shared_part("cls_token", lambda: nn.Parameter(cls.detach().clone() if cls is not None
                                                             else torch.randn(D) * 0.02))
        cls_pos = source.cls_position() if config.cls_position == "source" else None
        self._shared_part("cls_position", lambda: nn.Parameter(cls_pos.detach().clone() if cls_pos is not None
                                                                else torch.randn(D) * 0.02))

        # The final norm trains: a copy of the source's own (or a fresh LayerNorm for post-LN sources).
        has_norm = any(True for _ in source.final_norm.parameters())
        self._shared_part("norm", lambda: copy.deepcopy(source.final_norm) if has_norm else nn.LayerNorm(D))
        self.peft_method.inject(self)  # before the head: a seed gives the method's parts the same values as always
        self.head = create_head(config.head, D, num_classes)
        if self.peft_method.encode is not None and self.head.in_features != 2 * D:
            raise ConfigError(f"model.head.pool={config.head.pool} pools the source's tokens, which peft="
                              f"{self.peft_config.name} does not run; use model.head.pool=max_cls")
        initialise(self, config.init)
        self.peft_method.mark_trainable(self)
        self.activation_checkpointing = False

    def _shared_part(self, name: str, build) -> None:
        """Set shared part ``name`` to ``build()``, or to None when the PEFT method declares it
        unused (PeftMethod.unused_parts). An unused part is still drawn and dropped: its random
        numbers are taken either way, so a seed gives every later part (the method's, the head)
        the same values whatever the method leaves out."""
        part = build()
        setattr(self, name, None if name in self.peft_method.unused_parts else part)

    @property
    def activation_checkpointing(self) -> bool:
        """Recompute activations in backward instead of storing them: each tokenizer stage's
        grouped features (and, within that recomputation, each of the stage's residual blocks)
        and each block as the PEFT method runs it; extra forwards of those parts for most of the step's
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
        state = self.peft_method.pass_state(self, where, centres)
        cls = self.cls_token.to(dtype).expand(tokens.shape[0], 1, -1)
        x = torch.cat([cls, tokens.to(dtype)], dim=1)
        if position is not None:
            x = x + position
        return x, ForwardContext(position if inject in ("every", "input_and_every") else None, state)

    def run_blocks(self, x: torch.Tensor, context: ForwardContext) -> torch.Tensor:
        """The source's stem and blocks, with PE re-injection, each block as the PEFT method runs it; no final norm."""
        x = self.source.stem(x)
        first = 0 if self.config.projection.inject == "input_and_every" else 1
        for i, block in enumerate(self.source.blocks):
            if i >= first and context.position is not None:
                x = x + context.position
            x = self._run_block(i, block, x, context)
        return x

    def _run_block(self, i: int, block: nn.Module, x: torch.Tensor, context: ForwardContext) -> torch.Tensor:
        return run_maybe_recomputed(self.activation_checkpointing, self, self._method_block, i, block, x, context)

    def _method_block(self, i: int, block: nn.Module, x: torch.Tensor, context: ForwardContext) -> torch.Tensor:
        """Source block ``i`` as the PEFT method runs it (PeftMethod.run_block)."""
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
