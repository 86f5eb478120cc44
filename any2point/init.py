"""The release's initialisation of the trainable parts, per dataset (docs/method.md#guided-adapter, item 5).

- ``scan`` (ScanObjectNN runs): every trainable ``nn.Linear`` xavier_uniform with zero
  bias, every LayerNorm / BatchNorm weight 1 and bias 0. The release's tokenizer is made of
  1x1 convolutions, which that rule does not touch: ours are the same maps written as
  ``nn.Linear`` and keep PyTorch's default initialisation, which is the convolutions'.
  The classifier head is built outside the release's encoder and keeps PyTorch's default.
- ``modelnet`` (ModelNet runs): every trainable Linear (the tokenizer's and the head's
  included) trunc_normal(std 0.02) with zero bias, norms weight 1 and bias 0.
- ``torch``: PyTorch's default initialisation of each module (and zero-initialised
  bottleneck up-projections): what a run without a paper experiment gets.

Nothing is zero-initialised by ``scan`` or ``modelnet``. The frozen source and the final
norm (a copy of the source's) are never touched. The cls token and position are set by
the model (``model.cls_token`` / ``model.cls_position``).

The parts, in this order (the order the random numbers are drawn in): the tokenizer, the PEFT
method's own parts (:meth:`~any2point.peft.PeftMethod.initialised_parts`, every Linear of
them), the learned position encoding, the head. A module that stores several layers stacked
in one tensor (e.g. one Linear per view) initialises itself: it defines
``initialise_stacked(init_matrix)`` and calls ``init_matrix`` on each (out, in) or (in, out)
matrix, resetting its own biases and norm rows.
"""
from __future__ import annotations

import torch
from torch import nn

__all__ = ["INIT_SCHEMES", "initialise"]

INIT_SCHEMES = ("torch", "scan", "modelnet")

_NORMS = (nn.LayerNorm, nn.GroupNorm, nn.BatchNorm1d, nn.BatchNorm2d)


def _reset_norm(module: nn.Module) -> None:
    if getattr(module, "weight", None) is not None:
        nn.init.ones_(module.weight)
    if getattr(module, "bias", None) is not None:
        nn.init.zeros_(module.bias)


def _init_linear(module: nn.Linear, scheme: str) -> None:
    _init_matrix(module.weight, scheme)
    if module.bias is not None:
        nn.init.zeros_(module.bias)


def _init_matrix(weight: torch.Tensor, scheme: str) -> None:
    """One Linear's weight, as (out, in) or (in, out): both schemes are symmetric in the two fans."""
    if scheme == "scan":
        nn.init.xavier_uniform_(weight)
    else:
        nn.init.trunc_normal_(weight, std=0.02)


def _parts(model: nn.Module, scheme: str) -> list[tuple[nn.Module, bool]]:
    """(part, re-initialise its Linear layers) for every trainable part the scheme covers."""
    parts = [(model.tokenizer, scheme == "modelnet")]
    parts += [(part, True) for part in model.peft_method.initialised_parts(model)]
    parts += [(model.learned_position, True), (model.head, scheme == "modelnet")]
    return [(part, linear) for part, linear in parts if part is not None]


def initialise(model: nn.Module, scheme: str) -> None:
    """Re-initialise the trainable parts of an ``Any2PointModel`` by ``scheme`` (in place)."""
    if scheme not in INIT_SCHEMES:
        raise ValueError(f"model.init must be one of {', '.join(INIT_SCHEMES)}, got {scheme!r}")
    if scheme == "torch":
        return
    for part, linear in _parts(model, scheme):
        for module in part.modules():
            if isinstance(module, nn.Linear) and linear:
                _init_linear(module, scheme)
            elif isinstance(module, _NORMS):
                _reset_norm(module)
            elif linear and callable(getattr(module, "initialise_stacked", None)):
                module.initialise_stacked(lambda weight: _init_matrix(weight, scheme))
