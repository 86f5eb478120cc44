"""The Any2Point composition: tokenizer -> virtual-projection PE -> frozen source blocks with
adapters -> trainable final norm -> head.

    points (B, N, 3)
      -> tokenizer: tokens (B, G, D), centres (B, G, 3)
      -> per-view positions of the centres (once) -> PE from the source's frozen table
      -> [cls] + tokens -> source stem -> L frozen blocks, each with its adapter
      -> final norm -> head on concat(max over point tokens, cls) -> logits (B, C)

Geometry (per-view positions, cells, voxels) is computed once per forward pass and handed
down as immutable records; no block recomputes it.
"""
from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field

import torch
from torch import nn

from any2point.adapters import AdapterConfig, CellAssignment, GuidedAdapters
from any2point.backbones.base import FrozenSource
from any2point.projections import LearnedPositionEncoding, ProjectionConfig, VirtualProjection

from .peft import PeftConfig, apply_peft, frozen_modules
from .recompute import run_maybe_recomputed
from .tokenizer import PointTokenizer, TokenizerConfig

__all__ = ["HeadConfig", "ModelConfig", "Any2PointModel", "ClassifierHead"]


@dataclass
class HeadConfig:
    hidden: list[int] = field(default_factory=lambda: [256, 256])
    dropout: float = 0.5


@dataclass
class ModelConfig:
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    projection: ProjectionConfig = field(default_factory=ProjectionConfig)
    adapter: AdapterConfig = field(default_factory=AdapterConfig)
    head: HeadConfig = field(default_factory=HeadConfig)


class ClassifierHead(nn.Sequential):
    """Linear -> BN -> ReLU -> Dropout per hidden layer, then the class logits."""

    def __init__(self, in_features: int, num_classes: int, config: HeadConfig):
        layers: list[nn.Module] = []
        for width in config.hidden:
            layers += [nn.Linear(in_features, width), nn.BatchNorm1d(width), nn.ReLU(inplace=True),
                       nn.Dropout(config.dropout)]
            in_features = width
        layers.append(nn.Linear(in_features, num_classes))
        super().__init__(*layers)


@dataclass(frozen=True)
class ForwardContext:
    """What one forward pass computes once and every block reads."""

    position: torch.Tensor | None  # (B, 1 + G, D) cls position + token PE, or None
    cells: CellAssignment | None


class Any2PointModel(nn.Module):
    def __init__(self, source: FrozenSource, num_classes: int, config: ModelConfig | None = None,
                 peft: PeftConfig | None = None):
        super().__init__()
        config = config or ModelConfig()
        peft = peft or PeftConfig()
        self.config, self.peft_config, self.num_classes = config, peft, num_classes
        D = source.width
        if config.projection.inject not in ("input", "every", "none"):
            raise ValueError(f"projection.inject must be 'input', 'every' or 'none', got {config.projection.inject!r}")
        self.source = source
        self.tokenizer = PointTokenizer(D, config.tokenizer)
        self.views = VirtualProjection(source.position, config.projection)
        self.learned_position = (LearnedPositionEncoding(D) if config.projection.kind == "learned" else None)
        if config.projection.kind not in ("virtual", "learned"):
            raise ValueError(f"projection.kind must be 'virtual' or 'learned', got {config.projection.kind!r}")

        cls = source.cls_token()
        self.cls_token = nn.Parameter(cls.detach().clone() if cls is not None else torch.randn(D) * 0.02)
        cls_pos = source.cls_position()
        self.cls_position = nn.Parameter(cls_pos.detach().clone() if cls_pos is not None else torch.zeros(D))

        self.adapters = self.prompts = None
        if peft.name == "prompt":  # deep prompt tuning: fresh tokens before every block
            self.prompts = nn.Parameter(torch.randn(source.depth, peft.prompt_tokens, D) * 0.02)
        if peft.name in ("any2point", "adapter"):
            adapter_cfg = config.adapter if peft.name == "any2point" else dataclasses.replace(config.adapter, guided=False)
            self.adapters = GuidedAdapters(D, source.depth, config.projection.views, adapter_cfg,
                                           canvas=source.position.canvas, length=getattr(self.views, "length", None))
        # The final norm trains: a copy of the source's own (or a fresh LayerNorm for post-LN sources).
        has_norm = any(True for _ in source.final_norm.parameters())
        self.norm = copy.deepcopy(source.final_norm) if has_norm else nn.LayerNorm(D)
        self.head = ClassifierHead(2 * D, num_classes, config.head)
        apply_peft(self, peft)
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
        """Frozen parts stay in eval mode (their BatchNorm statistics and dropout never change)."""
        super().train(mode)
        for module in frozen_modules(self):
            module.eval()
        return self

    # -- the three steps of forward, separately callable for tests and benchmarks --------------

    def embed(self, points: torch.Tensor) -> tuple[torch.Tensor, ForwardContext]:
        """Points -> input sequence (B, 1 + G, D) for the blocks, and the per-pass context."""
        tokens, centres = self.tokenizer(points)
        where = self.views.positions(centres)
        inject = self.config.projection.inject
        position = None
        if inject != "none":
            if self.learned_position is not None:
                pe = self.learned_position(centres.to(tokens.dtype))
            else:
                pe = self.views.encode(self.source.position_table(), where)
            cls_pos = self.cls_position.to(pe.dtype).expand(pe.shape[0], 1, -1)
            position = torch.cat([cls_pos, pe], dim=1).to(tokens.dtype)
        cells = self.adapters.assign(where, centres) if self.adapters is not None else None
        cls = self.cls_token.to(tokens.dtype).expand(tokens.shape[0], 1, -1)
        x = torch.cat([cls, tokens], dim=1)
        if position is not None:
            x = x + position
        return x, ForwardContext(position if inject == "every" else None, cells)

    def run_blocks(self, x: torch.Tensor, context: ForwardContext) -> torch.Tensor:
        """The source's stem and blocks, with PE re-injection and adapters; no final norm."""
        x = self.source.stem(x)
        for i, block in enumerate(self.source.blocks):
            if i > 0 and context.position is not None:
                x = x + context.position
            x = self._run_block(i, block, x, context)
        return x

    def _run_block(self, i: int, block: nn.Module, x: torch.Tensor, context: ForwardContext) -> torch.Tensor:
        return run_maybe_recomputed(self.activation_checkpointing, self, self._adapted_block, i, block, x, context)

    def _adapted_block(self, i: int, block: nn.Module, x: torch.Tensor, context: ForwardContext) -> torch.Tensor:
        """Source block ``i`` with its FFN hook (adapter) or prompts, then the guided aggregation."""
        hook = self.adapters.ffn_hook(i) if self.adapters is not None else None
        if self.prompts is not None:
            P = self.prompts.shape[1]
            prompts = self.prompts[i].to(x.dtype).expand(x.shape[0], -1, -1)
            y = block(torch.cat([x[:, :1], prompts, x[:, 1:]], dim=1), hook)
            return torch.cat([y[:, :1], y[:, 1 + P:]], dim=1)
        x = block(x, hook)
        if context.cells is None:  # no adapters, or plain bottleneck adapters: nothing to aggregate
            return x
        points = self.adapters.aggregate(i, x[:, 1:], context.cells)
        return torch.cat([x[:, :1], points], dim=1)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Final norm, then concat(max over point tokens, cls) -> (B, 2D)."""
        x = self.norm(x)
        return torch.cat([x[:, 1:].amax(dim=1), x[:, 0]], dim=-1)

    def forward(self, points: torch.Tensor) -> torch.Tensor:
        x, context = self.embed(points)
        return self.head(self.features(self.run_blocks(x, context)))
