"""Geometry ops against brute-force references written as plain loops."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from any2point import ops
from any2point.adapters import pool_rows


def _cloud(B=3, N=200, seed=0) -> torch.Tensor:
    return torch.rand(B, N, 3, generator=torch.Generator().manual_seed(seed))


def _fps_loop(points: np.ndarray, n: int, start: int = 0) -> list[int]:
    """Farthest point sampling the textbook way, one cloud, float32 like the op."""
    pts = points.astype(np.float32)
    picked, dist = [start], np.full(len(pts), np.inf, dtype=np.float32)
    for _ in range(n - 1):
        dist = np.minimum(dist, ((pts - pts[picked[-1]]) ** 2).sum(axis=1))
        picked.append(int(np.argmax(dist)))
    return picked


def _knn_loop(query: np.ndarray, ref: np.ndarray, k: int) -> tuple[list[list[int]], list[list[float]]]:
    idx, dist = [], []
    for q in query:
        d = [float(((q - r) ** 2).sum()) for r in ref]
        order = sorted(range(len(ref)), key=lambda j: d[j])[:k]
        idx.append(order)
        dist.append([d[j] for j in order])
    return idx, dist


# ---------------------------------------------------------------- farthest point sampling
def test_fps_matches_loop_from_index_0_by_default():
    xyz = _cloud()
    got = ops.furthest_point_sample(xyz, 32)
    assert got.shape == (3, 32) and got.dtype == torch.long
    for b in range(3):
        assert got[b].tolist() == _fps_loop(xyz[b].numpy(), 32)
    assert (got[:, 0] == 0).all()
    assert all(len(set(row.tolist())) == 32 for row in got)  # never picks a point twice


def test_fps_custom_start_int_and_per_cloud():
    xyz = _cloud(seed=1)
    got = ops.furthest_point_sample(xyz, 16, start=7)
    for b in range(3):
        assert got[b].tolist() == _fps_loop(xyz[b].numpy(), 16, start=7)
    starts = torch.tensor([5, 0, 199])
    got = ops.furthest_point_sample(xyz, 16, start=starts)
    for b in range(3):
        assert got[b].tolist() == _fps_loop(xyz[b].numpy(), 16, start=int(starts[b]))


def test_fps_all_points_is_a_permutation():
    xyz = _cloud(B=1, N=40)
    assert sorted(ops.furthest_point_sample(xyz, 40)[0].tolist()) == list(range(40))


@pytest.mark.parametrize("shape,n", [((2, 10, 2), 4), ((10, 3), 4), ((2, 10, 3), 11), ((2, 10, 3), 0)])
def test_fps_rejects_bad_shapes_and_sizes(shape, n):
    with pytest.raises(ValueError, match="furthest_point_sample"):
        ops.furthest_point_sample(torch.rand(shape), n)


# ---------------------------------------------------------------- kNN
def test_knn_matches_brute_force_nearest_first():
    ref = _cloud(B=2, N=120, seed=2)
    query = _cloud(B=2, N=15, seed=3)
    got = ops.knn(query, ref, 10)
    assert got.shape == (2, 15, 10)
    for b in range(2):
        idx, dist = _knn_loop(query[b].numpy(), ref[b].numpy(), 10)
        ours = ((ref[b][got[b]] - query[b].unsqueeze(1)) ** 2).sum(-1)  # (15, 10) distances of our picks
        np.testing.assert_allclose(ours.numpy(), np.array(dist), rtol=1e-5, atol=1e-6)
        assert got[b].tolist() == idx  # random points: no ties, so the indices agree exactly


def test_knn_of_a_cloud_in_itself_starts_with_the_point():
    xyz = _cloud(B=2, N=64, seed=4)
    got = ops.knn(xyz, xyz, 5)
    assert torch.equal(got[..., 0], torch.arange(64).expand(2, 64))


@pytest.mark.parametrize("q,r,k", [((2, 5, 3), (3, 9, 3), 2), ((5, 3), (9, 3), 2), ((2, 5, 3), (2, 9, 3), 10),
                                   ((2, 5, 3), (2, 9, 3), 0)])
def test_knn_rejects_bad_shapes_and_k(q, r, k):
    with pytest.raises(ValueError, match="knn"):
        ops.knn(torch.rand(q), torch.rand(r), k)


# ---------------------------------------------------------------- gathers
def test_gather_points_any_index_shape():
    x = torch.arange(2 * 6 * 4, dtype=torch.float32).reshape(2, 6, 4)
    idx = torch.tensor([[[5, 0], [1, 1]], [[2, 3], [4, 0]]])  # (B, 2, 2)
    got = ops.gather_points(x, idx)
    assert got.shape == (2, 2, 2, 4)
    for b in range(2):
        for i in range(2):
            for j in range(2):
                assert torch.equal(got[b, i, j], x[b, idx[b, i, j]])


def test_gather_points_passes_gradients():
    x = torch.rand(1, 5, 3, requires_grad=True)
    ops.gather_points(x, torch.tensor([[4, 4, 1]])).sum().backward()
    assert x.grad[0, :, 0].tolist() == [0.0, 1.0, 0.0, 0.0, 2.0]


def test_compact_ids():
    labels, count = ops.compact_ids(torch.tensor([[40, 7], [7, 12]]))
    assert count == 3 and labels.tolist() == [[2, 0], [0, 1]]


# ---------------------------------------------------------------- segment pooling (the adapters' cells and voxels)
def _segments(R=30, C=4, S=7, seed=5):
    g = torch.Generator().manual_seed(seed)
    index = torch.randint(0, S - 1, (R,), generator=g)  # segment S-1 stays empty
    return torch.randn(R, C, generator=g), index, S


def test_pool_rows_mean_matches_loop():
    src, index, S = _segments()
    got = pool_rows(src, index, S, "mean")
    for s in range(S):
        rows = [src[r] for r in range(len(index)) if index[r] == s]
        expected = torch.stack(rows).mean(0) if rows else torch.zeros(src.shape[1])
        torch.testing.assert_close(got[s], expected)


def test_pool_rows_mean_max_matches_loop_and_max_gradient_goes_to_argmax_rows():
    src, index, S = _segments()
    values = src.clone()
    src.requires_grad_(True)
    got = pool_rows(src, index, S, "mean_max")
    expected_grad = torch.zeros_like(src)
    for s in range(S):
        rows = [r for r in range(len(index)) if index[r] == s]
        for c in range(src.shape[1]):
            if not rows:
                assert got[s, c] == 0
                continue
            best = max(rows, key=lambda r: float(values[r, c]))
            mean = sum(float(values[r, c]) for r in rows) / len(rows)
            assert abs(float(got[s, c].detach()) - (mean + float(values[best, c]))) < 1e-5
            expected_grad[best, c] += 1.0
            for r in rows:
                expected_grad[r, c] += 1.0 / len(rows)
    got.sum().backward()
    torch.testing.assert_close(src.grad, expected_grad)


def test_pool_rows_max_splits_the_gradient_between_tied_rows():
    src = torch.tensor([[1.0, 5.0], [3.0, 5.0], [3.0, 2.0], [7.0, 7.0], [7.0, 7.0]], requires_grad=True)
    index = torch.tensor([0, 0, 0, 2, 2])  # segment 1 empty; ties in both channels of 0 and 2
    got = pool_rows(src, index, 3, "mean_max") - pool_rows(src, index, 3, "mean")
    torch.testing.assert_close(got, torch.tensor([[3.0, 5.0], [0.0, 0.0], [7.0, 7.0]]))
    weights = torch.tensor([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]])
    (got * weights).sum().backward()  # the mean's gradient cancels: what is left is the max's
    torch.testing.assert_close(src.grad, torch.tensor([[0.0, 1.0], [0.5, 1.0], [0.5, 0.0], [2.5, 3.0], [2.5, 3.0]]))


# ---------------------------------------------------------------- optional compiled path
def _no_compiled_path() -> str:
    missing = [] if torch.cuda.is_available() else ["no CUDA device"]
    if not ops.pointnet2_ops_available():
        missing.append("pointnet2_ops is not installed (optional, see docs/implementation.md)")
    return "; ".join(missing)


@pytest.mark.skipif(bool(_no_compiled_path()), reason=_no_compiled_path() or "n/a")
def test_pointnet2_ops_path_agrees_with_pure_path():
    xyz = _cloud(B=4, N=1024, seed=6).cuda()
    compiled = ops.furthest_point_sample(xyz, 256)
    pure = ops.furthest_point_sample(xyz, 256, use_extension=False)
    assert torch.equal(compiled.cpu(), pure.cpu())
