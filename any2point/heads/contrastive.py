"""The contrastive head: the pooled 3D feature projected into a frozen text encoder's space and
scored against the text embeddings of the classes, as CLIP scores images against captions.

    features (B, F) -> [Linear-BN-ReLU-Dropout]* -> projection (E x F') -> unit vector z
    logits = min(exp(s), s_max) * z @ T.T        T: (C, E) unit text embeddings of the classes

``s`` (the logit scale, 1 / temperature) is learned; cross-entropy over the training classes
trains the projection and everything before it. A class's text embedding is the mean of its
prompt templates' embeddings, renormalised (any2point.text_encoders). Any list of class names
can be scored (:meth:`ContrastiveHead.classes`), which is what zero-shot evaluation,
``any2point-predict --labels`` and ``any2point-retrieve`` use.

The text encoder is outside the module tree: never trained, never in a state dict. The head
keeps the embeddings of its training classes as a saved buffer (``train_text``), so a loaded
checkpoint can check that the text encoder available now gives the ones it trained with.

The projection is a plain parameter initialised here by ``projection_init`` (``random``:
N(0, 1/F'), CLIP's text-projection scale; ``identity``: for a 3D path pooled like the text
side on the same model, so a point token sequence starts out read as a sentence), not by
``model.init``, which re-initialises the hidden layers only.
"""
from __future__ import annotations

import math
from contextlib import contextmanager
from typing import Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import CheckpointMismatchError, ConfigError
from ..text_encoders import TextEncoder, check_templates, class_embeddings, load_text_encoder
from .base import Head
from .classifier import mlp_layers
from .config import PROJECTION_INITS, HeadConfig
from .registry import register_head

__all__ = ["ContrastiveHead", "check_class_names"]

_SAME_EMBEDDING = 1e-3  # largest difference of a unit-vector entry still "the same text encoder"


def check_class_names(names: Sequence[str], what: str = "class names") -> list[str]:
    """A non-empty list of distinct, non-blank names, or a ConfigError saying which is wrong."""
    names = [str(n).strip() for n in names]
    if not names:
        raise ConfigError(f"empty list of {what}: give at least one")
    blank = [i for i, n in enumerate(names) if not n]
    if blank:
        raise ConfigError(f"{what}: entry {blank[0]} is blank")
    seen: set[str] = set()
    repeated = [n for n in names if n in seen or seen.add(n)]
    if repeated:
        raise ConfigError(f"{what}: {repeated[0]!r} is given twice")
    return names


@register_head("contrastive")
class ContrastiveHead(Head):
    """Cosine similarity of the projected 3D feature with the classes' text embeddings, learned temperature."""

    open_vocabulary = True

    def __init__(self, config: HeadConfig, width: int, num_classes: int):
        super().__init__(config, width, num_classes)
        check_templates(config.templates)
        if config.projection_init not in PROJECTION_INITS:
            raise ConfigError(f"model.head.projection_init must be one of {', '.join(PROJECTION_INITS)}, "
                              f"got {config.projection_init!r}")
        if not 0 < config.logit_scale <= config.logit_scale_max:
            raise ConfigError(f"model.head.logit_scale must be in (0, model.head.logit_scale_max="
                              f"{config.logit_scale_max}], got {config.logit_scale}")
        text = load_text_encoder(config.text_encoder, config.text_weights)
        self._text = text  # a plain object: not a submodule, so never trained, moved or saved
        layers, out = mlp_layers(self.in_features, config.hidden, config.dropout)
        for i, layer in enumerate(layers):
            self.add_module(str(i), layer)
        self.hidden_layers = len(layers)
        if config.projection_init == "identity":
            if out != text.width:
                raise ConfigError(
                    f"model.head.projection_init=identity needs the 3D feature to be as wide as the text embedding: "
                    f"{out} vs {text.width} ({text.describe()}); use the text encoder's own model as the source with "
                    f"model.head.pool=mean and model.head.hidden=[]")
            projection = torch.eye(text.width)
        else:
            projection = torch.randn(text.width, out) * out ** -0.5
        self.projection = nn.Parameter(projection)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(config.logit_scale)))
        self.register_buffer("train_text", torch.zeros(num_classes, text.width))  # saved: identity check
        self.register_buffer("class_text", torch.zeros(num_classes, text.width), persistent=False)

    @property
    def text_encoder(self) -> TextEncoder:
        return self._text

    # -- classes --------------------------------------------------------------------------------

    def text_embeddings(self, names: Sequence[str]) -> torch.Tensor:
        """(C, E) unit text embeddings of ``names`` with this head's templates, on the head's device."""
        names = check_class_names(names)
        return class_embeddings(self._text, names, self.config.templates).to(self.train_text.device)

    def bind_classes(self, names: Sequence[str]) -> None:
        super().bind_classes(check_class_names(names, "training classes"))
        emb = self.text_embeddings(self.class_names)
        self.train_text.copy_(emb)
        self.class_text = emb.clone()

    def restore_classes(self, names: Sequence[str], where: str) -> None:
        names = check_class_names(names, "training classes")
        emb = self.text_embeddings(names)
        gap = float((emb - self.train_text).abs().max()) if len(names) == len(self.train_text) else math.inf
        if not gap <= _SAME_EMBEDDING:
            raise CheckpointMismatchError(
                f"{where}: the text encoder {self._text.describe()} gives other embeddings of the training classes "
                f"than the run was trained with (largest difference {gap:.3g}): load the text encoder weights the "
                f"run used (model.head.text_weights / --text-weights)")
        super().bind_classes(names)
        self.class_text = self.train_text.clone()

    @contextmanager
    def classes(self, names: Sequence[str]) -> Iterator[None]:
        before, before_names = self.class_text, self.class_names
        self.class_text, self.class_names = self.text_embeddings(names), check_class_names(names)
        try:
            yield
        finally:
            self.class_text, self.class_names = before, before_names

    # -- forward --------------------------------------------------------------------------------

    def embed(self, features: torch.Tensor) -> torch.Tensor:
        """The 3D feature in the text space: (B, E) unit vectors."""
        for i in range(self.hidden_layers):
            features = getattr(self, str(i))(features)
        return F.normalize(features @ self.projection.to(features.dtype).t(), dim=-1)

    def scale(self) -> torch.Tensor:
        """exp(logit scale), clamped to ``logit_scale_max``."""
        return self.logit_scale.exp().clamp(max=self.config.logit_scale_max)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        if self.class_names is None:
            raise RuntimeError("the contrastive head has no classes yet: call bind_classes(names) first")
        z = self.embed(features)
        return self.scale().to(z.dtype) * z @ self.class_text.to(z.dtype).t()
