"""The mini attention's pair attention in one C kernel on the CPU.

The PyTorch version (``adapters.mini_attention.pair_attention``) runs a dozen gathers,
products and embedding bags over the (pairs, heads, 2) arrays; here each query's pairs are
one loop, reading q, k and v straight from the qkv matmul's output (no copy into per-view
rows), and the backward is one more loop over them, adding to each key's gradient directly
(threads take whole (view, cloud) slices, which no pair leaves).
"""
from __future__ import annotations

import math

import torch

from . import call, run_bounds

__all__ = ["native_pair_attention"]


def native_pair_attention(qkv: torch.Tensor, heads: int, head_dim: int, pairs, slice_size: int) -> torch.Tensor:
    """qkv (T, M, 3 * heads * head_dim): every token's q, k, v in every view (the mini attention's
    qkv matmul); pairs: ``CellPairs`` over token-views r = m * T + t, none of which leaves its
    slice of ``slice_size`` consecutive token-views (the tokens of one cloud in one view: cells
    never span two) -> (M, T, heads * head_dim)."""
    T, M, _ = qkv.shape
    if (M * T) % slice_size:
        raise ValueError(f"native_pair_attention: {M * T} token-views do not split into slices of {slice_size}")
    return _PairAttention.apply(qkv, heads, head_dim, pairs.key, pairs.starts, slice_size)


class _PairAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, qkv, heads, head_dim, key, starts, slice_size):
        qkv = qkv.contiguous()
        T, M, _ = qkv.shape
        bounds = run_bounds(starts, key.numel())
        weights = qkv.new_empty(key.numel(), heads)
        out = qkv.new_empty(M, T, heads * head_dim)
        scale = 1.0 / math.sqrt(head_dim)
        call("pair_attention_forward", qkv.dtype, T, M, heads, head_dim, slice_size, scale, qkv, key, bounds, weights,
             out, errors={2: f"a pair leaves its slice of {slice_size} token-views (a cell spans two clouds or views)"})
        ctx.save_for_backward(qkv, key, bounds, weights, out)
        ctx.heads, ctx.head_dim, ctx.slice_size, ctx.scale = heads, head_dim, slice_size, scale
        return out

    @staticmethod
    def backward(ctx, grad):
        qkv, key, bounds, weights, out = ctx.saved_tensors
        T, M, _ = qkv.shape
        grad_qkv = torch.empty_like(qkv)
        call("pair_attention_backward", qkv.dtype, T, M, ctx.heads, ctx.head_dim, ctx.slice_size,
             ctx.scale, qkv, key, bounds, weights, out, grad.contiguous(), grad_qkv)
        return grad_qkv, None, None, None, None, None
