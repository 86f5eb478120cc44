"""The mini attention's pair attention in one C kernel on the CPU.

The PyTorch version (``adapters.mini_attention.pair_attention``) runs a dozen gathers,
products and embedding bags over the (pairs, heads, 2) arrays; here each query's pairs are
one loop, reading q, k and v straight from the qkv matmul's output (no copy into per-view
rows), and the backward is two loops: one per query, one per key through the swapped pairs.
"""
from __future__ import annotations

import math

import torch

from . import call

__all__ = ["native_pair_attention"]


def native_pair_attention(qkv: torch.Tensor, heads: int, head_dim: int, pairs) -> torch.Tensor:
    """qkv (T, M, 3 * heads * head_dim): every token's q, k, v in every view (the mini attention's
    qkv matmul); pairs: ``CellPairs`` over token-views r = m * T + t -> (M, T, heads * head_dim)."""
    return _PairAttention.apply(qkv, heads, head_dim, pairs.key, pairs.starts, pairs.swapped)


class _PairAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, qkv, heads, head_dim, key, starts, swapped):
        qkv = qkv.contiguous()
        T, M, _ = qkv.shape
        bounds = torch.cat([starts, starts.new_tensor([key.numel()])])
        weights = qkv.new_empty(key.numel(), heads)
        out = qkv.new_empty(M, T, heads * head_dim)
        scale = 1.0 / math.sqrt(head_dim)
        call("pair_attention_forward", qkv.dtype, T, M, heads, head_dim, scale, qkv, key, bounds, weights, out)
        ctx.save_for_backward(qkv, key, bounds, swapped, weights, out)
        ctx.heads, ctx.head_dim = heads, head_dim
        return out

    @staticmethod
    def backward(ctx, grad):
        qkv, key, bounds, swapped, weights, out = ctx.saved_tensors
        T, M, _ = qkv.shape
        grad_qkv = torch.empty_like(qkv)
        scratch = torch.empty_like(weights)
        call("pair_attention_backward", qkv.dtype, T, M, ctx.heads, ctx.head_dim, 1.0 / math.sqrt(ctx.head_dim),
             qkv, key, bounds, swapped, weights, out, grad.contiguous(), scratch, grad_qkv)
        return grad_qkv, None, None, None, None, None
