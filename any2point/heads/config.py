"""``model.head``: which registered head maps the pooled 3D feature to class scores, and its settings.

One dataclass for every head (the typed ``model.head`` section of the training config and of
``checkpoint.json``); a head reads the fields it uses. ``hidden``, ``dropout`` and ``pool``
apply to every head; the ``text_*``, ``templates``, ``projection_init`` and ``logit_scale*``
fields are the contrastive head's (docs/zero-shot.md).
"""
from __future__ import annotations

from dataclasses import dataclass, field

from .. import checks

__all__ = ["HeadConfig", "DEFAULT_TEMPLATES", "POOLS", "PROJECTION_INITS"]

# Prompt templates of the class texts: each class's embedding is the mean of its templates'
# (normalised, then normalised again), as CLIP's prompt ensembling; ``{name}`` is the class
# name with underscores turned to spaces.
DEFAULT_TEMPLATES = [
    "a 3D model of a {name}.",
    "a point cloud of a {name}.",
    "a 3D scan of a {name}.",
    "a CAD model of a {name}.",
    "a 3D shape of a {name}.",
    "a photo of a {name}.",
]

# How the final-norm tokens (cls first) become the head's input:
# max_cls: concat(max over the point tokens, the cls token) (B, 2D), the method's own pooling;
# mean: the mean over every token, cls included (B, D), as a sentence encoder pools a sentence.
POOLS = ("max_cls", "mean")
PROJECTION_INITS = ("random", "identity")


@dataclass
class HeadConfig:
    name: str = "classifier"  # a registered head: classifier | contrastive (any2point.heads)
    hidden: list[int] = field(default_factory=lambda: [256, 256])  # Linear-BN-ReLU-Dropout layers first
    dropout: float = 0.5
    pool: str = "max_cls"  # max_cls | mean
    # -- the contrastive head (name=contrastive) --------------------------------------------
    text_encoder: str = "minilm"  # minilm | hf:<hub id> | open_clip:<arch>:<tag>; frozen, never saved
    text_weights: str | None = None  # a local copy of the text encoder's weights; never written to a checkpoint
    templates: list[str] = field(default_factory=lambda: list(DEFAULT_TEMPLATES))
    projection_init: str = "random"  # random: N(0, 1/in_features) | identity (in_features == text width)
    logit_scale: float = 14.285714  # initial exp(logit scale) = 1 / temperature (CLIP: 1 / 0.07)
    logit_scale_max: float = 100.0  # the learned scale is clamped to at most this (CLIP: 100)

    def __post_init__(self) -> None:
        from ..text_encoders import check_templates, check_text_encoder_name
        from .registry import get_head

        get_head(self.name)
        for i, width in enumerate(self.hidden):
            checks.integer(f"model.head.hidden[{i}]", width, 1)
        checks.fraction("model.head.dropout", self.dropout)
        checks.one_of("model.head.pool", self.pool, POOLS)
        if self.name == "contrastive":
            check_text_encoder_name(self.text_encoder)
            check_templates(self.templates)
            checks.one_of("model.head.projection_init", self.projection_init, PROJECTION_INITS)
            checks.number("model.head.logit_scale", self.logit_scale, above=0)
            checks.number("model.head.logit_scale_max", self.logit_scale_max, at_least=self.logit_scale)
