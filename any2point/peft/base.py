"""What a PEFT method is: a config dataclass and an object that changes the composition.

A method never sees parameter names; it works on the model's modules. ``Any2PointModel``
builds the shared parts (tokenizer, position encoding, cls, final norm, head) on the source
the method prepared, leaving out the ones the method declares unused (:attr:`PeftMethod.unused_parts`),
then lets the method inject its modules (under names of its own choosing), re-initialises
the method's parts with its own (:meth:`PeftMethod.initialised_parts`) and lets it name what
trains. During the forward pass it asks the method for the position table, for its record of
the pass (:meth:`PeftMethod.pass_state`, which every block reads from the
:class:`~any2point.model.ForwardContext`) and for each block's run (or, for a method that
replaces the pipeline, the head's input). The model knows nothing of any method: it holds no
attribute, branch or type of one.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Iterator

import torch
from torch import nn

if TYPE_CHECKING:  # only for annotations: the model imports this package
    from any2point.backbones.base import FrozenSource
    from any2point.model import Any2PointModel, ForwardContext
    from any2point.projections import ViewPositions

__all__ = ["PeftConfig", "PeftMethod", "parameters_outside_source", "OPTIONAL_PARTS"]

# The shared parts of the composition a method may declare unused (PeftMethod.unused_parts).
OPTIONAL_PARTS = frozenset({"cls_token", "cls_position", "norm", "learned_position"})


@dataclass
class PeftConfig:
    """The fields every method's config has. ``name`` selects the registered method; a
    method with settings of its own subclasses this dataclass."""

    name: str = "any2point"


def parameters_outside_source(model: "Any2PointModel") -> Iterator[nn.Parameter]:
    """Every parameter of the composition that is not part of the frozen source."""
    for name, p in model.named_parameters():
        if not name.startswith("source."):
            yield p


class PeftMethod:
    """Base class of PEFT methods; the defaults are "train everything outside the source and
    run the source's blocks as they are" (no adapters)."""

    config_class: ClassVar[type[PeftConfig]] = PeftConfig  # set by register_peft_method

    # Shared parts (of OPTIONAL_PARTS) this method's forward pass never reads: the model leaves
    # them out (they are None, never parameters of it). Only a method with its own ``encode``
    # may declare any: the composition's own forward pass reads every one.
    unused_parts: ClassVar[frozenset[str]] = frozenset()

    def __init__(self, config: PeftConfig):
        self.config = config

    # -- building ------------------------------------------------------------------------------

    def prepare_source(self, source: "FrozenSource") -> "FrozenSource":
        """The source the composition is built on (a control may replace or strip it)."""
        return source

    def inject(self, model: "Any2PointModel") -> None:
        """Add this method's modules to ``model`` (as attributes of its own naming, or inside the
        source, as LoRA does). Runs after the shared parts and before the head are built."""

    def initialised_parts(self, model: "Any2PointModel") -> list[nn.Module]:
        """This method's modules that ``model.init`` re-initialises (any2point.init), in the
        order their random numbers are drawn: every Linear, every norm, and every module with
        ``initialise_stacked``. None by default: e.g. prompts keep their own N(0, 0.02)."""
        return []

    def trainable_parameters(self, model: "Any2PointModel") -> Iterator[nn.Parameter]:
        """The parameters that train; every other parameter is frozen."""
        return parameters_outside_source(model)

    def frozen_modules(self, model: "Any2PointModel") -> list[nn.Module]:
        """Submodules kept in eval mode while training (their norms and dropout never change)."""
        return [model.source]

    def trained_inside_frozen(self, model: "Any2PointModel") -> list[nn.Module]:
        """Modules inside :meth:`frozen_modules` that train all the same (e.g. LoRA layers in the
        source): they follow the model's train/eval mode, so their dropout is on in training."""
        return []

    def mark_trainable(self, model: "Any2PointModel") -> None:
        """Set ``requires_grad`` structurally: off everywhere, on for :meth:`trainable_parameters`."""
        for p in model.parameters():
            p.requires_grad_(False)
        for p in self.trainable_parameters(model):
            p.requires_grad_(True)

    # -- the forward pass ----------------------------------------------------------------------

    def position_table(self, model: "Any2PointModel") -> torch.Tensor:
        """The table the virtual projection reads position encodings from."""
        return model.source.position_table()

    def pass_state(self, model: "Any2PointModel", where: "ViewPositions", centres: torch.Tensor) -> Any:
        """What this method computes once per forward pass from the token geometry (the per-view
        positions ``where`` and the token centres (B, G, 3)) and every block then reads as
        ``context.state`` (e.g. the cells the guided adapters share). None by default."""
        return None

    def run_block(self, model: "Any2PointModel", i: int, block: nn.Module, x: torch.Tensor,
                  context: "ForwardContext") -> torch.Tensor:
        """Source block ``i`` on ``x`` (B, 1 + G, D); methods that add to the blocks wrap it."""
        return block(x)

    # None: the composition's own embed -> run_blocks -> features. A method that replaces the
    # whole pipeline defines ``encode(self, model, points) -> (B, 2D)``, the head's input.
    encode: ClassVar[Callable[..., torch.Tensor] | None] = None
