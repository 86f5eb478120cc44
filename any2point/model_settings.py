"""``ModelConfig``: the settings of an Any2Point model, one section per part (``model.*`` in the
apps' config). Kept apart from the model itself (any2point.model), which builds whatever
parts its PEFT method asks for and knows none of them by name; ``model.adapter`` holds the
guided adapter's settings (docs/method.md#guided-adapter), which peft=any2point and its
controls read, and the bottleneck baseline for its bottleneck."""
from __future__ import annotations

from dataclasses import dataclass, field

from any2point.adapters import AdapterConfig
from any2point.projections import ProjectionConfig

from . import checks
from .heads import HeadConfig
from .init import INIT_SCHEMES
from .tokenizer import TokenizerConfig

__all__ = ["ModelConfig", "CLS_CHOICES"]

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
