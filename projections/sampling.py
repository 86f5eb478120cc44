"""Reading a frozen position table at continuous positions.

Linear between adjacent rows (1D) and bilinear between the four surrounding entries (2D);
a position that is exactly an integer returns exactly that entry, the last row included.
"""
from __future__ import annotations

import torch

__all__ = ["sample_rows", "sample_grid"]


def _split(coord: torch.Tensor, size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Lower index, upper index and fraction for positions in [0, size-1]."""
    if size == 1:
        zero = torch.zeros_like(coord, dtype=torch.long)
        return zero, zero, torch.zeros_like(coord)
    lo = coord.floor().long().clamp(0, size - 2)
    frac = (coord - lo.to(coord.dtype)).clamp(0, 1)
    return lo, lo + 1, frac


def sample_rows(table: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """table (L, D), rows (...) in [0, L-1] -> (..., D)."""
    lo, hi, f = _split(rows, table.shape[0])
    f = f.unsqueeze(-1).to(table.dtype)
    return table[lo] * (1 - f) + table[hi] * f


def sample_grid(table: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
    """table (R, C, D), coords (..., 2) as (row, col) in the grid -> (..., D)."""
    R, C, D = table.shape
    r0, r1, fr = _split(coords[..., 0], R)
    c0, c1, fc = _split(coords[..., 1], C)
    flat = table.reshape(R * C, D)
    fr, fc = fr.unsqueeze(-1).to(table.dtype), fc.unsqueeze(-1).to(table.dtype)
    top = flat[r0 * C + c0] * (1 - fc) + flat[r0 * C + c1] * fc
    bottom = flat[r1 * C + c0] * (1 - fc) + flat[r1 * C + c1] * fc
    return top * (1 - fr) + bottom * fr
