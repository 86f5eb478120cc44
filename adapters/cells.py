"""Which tokens share a cell: per view (1D segments / 2D pixel cells) and in 3D (voxels).

Computed once per forward pass from the view positions and the token centres, then shared
by every block's adapter. Cells are numbered per (cloud, view) and relabelled to one
compact range over the batch, so pooling is a single scatter over all clouds and views and
never mixes two clouds.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from any2point.ops import compact_ids
from any2point.projections import ViewPositions

__all__ = ["CellAssignment", "view_cells", "voxel_cells", "batch_segments"]


@dataclass(frozen=True)
class CellAssignment:
    """``view_segments`` (B, M, G) and ``voxel_segments`` (B, G): compact ids over the batch;
    ``same_cell`` (B, M, 1, G, G) bool: token i may attend to token j (same cloud, view, cell)."""

    view_segments: torch.Tensor | None
    num_view_segments: int
    same_cell: torch.Tensor | None
    voxel_segments: torch.Tensor | None
    num_voxel_segments: int


def view_cells(where: ViewPositions, cell: float, canvas: tuple[int, int] | None) -> torch.Tensor:
    """Cell index of each token in each view, (B, M, G), local to its (cloud, view)."""
    idx = torch.div(where.source_units, cell, rounding_mode="floor").long()  # (B, M, G, P)
    if where.kind == "2d":
        cols = math.ceil(canvas[1] / cell)
        local = idx[..., 0] * cols + idx[..., 1]
    else:
        local = idx[..., 0]
    return local


def voxel_cells(centres: torch.Tensor, size: float) -> torch.Tensor:
    """Voxel index of each centre (B, G, 3) on a grid of ``size``, local to its cloud."""
    v = torch.div(centres.float(), size, rounding_mode="floor").long()
    v = v - v.amin(dim=1, keepdim=True)
    extent = v.amax(dim=(0, 1)) + 1  # (3,)
    return v[..., 0] + extent[0] * (v[..., 1] + extent[1] * v[..., 2])


def batch_segments(local: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Local ids (B, ..., G) -> compact ids unique to each leading (cloud[, view]) slice."""
    lead = local.shape[:-1]
    span = int(local.max()) + 1 if local.numel() else 1
    slice_id = torch.arange(math.prod(lead), device=local.device).view(*lead, 1)
    return compact_ids(slice_id * span + local)
