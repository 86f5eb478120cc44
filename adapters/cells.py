"""Which tokens share a cell: per view (1D segments / 2D pixel cells) and in 3D (voxels).

Computed once per forward pass from the view positions and the token centres, then shared
by every block's adapter. A view's cells form a fixed grid per cloud (``cells_per_cloud``
of them: ceil(L / g) segments of a 1D table of L rows, or the g-pixel cells of a 2D
canvas). The release keeps every cell of that grid (empty ones as zero rows) and its
per-view BatchNorm counts them all; only occupied cells get a row here, numbered view-major,
and the BatchNorm adds the empty ones to its statistics by count (``view_batch_norm``).
Voxels are numbered per cloud and relabelled to one compact range over the batch; only
occupied voxels get a row.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from any2point.ops import compact_ids
from any2point.projections import ViewPositions

__all__ = ["CellAssignment", "cells_per_cloud", "view_cells", "voxel_cells", "batch_segments"]


@dataclass(frozen=True)
class CellAssignment:
    """Everything the adapters of one forward pass need to know about cells.

    view_cells: (M, B, G) cell of every token in every view, in [0, cells_per_cloud).
    cell_rows: (M * B * G,) the row of each token-view among the occupied cells of the batch,
        view-major (all of view 0's occupied cells first, in grid order, then view 1's, ...).
    occupied_per_view: the number of occupied cells of each view (R in all).
    same_cell: (M * B, 1, G, G) True where two tokens of one cloud share a cell of one view
        (the mini attention's mask; every token shares its cell with itself).
    voxel_segments: (B * G,) compact voxel id of every token; ``voxel_counts`` (V,) the
        tokens in each of the V occupied voxels.
    """

    views: int
    cells_per_cloud: int = 0
    view_cells: torch.Tensor | None = None
    cell_rows: torch.Tensor | None = None
    occupied_per_view: tuple[int, ...] = ()
    same_cell: torch.Tensor | None = None
    voxel_segments: torch.Tensor | None = None
    voxel_counts: torch.Tensor | None = None

    @property
    def num_voxels(self) -> int:
        return 0 if self.voxel_counts is None else self.voxel_counts.shape[0]

    @property
    def num_cells(self) -> int:
        """R: the occupied cells of all views, the rows the per-view features have."""
        return sum(self.occupied_per_view)

    @property
    def grid_rows_per_view(self) -> int:
        """Cells of one view's grid over the whole batch, empty ones included (what the
        release's per-view BatchNorm averages over)."""
        return 0 if self.view_cells is None else self.view_cells.shape[1] * self.cells_per_cloud

    @classmethod
    def of_view_cells(cls, local: torch.Tensor, cells_per_cloud: int, **voxels) -> "CellAssignment":
        """From the local cell ids (M, B, G) of every token in every view."""
        M, B, G = local.shape
        first_row = torch.arange(M * B, device=local.device).view(M, B, 1) * cells_per_cloud
        grid_row = (first_row + local).reshape(-1)  # row in the dense (M * B * cells_per_cloud) grid
        occupied, cell_rows = torch.unique(grid_row, return_inverse=True)  # sorted: view-major
        view_of = torch.div(occupied, B * cells_per_cloud, rounding_mode="floor")
        per_view = tuple(torch.bincount(view_of, minlength=M).tolist())
        same = local.unsqueeze(-1) == local.unsqueeze(-2)  # (M, B, G, G)
        return cls(M, cells_per_cloud, local, cell_rows, per_view, same.view(M * B, 1, G, G), **voxels)


def cells_per_cloud(cell: float, canvas: tuple[int, int] | None, length: int | None) -> int:
    """Cells of one view's grid: ceil(H / g) * ceil(W / g) pixel cells of a 2D canvas (H, W),
    or ceil(L / g) segments of a 1D table of L rows."""
    if canvas is not None:
        return math.ceil(canvas[0] / cell) * math.ceil(canvas[1] / cell)
    if length is None:
        raise ValueError("a 1D source's cell grid needs the table length the projection spans")
    return math.ceil(length / cell)


def view_cells(where: ViewPositions, cell: float, canvas: tuple[int, int] | None,
               length: int | None = None) -> torch.Tensor:
    """Cell index of each token in each view, (B, M, G), in [0, cells_per_cloud); a position on
    the border (or past it by rounding) belongs to the last cell."""
    idx = torch.div(where.source_units, cell, rounding_mode="floor").long()  # (B, M, G, P)
    if where.kind == "2d":
        rows, cols = math.ceil(canvas[0] / cell), math.ceil(canvas[1] / cell)
        return idx[..., 0].clamp(0, rows - 1) * cols + idx[..., 1].clamp(0, cols - 1)
    return idx[..., 0].clamp(0, cells_per_cloud(cell, None, length) - 1)


def voxel_cells(centres: torch.Tensor, size: float) -> torch.Tensor:
    """Voxel index of each centre (B, G, 3) on a grid of ``size`` whose origin is the cloud's own
    min corner: floor((x - min_corner) / size), local to its cloud."""
    offset = centres.float() - centres.float().amin(dim=1, keepdim=True)
    v = torch.div(offset, size, rounding_mode="floor").long()
    extent = v.amax(dim=(0, 1)) + 1  # (3,)
    return v[..., 0] + extent[0] * (v[..., 1] + extent[1] * v[..., 2])


def batch_segments(local: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Local ids (S1, ..., G) -> compact ids unique to each leading slice, in slice order."""
    lead = local.shape[:-1]
    span = int(local.max()) + 1 if local.numel() else 1
    slice_id = torch.arange(math.prod(lead), device=local.device).view(*lead, 1)
    return compact_ids(slice_id * span + local)
