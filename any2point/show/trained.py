"""What a trained model does with a cloud: the guided ensemble's per-token view weights w_j in
one block, and the top-k classes.

The model runs its own forward pass; the input of the chosen block's guided aggregation
(the point tokens and the pass's cell assignment) is recorded on the way. The weights are
then read with ``GuidedAdapters.ensemble``, the method the aggregation itself calls.
``ViewWeights.reconstructs`` checks the result against the aggregation's real output.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch

from any2point.adapters import CellAssignment, GuidedAdapters
from any2point.model import Any2PointModel
from any2point.peft import guided_adapters

from .inputs import as_points

__all__ = ["Trained", "ViewWeights", "run_trained", "view_weights", "guided_weights", "block_index"]


@dataclass(frozen=True)
class ViewWeights:
    """The ensemble of one block for one pass: ``weights`` (B*G, M) sum to 1 per token,
    ``features`` (B*G, M, D) the F_j each token gets from its cell, ``tokens`` (B, G, D) the
    aggregation's input, ``output`` (B, G, D) what the model's aggregation returned."""

    weights: torch.Tensor
    features: torch.Tensor
    tokens: torch.Tensor
    output: torch.Tensor
    coef: float

    def reconstructs(self) -> torch.Tensor:
        """x + c * sum_j w_j F_j: equals ``output`` when the weights are the model's."""
        B, G, D = self.tokens.shape
        mixed = (self.weights.unsqueeze(-1) * self.features).sum(dim=1)
        return self.tokens + self.coef * mixed.view(B, G, D)


@dataclass(frozen=True)
class Trained:
    """``weights``: (G, M) per-token view weights of block ``block`` (None when the model has
    no guided ensemble, with ``note`` saying why); ``topk``: [(class, probability)]."""

    block: int
    weights: np.ndarray | None
    topk: list[tuple[str, float]]
    note: str = ""


def block_index(model: Any2PointModel, block: int) -> int:
    """``block`` as a 0-based index (negative counts from the end), or a ValueError naming the range."""
    depth = model.source.depth
    if not -depth <= block < depth:
        raise ValueError(f"--block {block} is out of range: {model.source.name} has {depth} blocks "
                         f"(0 to {depth - 1}, or -1 for the last)")
    return block % depth


@contextlib.contextmanager
def _recording(adapters: GuidedAdapters, index: int, record: dict) -> Iterator[None]:
    """Record the arguments and the result of block ``index``'s guided aggregation."""
    original = adapters.aggregate

    def aggregate(i, x, cells):
        out = original(i, x, cells)
        if i == index:
            record.update(tokens=x.detach().clone(), cells=cells, output=out.detach().clone())
        return out

    adapters.aggregate = aggregate
    try:
        yield
    finally:
        del adapters.aggregate  # back to the class's method


@torch.no_grad()
def guided_weights(adapters: GuidedAdapters, index: int, tokens: torch.Tensor,
                   cells: CellAssignment) -> tuple[torch.Tensor, torch.Tensor]:
    """(weights (B*G, M), features (B*G, M, D)) of block ``index``'s ensemble on ``tokens``."""
    views, weights, _ = adapters.ensemble(index, tokens, cells)  # (M, B*G, D), (M, B*G)
    if weights is None:  # reference=uniform: the views weigh the same
        weights = views.new_full(views.shape[:2], 1.0 / adapters.views)
    return weights.t(), views.transpose(0, 1)


def _no_weights_reason(model: Any2PointModel) -> str:
    adapters = guided_adapters(model)
    if adapters is None:
        return f"peft={model.peft_config.name} has no guided ensemble"
    if not adapters.config.view_cells:
        return "adapter.view_cells=false: no per-view features to weigh"
    return ""


@torch.no_grad()
def view_weights(model: Any2PointModel, cloud, block: int = -1) -> tuple[ViewWeights | None, torch.Tensor]:
    """Run ``model`` on one cloud; return block ``block``'s ViewWeights (None without an ensemble)
    and the logits (1, C)."""
    model.eval()
    points = as_points(cloud).to(next(model.parameters()).device)
    index = block_index(model, block)
    if _no_weights_reason(model):
        return None, model(points)
    adapters, record = guided_adapters(model), {}
    with _recording(adapters, index, record):
        logits = model(points)
    weights, features = guided_weights(adapters, index, record["tokens"], record["cells"])
    return ViewWeights(weights, features, record["tokens"], record["output"], adapters.config.coef), logits


def run_trained(model: Any2PointModel, class_names: list[str], cloud, block: int = -1, topk: int = 5) -> Trained:
    """The view weights of ``block`` and the top-k classes for one cloud."""
    ensemble, logits = view_weights(model, cloud, block)
    probs = logits.float().softmax(dim=-1)[0]
    values, indices = probs.topk(max(1, min(topk, len(class_names))))
    top = [(class_names[i], float(p)) for p, i in zip(values.tolist(), indices.tolist())]
    weights = None if ensemble is None else ensemble.weights.float().cpu().numpy()
    return Trained(block_index(model, block), weights, top, _no_weights_reason(model))
