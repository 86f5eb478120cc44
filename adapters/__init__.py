"""Adapters that make a frozen source learn 3D: the Any-to-3D guided adapter and the parts
of the PEFT baselines that live inside the blocks."""
from .bottleneck import BottleneckAdapter, QuickGELU
from .cells import CellAssignment, batch_segments, cells_per_cloud, view_cells, voxel_cells
from .guided import AdapterConfig, BlockAdapter, GuidedAdapters
from .mini_attention import ViewMiniAttention
from .pooling import pool_rows

__all__ = ["AdapterConfig", "GuidedAdapters", "BlockAdapter", "BottleneckAdapter", "QuickGELU", "ViewMiniAttention",
           "CellAssignment", "cells_per_cloud", "view_cells", "voxel_cells", "batch_segments", "pool_rows"]
