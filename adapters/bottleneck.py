"""The bottleneck: a down-up MLP that runs parallel to a frozen block's FFN.

It is the first part of every block's guided adapter (docs/method.md#guided-adapter), and the
whole of the bottleneck baseline (``peft=bottleneck``)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["QuickGELU", "Bottleneck"]


class QuickGELU(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


class Bottleneck(nn.Module):
    """f -> scale * up(dropout(QuickGELU(down(f)))), D -> r -> D.

    The up-projection starts at zero, so at initialisation the block it runs in equals the
    frozen block."""

    def __init__(self, width: int, rank: int, scale: float, dropout: float = 0.1):
        super().__init__()
        self.scale = scale
        self.down = nn.Linear(width, rank)
        self.act = QuickGELU()
        self.dropout = nn.Dropout(dropout)
        self.up = nn.Linear(rank, width)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        # the scale goes into the (rank x width) up-projection, not over the (tokens x width) output
        hidden = self.dropout(self.act(self.down(f)))
        return F.linear(hidden, self.up.weight * self.scale, self.up.bias * self.scale)
