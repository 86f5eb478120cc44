"""Which tokens share a cell: per view (1D segments / 2D pixel cells) and in 3D (voxels).

Computed once per forward pass from the view positions and the token centres, then shared
by every block's adapter. A view's cells form a fixed grid per cloud (``cells_per_cloud``
of them: ceil(L / g) segments of a 1D table of L rows, or the g-pixel cells of a 2D
canvas). The release keeps every cell of that grid (empty ones as zero rows) and its
per-view BatchNorm counts them all; only occupied cells get a row here, and the BatchNorm
adds the empty ones to its statistics by count (``view_batch_norm``).
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

    Per-cell features live in one (M, rows_per_view, D) tensor: view m's occupied cells (of all
    clouds, in grid order) are its first rows, padded with zero rows up to the most occupied
    view (``rows_per_view``), so that every view's statistics are one batched reduction.
    Pooling token-views into those rows and summing them back per token are ``embedding_bag``
    calls: the tokens are never copied once per view.

    view_cells: (M, B, G) cell of every token in every view, in [0, cells_per_cloud).
    cell_rows: (M * B * G,) the row of each token-view among the occupied cells of the batch,
        view-major (all of view 0's occupied cells first, in grid order, then view 1's, ...).
    occupied_per_view: the number of occupied cells of each view (R in all).
    cell_index: (B * G * M,) each token-view's row in the (M * rows_per_view) per-cell rows,
        token-major (token * M + view).
    bag_members: (B * G * M,) the token-views (token-major ids) ordered by that row;
        ``bag_offsets`` (M * rows_per_view,) where each row's members start (padding rows
        have none); ``row_sizes`` (M, rows_per_view) float32, the members of each row.
    pair_query, pair_key: (P,) the token-view pairs that share a cloud, view and cell (every
        token-view with itself included), as token-major ids, sorted by query;
        ``keys_per_query`` (B * G * M,) the pairs of each query (the size of its cell). The
        mini attention runs over these pairs only.
    voxel_segments: (B * G,) compact voxel id of every token; ``voxel_counts`` (V,) the
        tokens in each of the V occupied voxels.
    """

    views: int
    cells_per_cloud: int = 0
    view_cells: torch.Tensor | None = None
    cell_rows: torch.Tensor | None = None
    occupied_per_view: tuple[int, ...] = ()
    cell_index: torch.Tensor | None = None
    bag_members: torch.Tensor | None = None
    bag_offsets: torch.Tensor | None = None
    row_sizes: torch.Tensor | None = None
    pair_query: torch.Tensor | None = None
    pair_key: torch.Tensor | None = None
    keys_per_query: torch.Tensor | None = None
    voxel_segments: torch.Tensor | None = None
    voxel_counts: torch.Tensor | None = None

    @property
    def num_voxels(self) -> int:
        return 0 if self.voxel_counts is None else self.voxel_counts.shape[0]

    @property
    def num_cells(self) -> int:
        """R: the occupied cells of all views."""
        return sum(self.occupied_per_view)

    @property
    def rows_per_view(self) -> int:
        return 0 if self.row_sizes is None else self.row_sizes.shape[1]

    @property
    def grid_rows_per_view(self) -> int:
        """Cells of one view's grid over the whole batch, empty ones included (what the
        release's per-view BatchNorm averages over)."""
        return 0 if self.view_cells is None else self.view_cells.shape[1] * self.cells_per_cloud

    @classmethod
    def of_view_cells(cls, local: torch.Tensor, cells_per_cloud: int, **voxels) -> "CellAssignment":
        """From the local cell ids (M, B, G) of every token in every view."""
        M, B, G = local.shape
        device = local.device
        first_row = torch.arange(M * B, device=device).view(M, B, 1) * cells_per_cloud
        grid_row = (first_row + local).reshape(-1)  # row in the dense (M * B * cells_per_cloud) grid
        occupied, cell_rows = torch.unique(grid_row, return_inverse=True)  # sorted: view-major
        view_of = torch.div(occupied, B * cells_per_cloud, rounding_mode="floor")
        per_view = torch.bincount(view_of, minlength=M)
        rows = max(int(per_view.max()), 1)
        first_of_view = torch.cumsum(per_view, 0) - per_view
        view = torch.arange(M, device=device).repeat_interleave(B * G)  # view of each view-major token-view
        padded = view * rows + cell_rows - first_of_view[view]  # (M * B * G,) view-major
        cell_index = padded.view(M, B * G).t().reshape(-1)  # token-major
        bag_members = torch.argsort(cell_index, stable=True)
        sizes = torch.bincount(cell_index, minlength=M * rows)
        offsets = torch.cumsum(sizes, 0) - sizes
        query, key, keys_per_query = _same_cell_pairs(cell_rows, M, B * G)
        return cls(M, cells_per_cloud, local, cell_rows, tuple(per_view.tolist()), cell_index, bag_members, offsets,
                   sizes.view(M, rows).float(), query, key, keys_per_query, **voxels)


def _same_cell_pairs(cell_rows: torch.Tensor, views: int,
                     tokens: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """All (query, key) pairs of token-views in the same occupied cell, as token-major rows
    (token * views + view), sorted by query, and the keys of each query (its cell's size);
    ``cell_rows`` numbers the token-views view-major."""
    cell = cell_rows.view(views, tokens).t().reshape(-1)  # token-major
    size = torch.bincount(cell)
    order = torch.argsort(cell, stable=True)  # the token-views of cell 0, then of cell 1, ...
    start = torch.cumsum(size, 0) - size
    keys_per_query = size[cell]
    query = torch.repeat_interleave(torch.arange(cell.numel(), device=cell.device), keys_per_query)
    first_pair = torch.cumsum(keys_per_query, 0) - keys_per_query
    within = torch.arange(query.numel(), device=cell.device) - first_pair[query]
    return query, order[start[cell[query]] + within], keys_per_query


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
