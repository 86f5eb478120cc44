"""What a head is: the last part of the composition, from the final-norm tokens to class scores.

The model hands the head its tokens once normalised (:meth:`Head.pool`) and the pooled feature
(``forward``); it never looks inside. A head also says which classes its outputs are:
:meth:`Head.bind_classes` when a run starts, :meth:`Head.restore_classes` when a checkpoint is
loaded. An *open-vocabulary* head (``open_vocabulary = True``) can score any list of class
names, given as text, with :meth:`Head.classes`.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import ClassVar, Iterator, Sequence

import torch
from torch import nn

from ..errors import ConfigError
from .config import POOLS, HeadConfig

__all__ = ["Head", "pool_tokens", "pooled_width"]


def pooled_width(pool: str, width: int) -> int:
    """Width of the pooled feature of ``pool`` on tokens of ``width``."""
    if pool not in POOLS:
        raise ConfigError(f"model.head.pool must be one of {', '.join(POOLS)}, got {pool!r}")
    return 2 * width if pool == "max_cls" else width


def pool_tokens(tokens: torch.Tensor, pool: str) -> torch.Tensor:
    """(B, 1 + G, D) tokens, cls first -> the pooled feature (see ``HeadConfig.pool``)."""
    if pool == "max_cls":
        return torch.cat([tokens[:, 1:].amax(dim=1), tokens[:, 0]], dim=-1)
    if pool == "mean":
        return tokens.mean(dim=1)
    raise ConfigError(f"model.head.pool must be one of {', '.join(POOLS)}, got {pool!r}")


class Head(nn.Module):
    """Base class of heads: ``forward(features (B, F)) -> scores (B, C)``."""

    open_vocabulary: ClassVar[bool] = False

    def __init__(self, config: HeadConfig, width: int, num_classes: int):
        super().__init__()
        self.config = config
        self.in_features = pooled_width(config.pool, width)
        self.num_classes = num_classes
        self.class_names: list[str] | None = None

    def pool(self, tokens: torch.Tensor) -> torch.Tensor:
        """The head's input from the final-norm tokens (B, 1 + G, D), cls first."""
        return pool_tokens(tokens, self.config.pool)

    def bind_classes(self, names: Sequence[str]) -> None:
        """The class names of the outputs, in order (a run's training classes)."""
        names = list(names)
        if len(names) != self.num_classes:
            raise ConfigError(f"the head has {self.num_classes} outputs but {len(names)} class names were given")
        self.class_names = names

    def restore_classes(self, names: Sequence[str], where: str) -> None:
        """:meth:`bind_classes` for a loaded checkpoint (``where``: the file, for errors)."""
        self.bind_classes(names)

    @contextmanager
    def classes(self, names: Sequence[str]) -> Iterator[None]:
        """Score ``names`` instead of the bound classes inside the block (open-vocabulary heads)."""
        raise ConfigError(f"the {self.config.name} head scores only the {self.num_classes} classes it was trained "
                          f"on; scoring other class names needs a run trained with model.head.name=contrastive")
        yield  # pragma: no cover  (a generator, for the context manager protocol)
