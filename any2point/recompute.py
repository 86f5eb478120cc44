"""Activation checkpointing that is safe for BatchNorm.

``torch.utils.checkpoint`` runs a region's forward a second time during backward. A
BatchNorm in training mode would then fold the same batch into its running statistics
twice; here the second run normalises with the batch statistics as before but leaves the
running statistics (and the batch counter) as the first run left them, so a checkpointed
step changes exactly the state an ordinary step changes.
"""
from __future__ import annotations

from contextlib import contextmanager, nullcontext
from typing import Callable, Iterator

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

__all__ = ["recompute_in_backward", "run_maybe_recomputed", "running_stats_frozen"]


@contextmanager
def running_stats_frozen(module: nn.Module) -> Iterator[None]:
    """Within the block, the BatchNorms of ``module`` in training mode normalise as usual but
    leave their running statistics unchanged.

    Momentum 0 makes the update ``1 * running + 0 * batch``, which is exact; the batch
    counter is put back. (Switching tracking off instead would change which tensors the
    BatchNorm saves for backward, and checkpointing needs the recomputation to save the same.)"""
    norms = [m for m in module.modules() if m.training and hasattr(m, "momentum")
             and getattr(m, "num_batches_tracked", None) is not None]
    saved = [(m.momentum, m.num_batches_tracked.clone()) for m in norms]
    for m in norms:
        m.momentum = 0.0
    try:
        yield
    finally:
        for m, (momentum, count) in zip(norms, saved):
            m.momentum = momentum
            m.num_batches_tracked.copy_(count)


def recompute_in_backward(owner: nn.Module, fn: Callable[..., torch.Tensor], *args) -> torch.Tensor:
    """``fn(*args)`` keeping only its inputs; its activations are recomputed in backward with
    the same RNG state (dropout masks agree) and with ``owner``'s running statistics frozen."""
    if torch.compiler.is_compiling():
        raise RuntimeError("activation checkpointing does not run under torch.compile (its BatchNorm-safe "
                           "recomputation is eager); switch one of the two off")
    return checkpoint(fn, *args, use_reentrant=False,
                      context_fn=lambda: (nullcontext(), running_stats_frozen(owner)))


def run_maybe_recomputed(enabled: bool, owner: nn.Module, fn: Callable[..., torch.Tensor], *args) -> torch.Tensor:
    """``fn(*args)``, through :func:`recompute_in_backward` when ``enabled`` and a backward can
    follow (gradients on); a plain call otherwise (evaluation, or checkpointing off)."""
    if enabled and torch.is_grad_enabled():
        return recompute_in_backward(owner, fn, *args)
    return fn(*args)
