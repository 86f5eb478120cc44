"""Per-view mini attention: tokens attend only to tokens of the same cloud and cell.

One small attention per view (LayerNorm, qkv D -> 3*heads*head_dim, out -> D), shared by
all blocks. All views run in one batched call: the per-view weights are stacked and applied
with einsum, and the cell mask goes to scaled_dot_product_attention.
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
        """x (B, G, D), same_cell (B, M, 1, G, G) -> x + attention, per view: (B, M, G, D)."""
        B, G, D = x.shape
        M, H, E = self.views, self.heads, self.head_dim
        xn = F.layer_norm(x, (D,)).unsqueeze(1) * self.norm_weight[:, None] + self.norm_bias[:, None]  # (B,M,G,D)
        qkv = torch.einsum("bmgd,mde->bmge", xn, self.qkv_weight) + self.qkv_bias[:, None]
        q, k, v = qkv.view(B, M, G, 3, H, E).permute(3, 0, 1, 4, 2, 5).unbind(0)  # (B,M,H,G,E)
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=same_cell)
        o = o.transpose(2, 3).reshape(B, M, G, H * E)
        return x.unsqueeze(1) + torch.einsum("bmge,med->bmgd", o, self.out_weight) + self.out_bias[:, None]
