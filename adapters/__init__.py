"""The Any-to-3D guided adapter (docs/method.md#guided-adapter) and its parts: the bottleneck
beside each block's FFN, the cells and voxels of a forward pass, the per-view mini attention
and the pooling. "Adapter" means this one thing; the bottleneck alone is the ``bottleneck``
baseline's part."""
from .bottleneck import Bottleneck, QuickGELU
from .cells import CellAssignment, batch_segments, cells_per_cloud, view_cells, voxel_cells
from .guided import AdapterConfig, BlockAdapter, GuidedAdapters
from .mini_attention import ViewMiniAttention
from .pooling import pool_rows

__all__ = ["AdapterConfig", "GuidedAdapters", "BlockAdapter", "Bottleneck", "QuickGELU", "ViewMiniAttention",
           "CellAssignment", "cells_per_cloud", "view_cells", "voxel_cells", "batch_segments", "pool_rows"]
