"""Parameter accounting: how much of a model trains, by component."""
from __future__ import annotations

from torch import nn

__all__ = ["parameter_report"]


def _count(params) -> tuple[int, int]:
    total = trainable = 0
    for p in params:
        total += p.numel()
        trainable += p.numel() if p.requires_grad else 0
    return total, trainable


def parameter_report(model: nn.Module) -> dict:
    """``total``, ``trainable``, ``trainable_without_head`` and a per-component breakdown
    (``components``: name -> {"total", "trainable"}), counted once per shared tensor."""
    components: dict[str, dict[str, int]] = {}
    for name, child in model.named_children():
        total, trainable = _count(child.parameters())
        components[name] = {"total": total, "trainable": trainable}
    own = [p for n, p in model.named_parameters(recurse=False)]
    if own:
        total, trainable = _count(own)
        components["cls"] = {"total": total, "trainable": trainable}
    total, trainable = _count(model.parameters())
    head = components.get("head", {"trainable": 0})["trainable"]
    return {
        "total": total,
        "trainable": trainable,
        "trainable_without_head": trainable - head,
        "trainable_fraction": trainable / total if total else 0.0,
        "components": components,
    }
