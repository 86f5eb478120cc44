"""Per-view mini attention: tokens attend only to tokens of the same cloud and cell.

One small attention per view (LayerNorm, qkv D -> 3*heads*head_dim, out -> D), shared by
all blocks. All views run batched: the per-view weights are stacked, and the LayerNorm's
affine part is folded into the qkv weights, so the (views, tokens, D) normalised copy is
never built. The scores are scaled by (heads * head_dim)^-1/2, the whole qkv width, as the
release does (not the head width).

A cell holds a few tokens, so the attention runs over the pairs of token-views that share
a cell (``CellAssignment.pair_query`` / ``pair_key``, sorted by query) with a softmax per
query computed by segment (``torch.segment_reduce``), instead of a dense masked (tokens x tokens)
attention per view and cloud: its work grows with the pairs, a few per token-view. Its output
stays at the attention's width (heads * head_dim); the out-projection to D is linear, so the
aggregation applies it after pooling, to the cells (``project``).
"""
from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["ViewMiniAttention"]


class ViewMiniAttention(nn.Module):
    def __init__(self, width: int, views: int, heads: int = 6, head_dim: int = 2):
        super().__init__()
        self.views, self.heads, self.head_dim = views, heads, head_dim
        inner = heads * head_dim
        self.scale = inner ** -0.5
        self.norm_weight = nn.Parameter(torch.ones(views, width))
        self.norm_bias = nn.Parameter(torch.zeros(views, width))
        self.qkv_weight = nn.Parameter(torch.empty(views, width, 3 * inner))
        self.qkv_bias = nn.Parameter(torch.zeros(views, 3 * inner))
        self.out_weight = nn.Parameter(torch.empty(views, inner, width))
        self.out_bias = nn.Parameter(torch.zeros(views, width))
        # nn.Linear's default initialisation, per view.
        nn.init.uniform_(self.qkv_weight, -1 / math.sqrt(width), 1 / math.sqrt(width))
        nn.init.uniform_(self.out_weight, -1 / math.sqrt(inner), 1 / math.sqrt(inner))

    def initialise_stacked(self, init_matrix: Callable[[torch.Tensor], None]) -> None:
        """``model.init``'s protocol for a module that stacks per-view layers (any2point.init):
        each view's qkv and out matrices as its own Linear (``init_matrix`` on each, all qkv
        views, then all out views), biases zero, each view's LayerNorm weight 1 and bias 0."""
        with torch.no_grad():
            for weight in (self.qkv_weight, self.out_weight):
                for view in weight:
                    init_matrix(view)
            self.qkv_bias.zero_()
            self.out_bias.zero_()
            self.norm_weight.fill_(1.0)
            self.norm_bias.zero_()

    def mix(self, x: torch.Tensor, cells) -> torch.Tensor:
        """The attention of every token-view over its cell, before the out-projection: x (B, G, D)
        -> (B * G * M, heads * head_dim), token-major rows; in float32 (or float64) whatever
        autocast is active (only the qkv matmul follows it)."""
        (B, G, D), M, H, E = x.shape, self.views, self.heads, self.head_dim
        T = B * G
        xn = F.layer_norm(x.reshape(T, D), (D,))
        # (xn * w_m + b_m) @ W_m + c_m == xn @ (w_m[:, None] * W_m) + (b_m @ W_m + c_m): all views
        # in one (T, D) @ (D, M * 3HE) matmul
        weight = (self.norm_weight.unsqueeze(-1) * self.qkv_weight).permute(1, 0, 2).reshape(D, -1)
        bias = torch.einsum("md,mde->me", self.norm_bias, self.qkv_weight) + self.qkv_bias
        qkv = torch.addmm(bias.reshape(-1), xn, weight)  # (T, M * 3HE), token-major rows of (T * M) token-views
        with torch.autocast(x.device.type, enabled=False):
            qkv = qkv if qkv.dtype in (torch.float32, torch.float64) else qkv.float()
            q, kv = qkv.view(T * M, 3 * H * E).split([H * E, 2 * H * E], dim=1)
            query, key, per_query = cells.pair_query, cells.pair_key, cells.keys_per_query
            P = query.numel()
            k, v = kv.index_select(0, key).split(H * E, dim=1)  # (P, HE) each
            products = ((q * self.scale).index_select(0, query) * k).view(P, H, E)
            scores = products[..., 0]  # (P, H): E - 1 strided adds beat a reduction over E
            for i in range(1, E):
                scores = scores + products[..., i]
            # softmax over each query's keys, as sum_j exp(s_ij) v_j / sum_j exp(s_ij): one segment
            # sum over the pairs (sorted by query), then one division per query; the scores are
            # shifted by the query's largest (any constant per query gives the same softmax and
            # gradients; this one keeps exp in range)
            top = torch.segment_reduce(scores.detach(), "max", lengths=per_query, unsafe=True)
            e = (scores - top.index_select(0, query)).exp()
            numerator = (e.unsqueeze(-1) * v.view(P, H, E)).view(P, H * E)
            weighted = torch.segment_reduce(numerator, "sum", lengths=per_query, unsafe=True)
            total = torch.segment_reduce(e, "sum", lengths=per_query, unsafe=True)
            mixed = (weighted.view(-1, H, E) / total.unsqueeze(-1)).view(T * M, H * E)
        return mixed

    def project(self, mixed: torch.Tensor, present: torch.Tensor | None = None,
                add: torch.Tensor | None = None) -> torch.Tensor:
        """The out-projection of view m on rows of that view, plus ``add``: ``mixed`` (M, N,
        heads * head_dim) -> (M, N, D), one batched matmul; ``present`` (M, N) scales the bias
        (0 on padding rows; None: 1 everywhere)."""
        M, N, _ = mixed.shape
        weight = torch.cat([self.out_weight, self.out_bias.unsqueeze(1)], 1).to(mixed.dtype)  # (M, HE + 1, D)
        ones = mixed.new_ones(M, N) if present is None else present.to(mixed.dtype)
        mixed = torch.cat([mixed, ones.unsqueeze(-1)], -1)
        if add is None:
            return torch.bmm(mixed, weight)
        return torch.baddbmm(add.to(mixed.dtype).expand(M, N, -1), mixed, weight)

    def forward(self, x: torch.Tensor, cells) -> torch.Tensor:
        """Y = x + attention per view, view-major (M, B * G, D): what the aggregation pools (it builds
        Y itself only for ``pool='mean_max'``; the mean needs none), for inspection and tests."""
        B, G, D = x.shape
        mixed = self.mix(x, cells).view(B * G, self.views, -1).transpose(0, 1)
        return self.project(mixed, add=x.reshape(1, B * G, D))
