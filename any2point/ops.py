"""Batched geometry ops in pure PyTorch: farthest point sampling, kNN, gathers and id
relabelling.

Every op works on any device. For CUDA tensors, farthest point sampling uses the
compiled ``pointnet2_ops`` kernel when that optional package imports; otherwise (and
always on CPU) the pure-PyTorch path runs. Both start from index 0 and give the same
indices (tested where the extension exists).
"""
from __future__ import annotations

import contextlib
import functools
from concurrent.futures import ThreadPoolExecutor

import torch

__all__ = [
    "furthest_point_sample",
    "knn",
    "gather_points",
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


@torch.compiler.disable
@torch.no_grad()
def furthest_point_sample(xyz: torch.Tensor, n: int, start: int | torch.Tensor = 0,
                          use_extension: bool = True) -> torch.Tensor:
    """Indices (B, n) of ``n`` points picked greedily, each the farthest from those picked.

    ``start`` is the first index: an int shared by the batch or a LongTensor (B,). Runs eagerly
    under torch.compile (tracing would unroll its n steps) and outside autograd (it computes
    indices: nothing of it is kept for backward, whatever the points require).
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


@torch.no_grad()
def knn(query: torch.Tensor, ref: torch.Tensor, k: int) -> torch.Tensor:
    """Indices (B, M, k) into ``ref`` of each query's k nearest points, nearest first; outside
    autograd (indices only: its distance matrix is never kept for backward)."""
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
