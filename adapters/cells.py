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

import torch

from any2point.ops import BagTranspose, compact_ids
from any2point.projections import ViewPositions

__all__ = ["CellAssignment", "view_cells", "voxel_cells", "batch_segments", "same_cell_pairs"]


@dataclass(frozen=True)
class CellAssignment:
    """Everything the adapters of one forward pass need to know about cells.

    view_segments: (M * B * G,) compact cell id of every token-view, view-major.
    segment_view: (U,) the view each of the U cells belongs to.
    pair_query, pair_key: (P,) token-view indices of every (query, key) pair that share a
        cloud, a view and a cell (the mini attention's sparsity pattern), sorted by query.
    voxel_segments: (B * G,) compact voxel id of every token; ``num_voxels`` of them.
    token_cells: (B * G, M) the cell of every token in every view (``view_segments``
        token-major), and ``cell_tokens`` the same index read per cell (for gathered_dots).
    """

    views: int
    view_segments: torch.Tensor | None
    segment_view: torch.Tensor | None
    pair_query: torch.Tensor | None
    pair_key: torch.Tensor | None
    voxel_segments: torch.Tensor | None
    num_voxels: int
    token_cells: torch.Tensor | None = None
    cell_tokens: BagTranspose | None = None

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


def same_cell_pairs(segments: torch.Tensor, num_segments: int) -> tuple[torch.Tensor, torch.Tensor]:
    """All (query, key) index pairs of elements with the same segment id, sorted by query.

    For a segment of n elements this lists its n * n pairs; no Python loop."""
    by_segment = BagTranspose.of(segments.unsqueeze(1), num_segments)  # members: elements grouped by segment
    order, starts = by_segment.members, by_segment.offsets
    per_query = torch.bincount(segments, minlength=num_segments)[segments]  # keys each element attends to
    query = torch.repeat_interleave(torch.arange(segments.numel(), device=segments.device), per_query)
    first_pair = torch.cumsum(per_query, 0) - per_query
    rank = torch.arange(query.numel(), device=segments.device) - first_pair[query]
    key = order[starts[segments[query]] + rank]
    return query, key
