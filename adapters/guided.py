"""The Any-to-3D guided adapter, one per frozen block, plus the parts all blocks share.

Inside block l (h = x + Attn(LN x), f = FFN(LN h)):
  1. a bottleneck adapter parallel to the FFN: x = h + f + s * A(f)   (the FFN hook);
  2. after the block, on the point tokens X (cls set aside), for each view j:
     Y = X + MiniAttn_j(LN X) masked to same cloud and cell; pool Y per cell (mean + max),
     BN + GELU (per block and view), broadcast back -> F_j;
  3. a 3D reference: X pooled per voxel of the token centres (mean + max), BN + GELU -> X3d;
  4. w_j = (cos(F_j, X3d) + 1) / 2 normalised over views; X = X + c * sum_j w_j F_j.

Ablation switches: ``view_cells=False`` keeps the adapter and the 3D reference only
(X = X + c * X3d); ``reference='uniform'`` weights the views equally; ``guided=False`` is
the plain bottleneck-adapter baseline.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from any2point.ops import scatter_max, scatter_mean
from any2point.projections import ViewPositions

from .bottleneck import BottleneckAdapter
from .cells import CellAssignment, batch_segments, view_cells, voxel_cells
from .mini_attention import ViewMiniAttention

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


def _pool_broadcast(values: torch.Tensor, segments: torch.Tensor, num: int) -> torch.Tensor:
    """Mean + max of ``values`` (..., D) per segment (...), given back to every member."""
    flat, seg = values.reshape(-1, values.shape[-1]), segments.reshape(-1)
    pooled = scatter_mean(flat, seg, num) + scatter_max(flat, seg, num)
    return pooled[seg].view_as(values)


class BlockAdapter(nn.Module):
    """The trainable parts of one block: bottleneck adapter and its BatchNorms."""

    def __init__(self, width: int, views: int, config: AdapterConfig):
        super().__init__()
        self.bottleneck = BottleneckAdapter(width, config.rank, config.scale, config.dropout)
        self.views = views
        if config.guided and config.view_cells:
            self.view_norm = nn.BatchNorm1d(views * width)
        if config.guided and config.reference == "voxel":
            self.reference_norm = nn.BatchNorm1d(width)

    def views_feature(self, pooled: torch.Tensor) -> torch.Tensor:
        """BN + GELU per view on (B, M, G, D), statistics per view and channel."""
        B, M, G, D = pooled.shape
        z = self.view_norm(pooled.permute(0, 2, 1, 3).reshape(B * G, M * D))
        return F.gelu(z).view(B, G, M, D).permute(0, 2, 1, 3)

    def reference_feature(self, pooled: torch.Tensor) -> torch.Tensor:
        B, G, D = pooled.shape
        return F.gelu(self.reference_norm(pooled.reshape(B * G, D))).view(B, G, D)


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
        """Cells and voxels of this forward pass, shared by all blocks."""
        cfg = self.config
        if not cfg.guided:
            return None
        view_seg = same = vox_seg = None
        n_view = n_vox = 0
        if cfg.view_cells:
            local = view_cells(where, cfg.cell, self.canvas)  # (B, M, G)
            view_seg, n_view = batch_segments(local)
            same = (local.unsqueeze(-1) == local.unsqueeze(-2)).unsqueeze(2)  # (B, M, 1, G, G)
        if cfg.reference == "voxel":
            vox_seg, n_vox = batch_segments(voxel_cells(centres, cfg.voxel))
        return CellAssignment(view_seg, n_view, same, vox_seg, n_vox)

    def ffn_hook(self, index: int):
        return self.blocks[index].bottleneck

    def aggregate(self, index: int, x: torch.Tensor, cells: CellAssignment | None) -> torch.Tensor:
        """Guided aggregation on the point tokens x (B, G, D) after block ``index``."""
        if cells is None:
            return x
        block, c = self.blocks[index], self.config.coef
        reference = None
        if cells.voxel_segments is not None:
            reference = block.reference_feature(_pool_broadcast(x, cells.voxel_segments, cells.num_voxel_segments))
        if cells.view_segments is None:
            return x + c * reference
        y = self.mini_attention(x, cells.same_cell)  # (B, M, G, D)
        views = block.views_feature(_pool_broadcast(y, cells.view_segments, cells.num_view_segments))
        if reference is None:
            weights = views.new_full(views.shape[:3], 1.0 / self.views)
        else:
            weights = (F.cosine_similarity(views, reference.unsqueeze(1), dim=-1) + 1) / 2  # (B, M, G)
            weights = weights / weights.sum(dim=1, keepdim=True).clamp_min(1e-6)
        return x + c * (weights.unsqueeze(-1) * views).sum(dim=1)
