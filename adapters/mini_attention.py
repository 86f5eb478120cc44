"""Per-view mini attention: tokens attend only to tokens of the same cloud and cell.

One small attention per view (LayerNorm, qkv D -> 3*heads*head_dim, out -> D), shared by
all blocks. All views run batched: the per-view weights are stacked, the LayerNorm's
affine part is folded into the qkv weights (so the (views, tokens, D) normalised copy is
never built), and attention is evaluated only on the pairs that share a cell: with cells of
n tokens that is sum(n^2) scores instead of a dense G x G matrix per cloud, view and head.
On the CPU the pair attention and the output projection with its pooling run as C kernels
(any2point.native); the PyTorch versions here are their reference and the GPU path.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from any2point.native import kernels_apply
from any2point.native.pair_attention import native_pair_attention
from any2point.native.projected_pooling import native_projected_pooling
from any2point.ops import BagTranspose, mean_plus_max

from .cells import CellPairs

__all__ = ["ViewMiniAttention", "pair_attention"]


def pair_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, pairs: CellPairs) -> torch.Tensor:
    """Softmax attention restricted to the listed (query, key) pairs.

    q, k, v: (T, H, E). Returns (T, H, E), equal to dense attention with a mask that allows
    exactly these pairs. Every sum over pairs is a run of the query-sorted list (an embedding
    bag over consecutive rows), also the key-side sums of the backward, through the swapped
    pairs; no index_add scatters, and nothing of size (P, H, E) is saved."""
    return _PairAttention.apply(q, k, v, *pairs)


def _dot_last(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(..., E) . (..., E) -> (...): a short loop over E (the head width, 2 here), several times
    faster than a product and a reduction over a last dimension that small."""
    out = a[..., 0] * b[..., 0]
    for e in range(1, a.shape[-1]):
        out.addcmul_(a[..., e], b[..., e])
    return out


def _run_sums(values: torch.Tensor, starts: torch.Tensor) -> torch.Tensor:
    """Sums of the consecutive runs of rows of ``values`` (P, ...) that begin at ``starts``."""
    flat = values.reshape(values.shape[0], -1)
    rows = torch.arange(flat.shape[0], device=flat.device)
    return F.embedding_bag(rows, flat, starts, mode="sum").view(starts.numel(), *values.shape[1:])


class _PairAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, query, key, starts, swapped):
        scale = 1.0 / math.sqrt(q.shape[-1])
        scores = _dot_last(q.index_select(0, query), k.index_select(0, key)).mul_(scale)  # (P, H)
        # each query's largest score, for a stable softmax: a max over its run of pairs
        bounds = torch.cat([starts, starts.new_tensor([query.numel()])])
        peak = torch.segment_reduce(scores, "max", offsets=bounds, axis=0, unsafe=True)
        weights = scores.sub_(peak.index_select(0, query)).exp_()
        weights.div_(_run_sums(weights, starts).index_select(0, query))
        out = _run_sums(weights.unsqueeze(-1) * v.index_select(0, key), starts)  # (T, H, E)
        ctx.save_for_backward(q, k, v, query, key, starts, swapped, weights, out)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        q, k, v, query, key, starts, swapped, weights, out = ctx.saved_tensors
        scale = 1.0 / math.sqrt(q.shape[-1])
        grad_out = grad_out.contiguous()
        # softmax backward: d score = w * (<dout_q, v_k> - <dout_q, out_q>)
        grad_weights = _dot_last(grad_out.index_select(0, query), v.index_select(0, key))
        grad_scores = grad_weights.sub_(_dot_last(grad_out, out).index_select(0, query)).mul_(weights)
        # sums over a key's pairs: the run of that key as a query, each pair read as its swap
        grad_q = _run_sums(grad_scores.unsqueeze(-1) * k.index_select(0, key), starts)
        grad_k = _run_sums(grad_scores.index_select(0, swapped).unsqueeze(-1) * q.index_select(0, key), starts)
        grad_v = _run_sums(weights.index_select(0, swapped).unsqueeze(-1) * grad_out.index_select(0, key), starts)
        return grad_q.mul_(scale), grad_k.mul_(scale), grad_v, None, None, None, None


class ViewMiniAttention(nn.Module):
    def __init__(self, width: int, views: int, heads: int = 6, head_dim: int = 2):
        super().__init__()
        self.views, self.heads, self.head_dim = views, heads, head_dim
        inner = heads * head_dim
        self.norm_weight = nn.Parameter(torch.ones(views, width))
        self.norm_bias = nn.Parameter(torch.zeros(views, width))
        self.qkv_weight = nn.Parameter(torch.empty(views, width, 3 * inner))
        self.qkv_bias = nn.Parameter(torch.zeros(views, 3 * inner))
        self.out_weight = nn.Parameter(torch.empty(views, inner, width))
        self.out_bias = nn.Parameter(torch.zeros(views, width))
        # nn.Linear's default initialisation, per view.
        nn.init.uniform_(self.qkv_weight, -1 / math.sqrt(width), 1 / math.sqrt(width))
        nn.init.uniform_(self.out_weight, -1 / math.sqrt(inner), 1 / math.sqrt(inner))

    def forward(self, x: torch.Tensor, pairs: CellPairs) -> torch.Tensor:
        """x (B, G, D) -> Y = x + attention, per view, view-major: (M, B * G, D)."""
        flat = x.reshape(-1, x.shape[-1])
        return _ResidualOutProjection.apply(flat, self._attend(x, pairs), self.out_weight, self.out_bias)

    def pooled(self, x: torch.Tensor, pairs: CellPairs, segments: torch.Tensor,
               by_segment: BagTranspose) -> torch.Tensor:
        """``forward`` then mean + max pooling of Y per cell: (U, D), one row per cell of
        ``segments`` (M * B * G,), whose rows ``by_segment`` lists. On the CPU a C kernel pools
        without building Y (any2point.native); elsewhere the same formulas in PyTorch."""
        flat = x.reshape(-1, x.shape[-1])
        o = self._attend(x, pairs)
        if kernels_apply(flat, o, self.out_weight, self.out_bias):
            return native_projected_pooling(x, o, self.out_weight, self.out_bias, segments, by_segment.members,
                                            by_segment.offsets)
        y = _ResidualOutProjection.apply(flat, o, self.out_weight, self.out_bias)
        return mean_plus_max(y.reshape(-1, flat.shape[-1]), segments, by_segment)

    def _attend(self, x: torch.Tensor, pairs: CellPairs) -> torch.Tensor:
        """Tokens (B, G, D) -> every view's attention output before its projection, (M, B * G, H * E)."""
        (B, G, D), M, H, E = x.shape, self.views, self.heads, self.head_dim
        T = B * G
        xn = F.layer_norm(x.reshape(T, D), (D,))
        # (xn * w_m + b_m) @ W_m + c_m == xn @ (w_m[:, None] * W_m) + (b_m @ W_m + c_m), all
        # views in one matmul (T, D) @ (D, M * 3HE): its backward never builds a (M, T, D) gradient
        weight = (self.norm_weight.unsqueeze(-1) * self.qkv_weight).permute(1, 0, 2).reshape(D, -1)
        bias = torch.einsum("md,mde->me", self.norm_bias, self.qkv_weight) + self.qkv_bias
        qkv = torch.addmm(bias.reshape(-1), xn, weight).view(T, M, -1)  # (T, M, 3HE)
        if kernels_apply(qkv):  # on the CPU: reads q, k, v where the matmul put them
            return native_pair_attention(qkv, H, E, pairs, G)
        q, k, v = qkv.transpose(0, 1).reshape(M * T, 3, H, E).unbind(1)
        return pair_attention(q, k, v, pairs).view(M, T, H * E)


class _ResidualOutProjection(torch.autograd.Function):
    """x + o_m @ W_m + b_m for every view m: (T, D), (M, T, K), (M, K, D), (M, D) -> (M, T, D).

    One pass: the bias rides on a column of ones. The backward computes o's gradient as
    (W_m @ dY_m^T)^T, which MKL runs 1.7x faster than dY_m @ W_m^T at these thin shapes,
    and skips the gradient of that column of ones."""

    @staticmethod
    def forward(ctx, x, o, weight, bias):
        o_and_one = torch.cat([o, o.new_ones(*o.shape[:2], 1)], dim=-1)
        ctx.save_for_backward(o_and_one, weight)
        return torch.baddbmm(x.unsqueeze(0), o_and_one, torch.cat([weight, bias.unsqueeze(1)], dim=1))

    @staticmethod
    def backward(ctx, grad):
        o_and_one, weight = ctx.saved_tensors
        grad_o = torch.bmm(weight, grad.transpose(1, 2)).transpose(1, 2) if ctx.needs_input_grad[1] else None
        grad_weight_bias = torch.bmm(o_and_one.transpose(1, 2), grad)  # (M, K + 1, D)
        grad_x = grad.sum(0) if ctx.needs_input_grad[0] else None
        return grad_x, grad_o, grad_weight_bias[:, :-1], grad_weight_bias[:, -1]
