"""Batched geometry ops in pure PyTorch: farthest point sampling, kNN, gathers and
segment (cell / voxel) pooling.

Every op works on any device. For CUDA tensors, farthest point sampling uses the
compiled ``pointnet2_ops`` kernel when that optional package imports; otherwise (and
always on CPU) the pure-PyTorch path runs. Both start from index 0 and give the same
indices (tested where the extension exists).
"""
from __future__ import annotations

import contextlib
import functools
import warnings
from concurrent.futures import ThreadPoolExecutor
from typing import NamedTuple

import torch
import torch.nn.functional as F

__all__ = [
    "furthest_point_sample",
    "knn",
    "gather_points",
    "scatter_mean",
    "scatter_max",
    "mean_plus_max",
    "BagTranspose",
    "gathered_dots",
    "weighted_bag",
    "compact_ids",
    "pointnet2_ops_available",
]


@functools.lru_cache(maxsize=1)
def _pointnet2_fps():
    """The compiled FPS kernel, imported lazily once; None when the package is absent."""
    try:
        from pointnet2_ops.pointnet2_utils import furthest_point_sample as fps  # type: ignore
    except Exception:  # ImportError, or a build that fails to load its .so
        return None
    return fps


def pointnet2_ops_available() -> bool:
    return _pointnet2_fps() is not None


def furthest_point_sample(xyz: torch.Tensor, n: int, start: int | torch.Tensor = 0,
                          use_extension: bool = True) -> torch.Tensor:
    """Indices (B, n) of ``n`` points picked greedily, each the farthest from those picked.

    ``start`` is the first index: an int shared by the batch or a LongTensor (B,).
    """
    if xyz.dim() != 3 or xyz.shape[-1] != 3:
        raise ValueError(f"furthest_point_sample expects xyz of shape (B, N, 3), got {tuple(xyz.shape)}")
    B, N, _ = xyz.shape
    if not 0 < n <= N:
        raise ValueError(f"furthest_point_sample: cannot pick n={n} points out of N={N}")
    fixed_zero_start = isinstance(start, int) and start == 0
    if use_extension and xyz.is_cuda and fixed_zero_start and _pointnet2_fps() is not None:
        return _pointnet2_fps()(xyz.float().contiguous(), n).long()
    if xyz.device.type == "cpu":
        return _fps_cpu(xyz, n, start)
    return _fps_torch(xyz, n, start)


@contextlib.contextmanager
def _one_intra_op_thread():
    """torch ops on one thread inside the block (restored after)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield threads
    finally:
        torch.set_num_threads(threads)


def _fps_cpu(xyz: torch.Tensor, n: int, start: int | torch.Tensor) -> torch.Tensor:
    """FPS on the CPU, parallel over clouds rather than inside each step.

    Each FPS step is a few small ops, for which OpenMP hand-offs cost more than they save
    (and on a busy machine an oversubscribed pool is 10-20x slower). So every op runs on
    one thread and the clouds are split over Python threads (torch releases the GIL in
    its kernels)."""
    with _one_intra_op_thread() as threads:
        B = xyz.shape[0]
        parts = min(threads, B)
        if parts <= 1:
            return _fps_torch(xyz, n, start)
        bounds = [B * i // parts for i in range(parts + 1)]
        starts = [start if not isinstance(start, torch.Tensor) or start.numel() == 1 else start[a:b]
                  for a, b in zip(bounds, bounds[1:])]
        with ThreadPoolExecutor(max_workers=parts) as pool:
            chunks = pool.map(lambda i: _fps_torch(xyz[bounds[i]:bounds[i + 1]], n, starts[i]), range(parts))
            return torch.cat(list(chunks))


def _fps_torch(xyz: torch.Tensor, n: int, start: int | torch.Tensor) -> torch.Tensor:
    B, N, _ = xyz.shape
    pts = xyz.detach().float()
    idx = torch.empty(B, n, dtype=torch.long, device=xyz.device)
    if isinstance(start, torch.Tensor):
        cur = start.to(device=xyz.device, dtype=torch.long).expand(B).clone()
    else:
        cur = torch.full((B,), int(start), dtype=torch.long, device=xyz.device)
    mindist = torch.full((B, N), float("inf"), device=xyz.device)
    batch = torch.arange(B, device=xyz.device)
    for i in range(n):
        idx[:, i] = cur
        d = (pts - pts[batch, cur].unsqueeze(1)).square().sum(-1)
        torch.minimum(mindist, d, out=mindist)
        cur = mindist.argmax(-1)
    return idx


def knn(query: torch.Tensor, ref: torch.Tensor, k: int) -> torch.Tensor:
    """Indices (B, M, k) into ``ref`` of each query's k nearest points, nearest first."""
    if query.dim() != 3 or ref.dim() != 3 or query.shape[0] != ref.shape[0]:
        raise ValueError(f"knn expects query (B, M, 3) and ref (B, N, 3), got {tuple(query.shape)} and {tuple(ref.shape)}")
    if not 0 < k <= ref.shape[1]:
        raise ValueError(f"knn: k={k} must be in [1, {ref.shape[1]}]")
    q, r = query.detach().float(), ref.detach().float()
    # |q - r|^2 expanded as a matmul: memory O(B*M*N), no (B, M, N, 3) intermediate.
    d = q.square().sum(-1, keepdim=True) - 2.0 * q @ r.transpose(1, 2) + r.square().sum(-1).unsqueeze(1)
    return d.topk(k, dim=-1, largest=False, sorted=True).indices


def gather_points(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """Rows of ``x`` (B, N, C) at ``idx`` (B, ...) -> (B, ..., C)."""
    B = x.shape[0]
    flat = idx.reshape(B, -1)
    out = torch.gather(x, 1, flat.unsqueeze(-1).expand(-1, -1, x.shape[-1]))
    return out.reshape(*idx.shape, x.shape[-1])


def compact_ids(ids: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Relabel arbitrary integer ids to 0..U-1 (same shape); returns (labels, U)."""
    uniq, inverse = torch.unique(ids, return_inverse=True)
    return inverse, int(uniq.numel())


def scatter_mean(src: torch.Tensor, index: torch.Tensor, num_segments: int) -> torch.Tensor:
    """Mean of the rows of ``src`` (R, C) per segment ``index`` (R,) -> (num_segments, C).

    Empty segments get zeros."""
    out = src.new_zeros(num_segments, src.shape[-1]).index_add(0, index, src)
    count = torch.bincount(index, minlength=num_segments).clamp_min(1).to(src.dtype)
    return out / count.unsqueeze(-1)


def scatter_max(src: torch.Tensor, index: torch.Tensor, num_segments: int) -> torch.Tensor:
    """Max of the rows of ``src`` (R, C) per segment ``index`` (R,) -> (num_segments, C).

    Empty segments get zeros. The gradient flows to the arg-max rows, split evenly between
    tied rows (as ``torch.scatter_reduce`` does), in one gather-compare pass."""
    return _ScatterMax.apply(src, index, num_segments)


def _max_and_hits(src: torch.Tensor, index: torch.Tensor, counts: torch.Tensor):
    """Per-segment max (U, C), which rows hit it (a bool mask, a quarter of ``src``), and the
    number of tied hits per (segment, channel), or None when there are no ties. ``counts``
    (U,) is the number of rows of each segment (``bincount(index)``)."""
    out = src.new_zeros(counts.numel(), src.shape[-1]).scatter_reduce_(
        0, index.unsqueeze(-1).expand_as(src), src, reduce="amax", include_self=False)
    hit = src == out.index_select(0, index)
    # without ties every (non-empty segment, channel) has exactly one hit
    occupied = counts.count_nonzero()
    ties = None
    if bool(hit.count_nonzero() != occupied * src.shape[-1]):  # one host sync; 4x faster than sum()
        ties = torch.zeros_like(out).index_add_(0, index, hit.to(out.dtype)).clamp_min_(1)
    return out, hit, ties


class _ScatterMax(torch.autograd.Function):
    """Saves the hit mask rather than ``src``; counts ties only when there are any (then the
    gradient is split between them)."""

    @staticmethod
    def forward(ctx, src: torch.Tensor, index: torch.Tensor, num_segments: int) -> torch.Tensor:
        out, hit, ties = _max_and_hits(src, index, torch.bincount(index, minlength=num_segments))
        ctx.save_for_backward(hit, index, ties)
        return out

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        hit, index, ties = ctx.saved_tensors
        if ties is not None:
            grad_out = grad_out / ties
        # multiplying by the mask's bytes is faster than by bool (no float copy of the mask)
        return grad_out.index_select(0, index).mul_(hit.view(torch.uint8)), None, None


def mean_plus_max(src: torch.Tensor, index: torch.Tensor, by_segment: "BagTranspose") -> torch.Tensor:
    """``scatter_mean + scatter_max`` of the rows of ``src`` (R, C) per segment ``index`` (R,),
    in one autograd node. ``by_segment`` is ``BagTranspose.of(index.unsqueeze(1), U)``.

    The mean is an embedding bag over the rows grouped by segment (a segment sum that reads
    each row once, 3x faster than index_add here), and the gradient of both terms is made
    in one output (mean grad + hit * max grad) rather than as two gradients autograd adds."""
    return _MeanPlusMax.apply(src, index, by_segment.members, by_segment.offsets)


class _MeanPlusMax(torch.autograd.Function):
    @staticmethod
    def forward(ctx, src, index, members, offsets):
        counts = torch.bincount(index, minlength=offsets.numel())
        out, hit, ties = _max_and_hits(src, index, counts)
        ctx.save_for_backward(hit, index, ties, counts.clamp_min(1).to(src.dtype).unsqueeze(-1))
        return out.add_(F.embedding_bag(members, src, offsets, mode="mean"))

    @staticmethod
    def backward(ctx, grad_out):
        hit, index, ties, counts = ctx.saved_tensors
        mean_grad = grad_out / counts
        max_grad = grad_out if ties is None else grad_out / ties
        # by the mask's bytes: where(hit, ...) is 2x slower on the CPU (a branch per element)
        grad = mean_grad.index_select(0, index).addcmul_(max_grad.index_select(0, index), hit.view(torch.uint8))
        return grad, None, None, None


class BagTranspose(NamedTuple):
    """An index (T, M) into a table of U rows, read the other way round: for each table row,
    the rows of (T, M) that point at it. ``members`` (T * M,) lists each entry's row t grouped
    by table row, ``offsets`` (U,) is where each table row's group starts, ``order`` (T * M,)
    is the flat (t, m) position of each listed entry."""

    members: torch.Tensor
    offsets: torch.Tensor
    order: torch.Tensor

    @classmethod
    def of(cls, index: torch.Tensor, num_rows: int) -> "BagTranspose":
        flat = index.reshape(-1)
        order = torch.argsort(flat, stable=True)
        counts = torch.bincount(flat, minlength=num_rows)
        offsets = torch.cumsum(counts, 0) - counts
        return cls(torch.div(order, index.shape[1], rounding_mode="floor"), offsets, order)


def gathered_dots(table: torch.Tensor, index: torch.Tensor, rows: torch.Tensor,
                  transpose: BagTranspose) -> torch.Tensor:
    """out[t, m] = <table[index[t, m]], rows[t]> for table (U, D), index (T, M), rows (T, D).

    The backward is two weighted embedding bags (one per input), so it never builds the
    (T, M, D) products the autograd of gather-multiply-sum would; ``transpose`` is
    ``BagTranspose.of(index, U)``, computed once when the index is reused."""
    return _GatheredDots.apply(table, index, rows, transpose)


def weighted_bag(table: torch.Tensor, index: torch.Tensor, weights: torch.Tensor,
                 transpose: BagTranspose) -> torch.Tensor:
    """out[t] = sum_m weights[t, m] * table[index[t, m]] for table (U, D), index and weights (T, M).

    The forward is ``F.embedding_bag``; the backward is the same two reads the other way
    round (a weighted bag per table row, ``gathered_dots`` for the weights) instead of
    embedding_bag's generic backward, 3x slower here. ``transpose`` is
    ``BagTranspose.of(index, U)``."""
    return _WeightedBag.apply(table, index, weights, transpose)


def _bag_per_row(table: torch.Tensor, index: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """out[t] = sum_m weights[t, m] * table[index[t, m]]: (T, D)."""
    return F.embedding_bag(index, table, per_sample_weights=weights, mode="sum")


def _bag_per_table_row(rows: torch.Tensor, weights: torch.Tensor, transpose: BagTranspose) -> torch.Tensor:
    """out[u] = sum of weights[t, m] * rows[t] over the (t, m) with index[t, m] == u: (U, D),
    the transpose of :func:`_bag_per_row`."""
    members, offsets, order = transpose
    return F.embedding_bag(members, rows, offsets, mode="sum",
                           per_sample_weights=weights.reshape(-1).index_select(0, order))


class _WeightedBag(torch.autograd.Function):
    @staticmethod
    def forward(ctx, table, index, weights, transpose):
        ctx.save_for_backward(table, index, weights, *transpose)
        return _bag_per_row(table, index, weights)

    @staticmethod
    def backward(ctx, grad):
        table, index, weights, *transpose = ctx.saved_tensors
        grad_table = grad_weights = None
        if ctx.needs_input_grad[0]:
            grad_table = _bag_per_table_row(grad, weights, BagTranspose(*transpose))
        if ctx.needs_input_grad[2]:
            grad_weights = _dots_of_rows(table, index, grad)
        return grad_table, None, grad_weights, None


def _dots_of_rows(table: torch.Tensor, index: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """The forward of gathered_dots. On the CPU, when every row of ``index`` lists distinct
    table rows in increasing order (a valid CSR pattern, as the cells of one token in its M
    views are), a sampled sparse matmul reads each table row and each row once (measured 9x
    faster at MiniLM sizes); otherwise, and under torch.compile (which does not trace sparse
    tensors), the (T, M, D) gathered copy is built and reduced."""
    T, M = index.shape
    as_csr = (table.device.type == "cpu" and not torch.compiler.is_compiling() and table.dtype == rows.dtype
              and table.dtype in (torch.float32, torch.float64) and M > 0
              and bool((index[:, 1:] > index[:, :-1]).all()))
    if as_csr:
        starts = torch.arange(0, T * M + 1, M, device=index.device)
        with warnings.catch_warnings():  # torch's "sparse CSR support is in beta" notice
            warnings.simplefilter("ignore", UserWarning)
            pattern = torch.sparse_csr_tensor(starts, index.reshape(-1), table.new_zeros(T * M),
                                              size=(T, table.shape[0]), check_invariants=False)
            return torch.sparse.sampled_addmm(pattern, rows, table.t(), beta=0.0).values().view(T, M)
    picked = table.index_select(0, index.reshape(-1)).view(T, M, -1)
    return (picked * rows.unsqueeze(1)).sum(-1)


class _GatheredDots(torch.autograd.Function):
    @staticmethod
    def forward(ctx, table, index, rows, transpose):
        ctx.save_for_backward(table, index, rows, *transpose)
        return _dots_of_rows(table, index, rows)

    @staticmethod
    def backward(ctx, grad):
        table, index, rows, *transpose = ctx.saved_tensors
        grad_table = grad_rows = None
        if ctx.needs_input_grad[2]:
            grad_rows = _bag_per_row(table, index, grad.to(table.dtype)).to(rows.dtype)
        if ctx.needs_input_grad[0]:
            grad_table = _bag_per_table_row(rows, grad.to(rows.dtype), BagTranspose(*transpose)).to(table.dtype)
        return grad_table, None, grad_rows, None
