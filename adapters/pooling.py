"""Pooling of token rows into cells or voxels, in plain PyTorch (autograd, torch.compile and
every device handle it as is)."""
from __future__ import annotations

import torch

__all__ = ["POOL_MODES", "pool_rows", "max_rows"]

POOL_MODES = ("mean", "mean_max")


def pool_rows(values: torch.Tensor, index: torch.Tensor, rows: int, mode: str = "mean") -> torch.Tensor:
    """Mean (``mode='mean'``) or mean + max (``'mean_max'``) of the rows of ``values`` (R, D) that
    ``index`` (R,) sends to each of ``rows`` segments -> (rows, D); a segment without rows is zero.

    The max's gradient goes to the arg-max rows, split evenly between ties (as torch's
    ``scatter_reduce`` does; ``max_rows``)."""
    if mode not in POOL_MODES:
        raise ValueError(f"pooling mode must be one of {POOL_MODES}, got {mode!r}")
    width = values.shape[-1]
    # scatter_add, not index_add: index_add's backward keeps its whole source (here the mini
    # attention's (views, tokens, D) output of every block) alive until the backward pass
    spread = index.unsqueeze(-1).expand_as(values)
    total = values.new_zeros(rows, width).scatter_add(0, spread, values)
    count = values.new_zeros(rows).index_add(0, index, values.new_ones(index.shape[0]))
    pooled = total / count.clamp_min(1).unsqueeze(-1)
    if mode == "mean_max":
        pooled = pooled + max_rows(values, index, rows)
    return pooled


def max_rows(values: torch.Tensor, index: torch.Tensor, rows: int) -> torch.Tensor:
    """The max of the rows of ``values`` (N, D) that ``index`` (N,) sends to each of ``rows``
    segments -> (rows, D), zero for a segment without rows: ``scatter_reduce(..., 'amax')``'s
    values and gradients (a tie splits the gradient evenly), at a smaller backward.

    The max is taken without autograd; the gradient path is a scatter-add of
    (values - values.detach()) * share, zero in value, where ``share`` is 1 / (number of tied
    rows) on the rows that reach the max and 0 elsewhere; its backward is one gather, where
    scatter_reduce's recomputes the comparisons and counts."""
    width = values.shape[-1]
    spread = index.unsqueeze(-1).expand_as(values)
    with torch.no_grad():
        top = values.new_zeros(rows, width).scatter_reduce(0, spread, values, "amax", include_self=False)
        share = (values == top.gather(0, spread)).to(values.dtype)
        if share.sum() > torch.unique(index).numel() * width:  # ties: split their gradient evenly
            share = share / values.new_zeros(rows, width).scatter_add(0, spread, share).gather(0, spread)
    return top + values.new_zeros(rows, width).scatter_add(0, spread, (values - values.detach()) * share)
