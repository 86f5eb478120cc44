"""The Any-to-3D guided adapter, one per frozen block, plus the parts all blocks share.

Inside block l (h = x + Attn(LN x), f = FFN(LN h)):
  1. a bottleneck adapter parallel to the FFN: x = h + f + s * A(f)   (the FFN hook);
  2. after the block, on the point tokens X (cls set aside), for each view j:
     Y = X + MiniAttn_j(LN X) masked to same cloud and cell; pool Y per cell (mean + max),
     BN + GELU over the cells (per block and view), broadcast back -> F_j;
  3. a 3D reference: X pooled per voxel of the token centres (mean + max), BN + GELU over
     the voxels -> X3d;
  4. w_j = (cos(F_j, X3d) + 1) / 2 normalised over views; X = X + c * sum_j w_j F_j.

On the CPU the mini attention, the pooling, the per-view BN and step 4 run as C kernels
(any2point.native) that never build the per-view copies of the tokens; the PyTorch code is
their reference and the GPU path.

Ablation switches: ``view_cells=False`` keeps the adapter and the 3D reference only
(X = X + c * X3d); ``reference='uniform'`` weights the views equally; ``guided=False`` is
the plain bottleneck-adapter baseline.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from any2point.native import kernels_apply
from any2point.native.guided_sum import native_guided_sum
from any2point.ops import BagTranspose, gathered_dots, mean_plus_max, weighted_bag
from any2point.projections import ViewPositions

from .bottleneck import BottleneckAdapter
from .cells import CellAssignment, batch_segments, same_cell_pairs, view_cells, voxel_cells
from .mini_attention import ViewMiniAttention
from .norm import GroupedBatchNorm

__all__ = ["AdapterConfig", "GuidedAdapters", "BlockAdapter"]


@dataclass
class AdapterConfig:
    rank: int = 16  # r: bottleneck width
    scale: float = 0.3  # s: bottleneck adapter scale
    coef: float = 0.3  # c: weight of the guided aggregation
    cell: float = 2.0  # g: 1D segment length (rows) or 2D cell size (pixels)
    voxel: float = 0.08  # g3: 3D reference voxel size, unit-sphere units
    dropout: float = 0.1
    mini_heads: int = 6
    mini_head_dim: int = 2
    guided: bool = True  # False: bottleneck adapters only (baseline)
    view_cells: bool = True  # False: ablation without 1D/2D cells (adapter + 3D reference)
    reference: str = "voxel"  # 'voxel' | 'uniform' (ablation: no 3D reference, equal view weights)
    pool: str = "mean"  # cell pooling: 'mean' | 'mean_max' (implemented by the `simplify` branch)


def _token_reference(norm: nn.Module, tokens: torch.Tensor, cells: CellAssignment) -> torch.Tensor:
    """The 3D reference feature of every token (R, D): its voxel's pooled, normalised feature.

    When every voxel holds one token (voxels smaller than the token spacing, as with the
    MiniLM preset at 128 tokens per cloud) the pooling is 2x the token itself, and
    BatchNorm's statistics do not depend on the row order, so the voxel scatter and the
    gather back are skipped; the result is the same."""
    if cells.num_voxels == tokens.shape[0]:
        return F.gelu(norm(2 * tokens))
    pooled = mean_plus_max(tokens, cells.voxel_segments, cells.voxel_rows)
    return F.gelu(norm(pooled)).index_select(0, cells.voxel_segments)


def _cosine_to_cells(views: torch.Tensor, reference: torch.Tensor, cells: CellAssignment) -> torch.Tensor:
    """cos(F_j, X3d) of every token (R) with its cell in every view j: (R, M).

    The dot products of the raw features divided by the two norms (clamped as F.normalize
    does) is the same number as the dot of the normalised features, without normalising
    the (U, D) and (R, D) features themselves (two fewer passes each way)."""
    index = cells.token_cells
    dots = gathered_dots(views, index, reference, cells.cell_tokens)
    view_norm = views.norm(dim=-1).clamp_min(1e-12).index_select(0, index.reshape(-1)).view_as(dots)
    return dots / (view_norm * reference.norm(dim=-1).clamp_min(1e-12).unsqueeze(-1))


class BlockAdapter(nn.Module):
    """The trainable parts of one block: bottleneck adapter and its BatchNorms."""

    def __init__(self, width: int, views: int, config: AdapterConfig):
        super().__init__()
        self.bottleneck = BottleneckAdapter(width, config.rank, config.scale, config.dropout)
        if config.guided and config.view_cells:
            self.view_norm = GroupedBatchNorm(views, width)  # per view, over that view's cells
        if config.guided and config.reference == "voxel":
            self.reference_norm = nn.BatchNorm1d(width)  # over the voxels


class GuidedAdapters(nn.Module):
    """All adapters of a model: one BlockAdapter per block and the shared mini attention."""

    def __init__(self, width: int, depth: int, views: int, config: AdapterConfig,
                 canvas: tuple[int, int] | None = None):
        super().__init__()
        if config.reference not in ("voxel", "uniform"):
            raise ValueError(f"adapter.reference must be 'voxel' or 'uniform', got {config.reference!r}")
        if config.guided and not config.view_cells and config.reference == "uniform":
            raise ValueError("adapter.view_cells=false with adapter.reference=uniform leaves nothing to aggregate; "
                             "use adapter.guided=false for plain bottleneck adapters")
        self.config, self.canvas, self.views = config, canvas, views
        self.blocks = nn.ModuleList(BlockAdapter(width, views, config) for _ in range(depth))
        if config.guided and config.view_cells:
            self.mini_attention = ViewMiniAttention(width, views, config.mini_heads, config.mini_head_dim)

    def assign(self, where: ViewPositions, centres: torch.Tensor) -> CellAssignment | None:
        """Cells, attention pairs and voxels of this forward pass, shared by all blocks."""
        cfg = self.config
        if not cfg.guided:
            return None
        parts = {}
        if cfg.view_cells:
            local = view_cells(where, cfg.cell, self.canvas).transpose(0, 1)  # (M, B, G), view-major
            view_seg, n_view = batch_segments(local.reshape(self.views * local.shape[1], -1))
            view_seg = view_seg.reshape(-1)
            per_view = view_seg.numel() // self.views
            seg_view = torch.zeros(n_view, dtype=torch.long, device=view_seg.device)
            seg_view[view_seg] = torch.arange(view_seg.numel(), device=view_seg.device) // per_view
            cell_rows = BagTranspose.of(view_seg.unsqueeze(1), n_view)
            token_cells = view_seg.view(self.views, -1).t().contiguous()  # (B*G, M)
            parts.update(view_segments=view_seg, segment_view=seg_view, cell_rows=cell_rows,
                         pairs=same_cell_pairs(view_seg, cell_rows), token_cells=token_cells,
                         cell_tokens=BagTranspose.of(token_cells, n_view))
        if cfg.reference == "voxel":
            vox_seg, n_vox = batch_segments(voxel_cells(centres, cfg.voxel))
            vox_seg = vox_seg.reshape(-1)
            parts.update(voxel_segments=vox_seg, num_voxels=n_vox,
                         voxel_rows=BagTranspose.of(vox_seg.unsqueeze(1), n_vox))
        return CellAssignment(self.views, **parts)

    def ffn_hook(self, index: int):
        return self.blocks[index].bottleneck

    def aggregate(self, index: int, x: torch.Tensor, cells: CellAssignment | None) -> torch.Tensor:
        """Guided aggregation on the point tokens x (B, G, D) after block ``index``."""
        if cells is None:
            return x
        block, c = self.blocks[index], self.config.coef
        B, G, D = x.shape
        x = x.contiguous()  # the point tokens are a slice of the block's output: copy them once, not per use
        reference = None
        if cells.voxel_segments is not None:
            reference = _token_reference(block.reference_norm, x.reshape(B * G, D), cells)  # (B*G, D)
        if cells.view_segments is None:
            return x + c * reference.view(B, G, D)
        pooled = self.mini_attention.pooled(x, cells.pairs, cells.view_segments, cells.cell_rows)  # (U, D)
        views = F.gelu(block.view_norm(pooled, cells.segment_view))  # (U, D), one row per cell
        cell_of = cells.token_cells  # (B*G, M)
        if reference is not None and kernels_apply(views, reference):  # the CPU kernel: one pass each way
            return x + c * native_guided_sum(views, reference, cell_of, B).view(B, G, D)
        if reference is None:
            weights = views.new_full(cell_of.shape, 1.0 / self.views)
        else:
            weights = (_cosine_to_cells(views, reference, cells) + 1) / 2  # (B*G, M)
            weights = weights / weights.sum(dim=1, keepdim=True).clamp_min(1e-6)
        # sum_j w_j F_j without building the (B*G, M, D) stack: a weighted embedding bag.
        guided = weighted_bag(views, cell_of, weights.to(views.dtype), cells.cell_tokens)
        return x + c * guided.view(B, G, D)
