"""The Any-to-3D guided adapter, one per frozen block, plus the parts all blocks share.

Inside block l (h = x + Attn(LN x), f = FFN(LN h)):
  1. a bottleneck adapter parallel to the FFN: x = h + f + s * A(f)   (the FFN hook);
  2. after the block, on the point tokens X (cls set aside), for each view j:
     Y = X + MiniAttn_j(LN X) masked to same cloud and cell; pool Y per cell (mean, or
     mean + max), BatchNorm + GELU whose batch is every cell of the grid of every cloud
     (empty cells count as zero rows, as in the release), broadcast back -> F_j;
  3. a 3D reference: X pooled per occupied voxel of the token centres (mean + max),
     BatchNorm1d + GELU over the voxels -> X3d;
  4. w_j = (cos(F_j, X3d) + 1) / 2 normalised over views; X = X + c * sum_j w_j F_j.

Plain PyTorch throughout, the same on CPU and GPU. Only occupied cells get a row: a 2D grid
has more cells than a cloud has tokens (DINOv2: 400 per view, 128 tokens), and the dense grid
was most of the adapters' memory and time; the per-view BatchNorm adds the empty cells to its
statistics by count (``view_batch_norm``). The statistics (pooling sums, the BatchNorm batch
statistics, the view weights) are computed in float32 even under bf16 autocast; only the
mini attention's matmuls follow autocast.

Ablation switches: ``view_cells=False`` keeps the adapter and the 3D reference only
(X = X + c * X3d); ``reference='uniform'`` weights the views equally; ``guided=False`` is
the plain bottleneck-adapter baseline.

Post-LN sources (BERT family: h = LN(x + Attn x), output LN(h + f)): ``seam`` says where
step 4's term joins. ``before_norm`` (default): X is the block's residual sum h + f + s*A(f)
and the block's output LayerNorm normalises X + c * sum_j w_j F_j, so the next block reads
a normalised stream, as in the pre-LN release. ``after_norm``: X is the block's output
LN(h + f + s*A(f)) and the term is added after it, un-normalised (the placement before
issue 26, kept for the ablation). The adapter's term is inside the LayerNorm either way.
Pre-LN sources have no output norm: both values are the same computation.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from any2point import checks
from any2point.errors import ConfigError
from any2point.projections import ViewPositions

from .bottleneck import BottleneckAdapter
from .cells import CellAssignment, batch_segments, cells_per_cloud, view_cells, voxel_cells
from .mini_attention import ViewMiniAttention
from .pooling import POOL_MODES, pool_rows

__all__ = ["AdapterConfig", "GuidedAdapters", "BlockAdapter", "SEAMS", "REFERENCES"]

# the 3D reference the views are weighed against (AdapterConfig.reference)
REFERENCES = ("voxel", "uniform")
# where a post-LN block takes the aggregation term (AdapterConfig.seam)
SEAMS = ("before_norm", "after_norm")


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
    pool: str = "mean"  # per-view cell pooling: 'mean' | 'mean_max' (the voxels always pool mean + max)
    guided: bool = True  # False: bottleneck adapters only (baseline)
    view_cells: bool = True  # False: ablation without 1D/2D cells (adapter + 3D reference)
    reference: str = "voxel"  # 'voxel' | 'uniform' (ablation: no 3D reference, equal view weights)
    # post-LN sources: the aggregation joins the residual sum before the block's output LayerNorm
    # ('before_norm') or is added after it ('after_norm', the placement before issue 26); pre-LN: the same
    seam: str = "before_norm"

    def __post_init__(self) -> None:
        key = "model.adapter."
        checks.integer(key + "rank", self.rank, 1)
        checks.number(key + "scale", self.scale)
        checks.number(key + "coef", self.coef)
        checks.number(key + "cell", self.cell, above=0)
        checks.number(key + "voxel", self.voxel, above=0)
        checks.fraction(key + "dropout", self.dropout)
        checks.integer(key + "mini_heads", self.mini_heads, 1)
        checks.integer(key + "mini_head_dim", self.mini_head_dim, 1)
        checks.one_of(key + "pool", self.pool, POOL_MODES)
        checks.one_of(key + "reference", self.reference, REFERENCES)
        checks.one_of(key + "seam", self.seam, SEAMS)
        if self.guided and not self.view_cells and self.reference == "uniform":
            raise ConfigError("model.adapter.view_cells=false with model.adapter.reference=uniform leaves nothing to "
                              "aggregate; use model.adapter.guided=false for plain bottleneck adapters")


def float32_statistics(x: torch.Tensor):
    """A region computed in float32 (or the inputs' wider type) whatever autocast is active outside it."""
    return torch.autocast(x.device.type, enabled=False)


def at_least_float32(x: torch.Tensor) -> torch.Tensor:
    return x if x.dtype in (torch.float32, torch.float64) else x.float()


def view_weights(cell_features: torch.Tensor, views: torch.Tensor, reference: torch.Tensor,
                 cell_rows: torch.Tensor) -> torch.Tensor:
    """w_j = (cos(F_j, X3d) + 1) / 2 normalised over the views, (M, T), for the per-view features
    ``views`` (M, T, D) gathered from ``cell_features`` (rows, D) by ``cell_rows`` (M * T,).

    torch's cosine_similarity, written out: its own kernel normalises both (M, T, D) operands
    and its backward makes several more passes over them (3x slower for MiniLM). F_j's norms
    are taken per occupied cell (there are at most as many as token-views), then gathered."""
    M, T, _ = views.shape
    eps = 1e-8  # cosine_similarity's: each norm is clamped on its own
    norms = torch.linalg.vector_norm(cell_features, dim=-1).clamp_min(eps).index_select(0, cell_rows).view(M, T)
    cosine = (views * reference).sum(-1) / (norms * torch.linalg.vector_norm(reference, dim=-1).clamp_min(eps))
    weights = (cosine + 1) / 2
    return weights / weights.sum(0, keepdim=True).clamp_min(1e-6)


def weighted_sum(cell_features: torch.Tensor, cell_rows: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """sum_j w_j F_j -> (T, D), from the cells (rows, D), the row of each token-view (M * T,)
    and the weights (M, T): one gather-and-sum (embedding_bag), forward and backward, where
    (w_j * F_j).sum(0) would make three passes over (M, T, D) and einsum T tiny products."""
    M, T = weights.shape
    return F.embedding_bag(cell_rows.view(M, T).t(), cell_features, per_sample_weights=weights.t(), mode="sum")


def view_batch_norm(rows: torch.Tensor, occupied_per_view: tuple[int, ...], norms: nn.ModuleList,
                    rows_per_view: int) -> torch.Tensor:
    """Training-mode BatchNorm1d per view over ``rows_per_view`` rows of which only the occupied
    ones are given (``rows`` (R, D), view-major, ``occupied_per_view`` of each view); the
    others are zero rows. Equal to ``norms[m]`` applied to view m's dense grid and restricted
    to the given rows, gradients and running statistics included (tests/test_model.py); in
    eval mode it normalises with the running statistics, as BatchNorm1d.

    View by view with broadcast statistics, so that autograd keeps one (R, D) tensor, as
    BatchNorm1d itself does (gathering per-row statistics would keep more)."""
    N, out = rows_per_view, []
    for x, norm in zip(rows.split(list(occupied_per_view)), norms):
        if norm.training or norm.running_mean is None:
            mean = x.sum(0) / N
            centred = x - mean
            # biased variance over all N rows: each empty one adds (0 - mean)^2
            var = ((centred * centred).sum(0) + (N - x.shape[0]) * mean * mean) / N
            if norm.training and norm.track_running_stats:
                with torch.no_grad():
                    norm.num_batches_tracked += 1
                    factor = norm.momentum if norm.momentum is not None else 1.0 / float(norm.num_batches_tracked)
                    norm.running_mean.lerp_(mean.to(norm.running_mean.dtype), factor)
                    norm.running_var.lerp_((var * N / max(N - 1, 1)).to(norm.running_var.dtype), factor)
        else:
            mean, var = norm.running_mean.to(x.dtype), norm.running_var.to(x.dtype)
            centred = x - mean
        out.append(centred * (torch.rsqrt(var + norm.eps) * norm.weight) + norm.bias)
    return torch.cat(out)


class BlockAdapter(nn.Module):
    """The trainable parts of one block: bottleneck adapter and its BatchNorms."""

    def __init__(self, width: int, views: int, config: AdapterConfig):
        super().__init__()
        self.bottleneck = BottleneckAdapter(width, config.rank, config.scale, config.dropout)
        if config.guided and config.view_cells:
            # one per view, over every cell of that view's grid for every cloud of the batch
            # (their parameters and running statistics; view_batch_norm computes them)
            self.view_norm = nn.ModuleList(nn.BatchNorm1d(width) for _ in range(views))
        if config.guided and config.reference == "voxel":
            self.reference_norm = nn.BatchNorm1d(width)  # over the occupied voxels


class GuidedAdapters(nn.Module):
    """All adapters of a model: one BlockAdapter per block and the shared mini attention.

    ``canvas`` (H, W) for a 2D source, ``length`` (the table rows the 1D projection spans) for
    a 1D source: they fix the cell grid of every view."""

    def __init__(self, width: int, depth: int, views: int, config: AdapterConfig,
                 canvas: tuple[int, int] | None = None, length: int | None = None):
        super().__init__()  # the config checked its own values (AdapterConfig.__post_init__)
        self.config, self.canvas, self.length, self.views = config, canvas, length, views
        self.blocks = nn.ModuleList(BlockAdapter(width, views, config) for _ in range(depth))
        self.cells_per_cloud = 0
        if config.guided and config.view_cells:
            self.cells_per_cloud = cells_per_cloud(config.cell, canvas, length)
            self.mini_attention = ViewMiniAttention(width, views, config.mini_heads, config.mini_head_dim)

    @torch.compiler.disable
    def assign(self, where: ViewPositions, centres: torch.Tensor) -> CellAssignment | None:
        """Cells, attention mask and voxels of this forward pass, shared by all blocks. Eager under
        torch.compile: the voxel count depends on the data (the blocks see it as a dynamic size)."""
        cfg = self.config
        if not cfg.guided:
            return None
        voxels = {}
        if cfg.reference == "voxel":
            segments, count = batch_segments(voxel_cells(centres, cfg.voxel))
            segments = segments.reshape(-1)
            voxels = dict(voxel_segments=segments, voxel_counts=torch.bincount(segments, minlength=count))
        if not cfg.view_cells:
            return CellAssignment(self.views, **voxels)
        local = self.view_cells(where).transpose(0, 1)  # (M, B, G)
        return CellAssignment.of_view_cells(local.contiguous(), self.cells_per_cloud, **voxels)

    def view_cells(self, where: ViewPositions) -> torch.Tensor:
        """The cell of every token in every view, (B, M, G), local to its cloud and view."""
        return view_cells(where, self.config.cell, self.canvas, self.length)

    def ffn_hook(self, index: int):
        return self.blocks[index].bottleneck

    def ensemble(self, index: int, x: torch.Tensor,
                 cells: CellAssignment) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
        """The parts of block ``index``'s guided ensemble on the point tokens x (B, G, D), in
        float32 (or wider) whatever autocast is active: the per-view features F_j (M, B*G, D),
        their weights w_j (M, B*G), summing to 1 over the views, and the 3D reference X3d
        (B*G, D). Without view cells, F_j and w_j are None; without a 3D reference, w_j and
        X3d are None (the views weigh the same)."""
        _, views, weights, reference = self._ensemble_parts(index, x, cells)
        return views, weights, reference

    def _ensemble_parts(self, index: int, x: torch.Tensor, cells: CellAssignment):
        """``ensemble``'s three parts, preceded by the features of the occupied cells (R, D) that
        F_j gathers from."""
        block = self.blocks[index]
        x = x.contiguous()  # the point tokens are a slice of the block's output: one copy, not one per use
        B, G, D = x.shape
        reference = cell_features = views = weights = None
        if cells.voxel_segments is not None:
            with float32_statistics(x):
                tokens = at_least_float32(x.reshape(B * G, D))
                pooled = pool_rows(tokens, cells.voxel_segments, cells.num_voxels, "mean_max")
                reference = F.gelu(block.reference_norm(pooled)).index_select(0, cells.voxel_segments)  # (B*G, D)
        if cells.cell_rows is None:
            return cell_features, views, weights, reference
        y = self.mini_attention(x, cells.same_cell)  # (M, B*G, D)
        M = self.views
        with float32_statistics(x):
            pooled = pool_rows(at_least_float32(y).reshape(M * B * G, D), cells.cell_rows, cells.num_cells,
                               self.config.pool)  # (R occupied cells, D)
            normed = view_batch_norm(pooled, cells.occupied_per_view, block.view_norm, cells.grid_rows_per_view)
            cell_features = F.gelu(normed)
            views = cell_features.index_select(0, cells.cell_rows).view(M, B * G, D)  # F_j
            if reference is not None:
                weights = view_weights(cell_features, views, reference, cells.cell_rows)
        return cell_features, views, weights, reference

    def aggregate(self, index: int, x: torch.Tensor, cells: CellAssignment | None) -> torch.Tensor:
        """Guided aggregation on the point tokens x (B, G, D) after block ``index``:
        x + c * sum_j w_j F_j (x + c * X3d without view cells)."""
        if cells is None:
            return x
        cell_features, views, weights, reference = self._ensemble_parts(index, x, cells)
        with float32_statistics(x):
            if views is None:
                guided = reference
            elif weights is None:
                guided = views.mean(0)
            else:
                guided = weighted_sum(cell_features, cells.cell_rows, weights)
        return x + self.config.coef * guided.view_as(x).to(x.dtype)
