"""Per-view mini attention: tokens attend only to tokens of the same cloud and cell.

One small attention per view (LayerNorm, qkv D -> 3*heads*head_dim, out -> D), shared by
all blocks. All views run batched: the per-view weights are stacked, and the LayerNorm's
affine part is folded into the qkv weights, so the (views, tokens, D) normalised copy is
never built. Attention is torch's scaled_dot_product_attention with a same-cell mask per
(view, cloud); its scores are scaled by (heads * head_dim)^-1/2, the whole qkv width, as
the release does (not the head width).
"""
from __future__ import annotations

import math

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

    def forward(self, x: torch.Tensor, same_cell: torch.Tensor) -> torch.Tensor:
        """x (B, G, D) and the mask ``same_cell`` (M * B, 1, G, G) -> Y = x + attention per view,
        view-major: (M, B * G, D)."""
        (B, G, D), M, H, E = x.shape, self.views, self.heads, self.head_dim
        T = B * G
        xn = F.layer_norm(x.reshape(T, D), (D,))
        # (xn * w_m + b_m) @ W_m + c_m == xn @ (w_m[:, None] * W_m) + (b_m @ W_m + c_m): all views
        # in one (T, D) @ (D, M * 3HE) matmul
        weight = (self.norm_weight.unsqueeze(-1) * self.qkv_weight).permute(1, 0, 2).reshape(D, -1)
        bias = torch.einsum("md,mde->me", self.norm_bias, self.qkv_weight) + self.qkv_bias
        qkv = torch.addmm(bias.reshape(-1), xn, weight)  # (T, M * 3HE)
        q, k, v = qkv.view(B, G, M, 3, H, E).permute(3, 2, 0, 4, 1, 5).reshape(3, M * B, H, G, E).unbind(0)
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=same_cell, scale=self.scale)  # (M*B, H, G, E)
        o = o.view(M, B, H, G, E).permute(0, 1, 3, 2, 4).reshape(M, T, H * E)
        return torch.baddbmm(self.out_bias.unsqueeze(1), o, self.out_weight) + x.reshape(1, T, D)
