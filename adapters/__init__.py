"""Adapters that make a frozen source learn 3D: the Any-to-3D guided adapter and the parts
of the PEFT baselines that live inside the blocks."""
from .bottleneck import BottleneckAdapter, QuickGELU
from .cells import CellAssignment, CellPairs, batch_segments, same_cell_pairs, view_cells, voxel_cells
from .guided import AdapterConfig, BlockAdapter, GuidedAdapters
from .mini_attention import ViewMiniAttention, pair_attention
from .norm import GroupedBatchNorm

__all__ = ["AdapterConfig", "GuidedAdapters", "BlockAdapter", "BottleneckAdapter", "QuickGELU", "ViewMiniAttention",
           "CellAssignment", "CellPairs", "view_cells", "voxel_cells", "batch_segments", "same_cell_pairs",
           "pair_attention", "GroupedBatchNorm"]
