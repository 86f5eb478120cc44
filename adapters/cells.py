"""Which tokens share a cell: per view (1D segments / 2D pixel cells) and in 3D (voxels).

Computed once per forward pass from the view positions and the token centres, then shared
by every block's adapter. Cells are numbered per (view, cloud) and relabelled to one
compact range over the batch, view-major, so pooling is a single scatter over all clouds
and views, never mixes two clouds, and the rows of one view are contiguous.

Per-view tensors are laid out view-major: token-view ``t = m * (B * G) + b * G + g``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import torch

from any2point.ops import BagTranspose, compact_ids
from any2point.projections import ViewPositions

__all__ = ["CellAssignment", "CellPairs", "view_cells", "voxel_cells", "batch_segments", "same_cell_pairs"]


class CellPairs(NamedTuple):
    """Every (query, key) pair of token-views that share a cloud, a view and a cell.

    query, key: (P,) token-view indices, sorted by query, so each query's pairs are one run;
    starts: (R,) where each query's run begins (every query has one: itself);
    swapped: (P,) the index of pair (key, query), which exists because sharing a cell is
        symmetric; sums over the pairs of one key are then runs too (mini attention backward).
    """

    query: torch.Tensor
    key: torch.Tensor
    starts: torch.Tensor
    swapped: torch.Tensor


@dataclass(frozen=True)
class CellAssignment:
    """Everything the adapters of one forward pass need to know about cells.

    view_segments: (M * B * G,) compact cell id of every token-view, view-major; ``cell_rows``
        the same read per cell (the token-views of each cell, for pooling).
    segment_view: (U,) the view each of the U cells belongs to.
    pairs: the mini attention's sparsity pattern (CellPairs).
    voxel_segments: (B * G,) compact voxel id of every token; ``num_voxels`` of them, and
        ``voxel_rows`` the tokens of each voxel.
    token_cells: (B * G, M) the cell of every token in every view (``view_segments``
        token-major), and ``cell_tokens`` the same index read per cell (for gathered_dots).
    """

    views: int
    view_segments: torch.Tensor | None = None
    segment_view: torch.Tensor | None = None
    pairs: CellPairs | None = None
    voxel_segments: torch.Tensor | None = None
    num_voxels: int = 0
    token_cells: torch.Tensor | None = None
    cell_tokens: BagTranspose | None = None
    cell_rows: BagTranspose | None = None
    voxel_rows: BagTranspose | None = None

    @property
    def num_view_segments(self) -> int:
        return 0 if self.segment_view is None else int(self.segment_view.numel())


def view_cells(where: ViewPositions, cell: float, canvas: tuple[int, int] | None) -> torch.Tensor:
    """Cell index of each token in each view, (B, M, G), local to its (cloud, view)."""
    idx = torch.div(where.source_units, cell, rounding_mode="floor").long()  # (B, M, G, P)
    if where.kind == "2d":
        cols = math.ceil(canvas[1] / cell)
        return idx[..., 0] * cols + idx[..., 1]
    return idx[..., 0]


def voxel_cells(centres: torch.Tensor, size: float) -> torch.Tensor:
    """Voxel index of each centre (B, G, 3) on a grid of ``size``, local to its cloud."""
    v = torch.div(centres.float(), size, rounding_mode="floor").long()
    v = v - v.amin(dim=1, keepdim=True)
    extent = v.amax(dim=(0, 1)) + 1  # (3,)
    return v[..., 0] + extent[0] * (v[..., 1] + extent[1] * v[..., 2])


def batch_segments(local: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Local ids (S1, ..., G) -> compact ids unique to each leading slice, in slice order."""
    lead = local.shape[:-1]
    span = int(local.max()) + 1 if local.numel() else 1
    slice_id = torch.arange(math.prod(lead), device=local.device).view(*lead, 1)
    return compact_ids(slice_id * span + local)


def same_cell_pairs(segments: torch.Tensor, by_segment: BagTranspose) -> CellPairs:
    """All (query, key) pairs of elements with the same segment id, sorted by query; no Python
    loop. ``by_segment`` is ``BagTranspose.of(segments.unsqueeze(1), num_segments)``.

    For a segment of n elements this lists its n * n pairs."""
    members, offsets = by_segment.members, by_segment.offsets
    arange = torch.arange(segments.numel(), device=segments.device)
    counts = torch.diff(offsets, append=offsets.new_tensor([segments.numel()]))
    per_query = counts[segments]  # keys each element attends to: its segment's size
    query = torch.repeat_interleave(arange, per_query)
    starts = torch.cumsum(per_query, 0) - per_query
    rank = torch.arange(query.numel(), device=segments.device) - starts[query]
    key = members[offsets[segments[query]] + rank]
    place = torch.empty_like(arange)  # each element's rank among its segment's members
    place[members] = arange - offsets[segments[members]]
    return CellPairs(query, key, starts, starts[key] + place[query])
