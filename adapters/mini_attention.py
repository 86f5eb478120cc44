"""Per-view mini attention: tokens attend only to tokens of the same cloud and cell.

One small attention per view (LayerNorm, qkv D -> 3*heads*head_dim, out -> D), shared by
all blocks. All views run batched: the per-view weights are stacked, the LayerNorm's
affine part is folded into the qkv weights (so the (views, tokens, D) normalised copy is
never built), and attention is evaluated only on the pairs that share a cell: with cells of
n tokens that is sum(n^2) scores instead of a dense G x G matrix per cloud, view and head.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["ViewMiniAttention", "pair_attention"]


def pair_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, query: torch.Tensor,
                   key: torch.Tensor) -> torch.Tensor:
    """Softmax attention restricted to the listed (query, key) pairs.

    q, k, v: (T, H, E); query, key: (P,) with every query listed at least once (itself).
    Returns (T, H, E), equal to dense attention with a mask that allows exactly these pairs.
    """
    T, H, E = q.shape
    # index_select rather than t[idx]: its backward is an index_add, not a sorting index_put.
    scores = (q.index_select(0, query) * k.index_select(0, key)).sum(-1) * (1.0 / math.sqrt(E))  # (P, H)
    index = query.unsqueeze(-1).expand(-1, H)
    peak = scores.new_full((T, H), float("-inf")).scatter_reduce(0, index, scores.detach(), "amax")
    expo = (scores - peak.index_select(0, query)).exp()
    denom = expo.new_zeros(T, H).index_add(0, query, expo)
    weights = expo / denom.index_select(0, query)
    return v.new_zeros(T, H, E).index_add(0, query, weights.unsqueeze(-1) * v.index_select(0, key))


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

    def forward(self, x: torch.Tensor, pair_query: torch.Tensor, pair_key: torch.Tensor) -> torch.Tensor:
        """x (B, G, D) -> Y = x + attention, per view, view-major: (M, B * G, D)."""
        B, G, D = x.shape
        M, H, E = self.views, self.heads, self.head_dim
        flat = x.reshape(B * G, D)
        xn = F.layer_norm(flat, (D,))
        # (xn * w_m + b_m) @ W_m + c_m == xn @ (w_m[:, None] * W_m) + (b_m @ W_m + c_m), all
        # views in one matmul (BG, D) @ (D, M * 3HE): its backward never builds a (M, BG, D) gradient
        weight = (self.norm_weight.unsqueeze(-1) * self.qkv_weight).permute(1, 0, 2).reshape(D, -1)
        bias = torch.einsum("md,mde->me", self.norm_bias, self.qkv_weight) + self.qkv_bias
        qkv = torch.addmm(bias.reshape(-1), xn, weight).view(B * G, M, -1).transpose(0, 1)  # (M, BG, 3HE)
        q, k, v = qkv.reshape(M * B * G, 3, H, E).unbind(1)
        o = pair_attention(q, k, v, pair_query, pair_key).view(M, B * G, H * E)
        # x + o @ W_out + b_out in one pass: the bias rides on a column of ones.
        o = torch.cat([o, o.new_ones(M, B * G, 1)], dim=-1)
        out = torch.cat([self.out_weight, self.out_bias.unsqueeze(1)], dim=1)  # (M, HE + 1, D)
        return torch.baddbmm(flat.unsqueeze(0), o, out)
