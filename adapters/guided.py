"""The Any-to-3D guided adapter, one per frozen block, plus the parts all blocks share.

Inside block l (h = x + Attn(LN x), f = FFN(LN h)):
  1. a bottleneck parallel to the FFN: x = h + f + s * A(f)   (the block's FFN hook);
  2. after the block, on the point tokens X (cls set aside), for each view j:
     Y = X + MiniAttn_j(LN X) masked to same cloud and cell; pool Y per cell (mean, or
     mean + max), BatchNorm + GELU whose batch is every cell of the grid of every cloud
     (empty cells count as zero rows, as in the release), broadcast back -> F_j;
  3. a 3D reference: X pooled per occupied voxel of the token centres (mean + max),
     BatchNorm1d + GELU over the voxels -> X3d;
  4. w_j = (cos(F_j, X3d) + 1) / 2 normalised over views; X = X + c * sum_j w_j F_j.

Plain PyTorch throughout, the same on CPU and GPU, and no (views x tokens x D) copy of the
tokens: only occupied cells get a row (a 2D grid has more cells than a cloud has tokens:
DINOv2, 400 per view for 128 tokens), and the per-view BatchNorm adds the empty cells to its
statistics by count (``view_batch_norm``); the mini attention runs over the token pairs that
share a cell, with a segment softmax, and stays at its own width; Y is never built for the
mean pooling (the out-projection is linear: mean(Y) = mean(X) + Out(mean(attention)), both
means one ``embedding_bag``); the view sum is one weighted ``embedding_bag``. The dot
products of the view weights are the one place that gathers each token-view's cell row.
docs/profile.md explains the formulation; tests/test_aggregation_reformulation.py checks it
against the dense formula. The statistics (the attention's softmax, pooling sums, the
BatchNorm batch statistics, the view weights) are computed in float32 even under bf16
autocast; only the qkv matmul follows autocast.

Ablation switches: ``view_cells=False`` keeps the bottleneck and the 3D reference only
(X = X + c * X3d); ``reference='uniform'`` weights the views equally. The bottleneck alone,
without steps 2-4, is the baseline ``peft=bottleneck`` (any2point.peft.bottleneck).

Post-LN sources (BERT family: h = LN(x + Attn x), output LN(h + f)): ``seam`` says where
step 4's term joins. ``before_norm`` (default): X is the block's residual sum h + f + s*A(f)
and the block's output LayerNorm normalises X + c * sum_j w_j F_j, so the next block reads
a normalised stream, as in the pre-LN release. ``after_norm``: X is the block's output
LN(h + f + s*A(f)) and the term is added after it, un-normalised (the placement before
issue 26, kept for the ablation). The bottleneck's term is inside the LayerNorm either way.
Pre-LN sources have no output norm: both values are the same computation.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.profiler import record_function

from any2point import checks
from any2point.errors import ConfigError
from any2point.projections import ViewPositions

from .bottleneck import Bottleneck
from .cells import CellAssignment, batch_segments, cells_per_cloud, view_cells, voxel_cells
from .mini_attention import ViewMiniAttention
from .pooling import POOL_MODES, max_rows, pool_rows

__all__ = ["AdapterConfig", "GuidedAdapters", "BlockAdapter", "SEAMS", "REFERENCES"]

# the 3D reference the views are weighed against (AdapterConfig.reference)
REFERENCES = ("voxel", "uniform")
# where a post-LN block takes the aggregation term (AdapterConfig.seam)
SEAMS = ("before_norm", "after_norm")


@dataclass
class AdapterConfig:
    """The settings of the guided adapter (``model.adapter``); the bottleneck baseline reads
    its bottleneck's (rank, scale, dropout) from here too."""

    rank: int = 16  # r: bottleneck width
    scale: float = 0.3  # s: bottleneck scale
    coef: float = 0.3  # c: weight of the guided aggregation
    cell: float = 2.0  # g: 1D segment length (rows) or 2D cell size (pixels)
    voxel: float = 0.08  # g3: 3D reference voxel size, unit-sphere units
    dropout: float = 0.1
    mini_heads: int = 6
    mini_head_dim: int = 2
    pool: str = "mean"  # per-view cell pooling: 'mean' | 'mean_max' (the voxels always pool mean + max)
    view_cells: bool = True  # False: ablation without 1D/2D cells (bottleneck + 3D reference)
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
        if not self.view_cells and self.reference == "uniform":
            raise ConfigError("model.adapter.view_cells=false with model.adapter.reference=uniform leaves the adapter "
                              "nothing to aggregate; the bottleneck alone is peft=bottleneck")


def float32_statistics(x: torch.Tensor):
    """A region computed in float32 (or the inputs' wider type) whatever autocast is active outside it."""
    return torch.autocast(x.device.type, enabled=False)


def at_least_float32(x: torch.Tensor) -> torch.Tensor:
    return x if x.dtype in (torch.float32, torch.float64) else x.float()


def token_view_rows(cell_features: torch.Tensor, cells: CellAssignment) -> torch.Tensor:
    """Each token-view's cell features, (B * G, M, D) token-major, from the per-cell rows
    (M, rows_per_view, D): the one copy of (views x tokens x D) the aggregation makes (for the
    dot products of the view weights)."""
    D = cell_features.shape[-1]
    return cell_features.reshape(-1, D).index_select(0, cells.cell_index).view(-1, cells.views, D)


def view_weights(cell_features: torch.Tensor, reference: torch.Tensor, cells: CellAssignment) -> torch.Tensor:
    """w_j = (cos(F_j, X3d) + 1) / 2 normalised over the views, (B * G, M), from the per-cell
    features (M, rows_per_view, D) and the 3D reference (B * G, D).

    torch's cosine_similarity, written out: F_j's norms are taken per cell (fewer than the
    token-views), then read per token-view; each norm is clamped on its own at 1e-8, as
    cosine_similarity does."""
    eps = 1e-8
    dots = (token_view_rows(cell_features, cells) * reference.unsqueeze(1)).sum(-1)  # (B * G, M)
    norms = torch.linalg.vector_norm(cell_features, dim=-1).clamp_min(eps).reshape(-1)
    norms = norms.index_select(0, cells.cell_index).view_as(dots)
    cosine = dots / (norms * torch.linalg.vector_norm(reference, dim=-1).clamp_min(eps).unsqueeze(1))
    weights = (cosine + 1) / 2
    return weights / weights.sum(1, keepdim=True).clamp_min(1e-6)


def weighted_sum(cell_features: torch.Tensor, weights: torch.Tensor, cells: CellAssignment) -> torch.Tensor:
    """sum_j w_j F_j -> (B * G, D), from the per-cell features (M, rows_per_view, D) and the
    weights (B * G, M): one gather-and-sum (embedding_bag), forward and backward, where
    gathering F_j first would copy (views x tokens x D)."""
    D = cell_features.shape[-1]
    return F.embedding_bag(cells.cell_index.view(-1, cells.views), cell_features.reshape(-1, D),
                           per_sample_weights=weights, mode="sum")


def view_batch_norm(rows: torch.Tensor, norms: nn.ModuleList, rows_per_view: int) -> torch.Tensor:
    """Training-mode BatchNorm1d per view over ``rows_per_view`` rows, of which the given ones are
    ``rows`` (M, N_given, D) (view m's are ``rows[m]``, padding as zero rows) and the others
    are zero rows. Equal to ``norms[m]`` applied to view m's dense grid and restricted to the
    given rows, gradients and running statistics included (tests/test_model.py); in eval mode
    it normalises with the running statistics, as BatchNorm1d. All views at once."""
    M, given, D = rows.shape
    N = rows_per_view
    norms = list(norms)
    if norms[0].training or norms[0].running_mean is None:
        mean = rows.sum(1) / N  # (M, D)
        centred = rows - mean.unsqueeze(1)
        # biased variance over all N rows: each row outside ``rows`` adds (0 - mean)^2
        var = ((centred * centred).sum(1) + (N - given) * mean * mean) / N
        if norms[0].training and norms[0].track_running_stats:
            with torch.no_grad():
                unbiased = var * N / max(N - 1, 1)
                for m, norm in enumerate(norms):
                    norm.num_batches_tracked += 1
                    factor = norm.momentum if norm.momentum is not None else 1.0 / float(norm.num_batches_tracked)
                    norm.running_mean.lerp_(mean[m].to(norm.running_mean.dtype), factor)
                    norm.running_var.lerp_(unbiased[m].to(norm.running_var.dtype), factor)
    else:
        mean = torch.stack([n.running_mean for n in norms]).to(rows.dtype)
        var = torch.stack([n.running_var for n in norms]).to(rows.dtype)
        centred = rows - mean.unsqueeze(1)
    weight = torch.stack([n.weight for n in norms]).to(rows.dtype)
    bias = torch.stack([n.bias for n in norms]).to(rows.dtype)
    scale = torch.rsqrt(var + norms[0].eps) * weight  # (M, D)
    return torch.addcmul(bias.unsqueeze(1), centred, scale.unsqueeze(1))


def voxel_reference(tokens: torch.Tensor, norm: nn.BatchNorm1d, cells: CellAssignment) -> torch.Tensor:
    """X3d: the tokens (B * G, D) pooled per occupied voxel (mean + max), BatchNorm1d over the
    voxels and GELU, read back per token -> (B * G, D). When every voxel holds one token (small
    voxels), its mean and max are the token itself and the voxels are the tokens in another
    order, which a BatchNorm does not see: GELU(BN(2x)) straight away."""
    if cells.num_voxels == tokens.shape[0]:
        return F.gelu(norm(2 * tokens))
    pooled = pool_rows(tokens, cells.voxel_segments, cells.num_voxels, "mean_max")
    return F.gelu(norm(pooled)).index_select(0, cells.voxel_segments)


class BlockAdapter(nn.Module):
    """The trainable parts of one block's adapter: its bottleneck and its BatchNorms."""

    def __init__(self, width: int, views: int, config: AdapterConfig):
        super().__init__()
        self.bottleneck = Bottleneck(width, config.rank, config.scale, config.dropout)
        if config.view_cells:
            # one per view, over every cell of that view's grid for every cloud of the batch
            # (their parameters and running statistics; view_batch_norm computes them)
            self.view_norm = nn.ModuleList(nn.BatchNorm1d(width) for _ in range(views))
        if config.reference == "voxel":
            self.reference_norm = nn.BatchNorm1d(width)  # over the occupied voxels


class GuidedAdapters(nn.Module):
    """The adapters of every block: one BlockAdapter per block and the shared mini attention.

    ``canvas`` (H, W) for a 2D source, ``length`` (the table rows the 1D projection spans) for
    a 1D source: they fix the cell grid of every view."""

    def __init__(self, width: int, depth: int, views: int, config: AdapterConfig,
                 canvas: tuple[int, int] | None = None, length: int | None = None):
        super().__init__()  # the config checked its own values (AdapterConfig.__post_init__)
        self.config, self.canvas, self.length, self.views = config, canvas, length, views
        self.blocks = nn.ModuleList(BlockAdapter(width, views, config) for _ in range(depth))
        self.cells_per_cloud = 0
        if config.view_cells:
            self.cells_per_cloud = cells_per_cloud(config.cell, canvas, length)
            self.mini_attention = ViewMiniAttention(width, views, config.mini_heads, config.mini_head_dim)

    @torch.compiler.disable
    def assign(self, where: ViewPositions, centres: torch.Tensor) -> CellAssignment:
        """Cells, same-cell pairs and voxels of this forward pass, shared by all blocks. Eager under
        torch.compile: the voxel count depends on the data (the blocks see it as a dynamic size)."""
        cfg = self.config
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

    def ensemble(self, index: int, x: torch.Tensor,
                 cells: CellAssignment) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
        """The parts of block ``index``'s guided ensemble on the point tokens x (B, G, D), in
        float32 (or wider) whatever autocast is active: the per-view features F_j (M, B*G, D),
        their weights w_j (M, B*G), summing to 1 over the views, and the 3D reference X3d
        (B*G, D). Without view cells, F_j and w_j are None; without a 3D reference, w_j and
        X3d are None (the views weigh the same). (For inspection: the aggregation itself never
        builds the (M, B*G, D) F_j.)"""
        cell_features, weights, reference = self._ensemble_parts(index, x, cells)
        views = None if cell_features is None else token_view_rows(cell_features, cells).transpose(0, 1)
        return views, None if weights is None else weights.t(), reference

    def _ensemble_parts(self, index: int, x: torch.Tensor, cells: CellAssignment):
        """The per-cell features (M, rows_per_view, D), the view weights (B*G, M) and the 3D
        reference (B*G, D), each None where the configuration has none."""
        block = self.blocks[index]
        x = x.contiguous()  # the point tokens are a slice of the block's output: one copy, not one per use
        B, G, D = x.shape
        reference = cell_features = weights = None
        if cells.voxel_segments is not None:
            with record_function("aggregation:reference"), float32_statistics(x):
                reference = voxel_reference(at_least_float32(x.reshape(B * G, D)), block.reference_norm, cells)
        if cells.cell_index is None:
            return cell_features, weights, reference
        with record_function("aggregation:mini_attention"):
            mixed = self.mini_attention.mix(x, cells)  # (B * G * M, HE), float32
        with record_function("aggregation:cell_pooling"), float32_statistics(x):
            pooled = self._pool_cells(at_least_float32(x).reshape(B * G, D), mixed, cells)
        with record_function("aggregation:cell_norm"), float32_statistics(x):
            cell_features = F.gelu(view_batch_norm(pooled, block.view_norm, cells.grid_rows_per_view))
        if reference is not None:
            with record_function("aggregation:view_weights"), float32_statistics(x):
                weights = view_weights(cell_features, reference, cells)
        return cell_features, weights, reference

    def _pool_cells(self, tokens: torch.Tensor, mixed: torch.Tensor, cells: CellAssignment) -> torch.Tensor:
        """Y = x + Out_j(mixed) pooled per occupied cell (mean, or mean + max): (M, rows_per_view,
        D), zero on padding rows. The mean needs no Y: the out-projection is linear, so the mean
        of Y is the mean of x plus the projected mean of ``mixed``. Both means are one
        ``embedding_bag`` over the cells' members, and only the cells' rows go through the
        projection. The max needs every token-view's Y (built only for ``pool='mean_max'``)."""
        M, rows, D = self.views, cells.rows_per_view, tokens.shape[-1]
        mixed = mixed.to(tokens.dtype)
        members = cells.bag_members
        tokens_of = torch.div(members, M, rounding_mode="floor")
        mean_x = F.embedding_bag(tokens_of, tokens, cells.bag_offsets, mode="mean")  # (M * rows, D)
        mean_mixed = F.embedding_bag(members, mixed, cells.bag_offsets, mode="mean")  # (M * rows, HE)
        present = (cells.row_sizes > 0).to(tokens.dtype)
        pooled = self.mini_attention.project(mean_mixed.view(M, rows, -1), present, mean_x.view(M, rows, D))
        if self.config.pool == "mean_max":
            y = self.mini_attention.project(mixed.view(-1, M, mixed.shape[-1]).transpose(0, 1),
                                            add=tokens.unsqueeze(0))  # (M, B * G, D)
            # view-major rows of the token-views: (m, token) -> m * rows + its cell's row in view m
            index = cells.cell_index.view(-1, M).t().reshape(-1)
            pooled = pooled + max_rows(y.reshape(-1, D), index, M * rows).view(M, rows, D)
        return pooled

    def aggregate(self, index: int, x: torch.Tensor, cells: CellAssignment) -> torch.Tensor:
        """Guided aggregation on the point tokens x (B, G, D) after block ``index``:
        x + c * sum_j w_j F_j (x + c * X3d without view cells)."""
        cell_features, weights, reference = self._ensemble_parts(index, x, cells)
        with record_function("aggregation:view_sum"), float32_statistics(x):
            if cell_features is None:
                guided = reference
            else:
                if weights is None:  # the views weigh the same
                    weights = cell_features.new_full((cells.cell_index.numel() // self.views, self.views),
                                                     1.0 / self.views)
                guided = weighted_sum(cell_features, weights, cells)
        return x + self.config.coef * guided.view_as(x).to(x.dtype)
