"""Optimizer and learning-rate schedule of the training recipe (docs/method.md#training-recipe).

- AdamW over the trainable parameters only, in two groups decided by each parameter's role,
  never by its shape: weight decay on the weights of linear, convolution and attention
  projections; none on normalisation parameters, biases, tokens and positions (a stack of
  per-view norms is still norms, a (1, 1, D) cls token is still a token).
- Learning rate per optimizer step: linear warm-up from ``warmup_lr`` to ``lr`` over
  ``warmup_epochs`` epochs' worth of steps, then a cosine from ``lr`` down to ``min_lr`` at
  the last step. Stepping per step (not per epoch) keeps the warm-up smooth when an epoch
  has few steps; at epoch boundaries it gives the same values as a per-epoch schedule
  evaluated at fractional epochs.
"""
from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["decays", "parameter_groups", "build_optimizer", "lr_at", "build_scheduler"]


_NORMS = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm, nn.LocalResponseNorm)
_MATRICES = (nn.Linear, nn.modules.conv._ConvNd, nn.Bilinear)
# Modules that store their parts as stacked Parameters instead of submodules: which of their
# parameters are projection matrices (decayed); the others (norms, biases) are not decayed.
_STACKED_MATRICES = {"ViewMiniAttention": {"qkv_weight", "out_weight"}, "ContrastiveHead": {"projection"}}


def decays(module: nn.Module, name: str) -> bool:
    """Whether parameter ``name`` registered directly on ``module`` takes weight decay, by role:
    projection weights do; norms, biases, tokens, positions, scales and embedding tables do not."""
    kind = type(module).__name__
    if isinstance(module, _NORMS):
        return False
    if name == "bias" or name.endswith("_bias") or name.startswith("bias_"):
        return False
    if isinstance(module, _MATRICES) or isinstance(module, nn.MultiheadAttention):
        return name.endswith("weight")
    return name in _STACKED_MATRICES.get(kind, ())


def parameter_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Trainable parameters split into decayed and not decayed groups by role (:func:`decays`)."""
    decay, no_decay = [], []
    seen: set[int] = set()
    for module in model.modules():
        for name, p in module.named_parameters(recurse=False):
            if not p.requires_grad or id(p) in seen:
                continue
            seen.add(id(p))
            (decay if decays(module, name) else no_decay).append(p)
    if not decay and not no_decay:
        raise ValueError("the model has no trainable parameters: check the peft config")
    groups = []
    if decay:
        groups.append({"params": decay, "weight_decay": weight_decay})
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return groups


def build_optimizer(model: nn.Module, lr: float, weight_decay: float, betas=(0.9, 0.999)) -> torch.optim.AdamW:
    if lr <= 0:
        raise ValueError(f"train.lr must be positive, got {lr}")
    return torch.optim.AdamW(parameter_groups(model, weight_decay), lr=lr, betas=tuple(betas))


def lr_at(step: int, *, total_steps: int, warmup_steps: int, lr: float, warmup_lr: float, min_lr: float) -> float:
    """Learning rate used by optimizer step ``step`` (0-based)."""
    warmup_steps = min(warmup_steps, total_steps)
    if step < warmup_steps:
        return warmup_lr + (lr - warmup_lr) * step / warmup_steps
    decay_steps = max(total_steps - warmup_steps - 1, 1)
    progress = min((step - warmup_steps) / decay_steps, 1.0)
    return min_lr + 0.5 * (lr - min_lr) * (1.0 + math.cos(math.pi * progress))


def build_scheduler(optimizer: torch.optim.Optimizer, *, steps_per_epoch: int, epochs: int, warmup_epochs: float,
                    lr: float, warmup_lr: float, min_lr: float) -> torch.optim.lr_scheduler.LambdaLR:
    """A per-step LambdaLR following :func:`lr_at` (call ``scheduler.step()`` after every optimizer step)."""
    if steps_per_epoch < 1:
        raise ValueError("an epoch has no optimizer step: the training split is smaller than train.batch_size")
    total = steps_per_epoch * epochs
    warmup = int(round(warmup_epochs * steps_per_epoch))

    def factor(step: int) -> float:
        return lr_at(step, total_steps=total, warmup_steps=warmup, lr=lr, warmup_lr=warmup_lr, min_lr=min_lr) / lr

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
