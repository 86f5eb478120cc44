"""The reformulated guided aggregation against the formula it replaced, in float64: values,
gradients (input and every parameter) and BatchNorm running statistics, step by step and
whole.

``Dense`` below is a plain copy of the previous formulation (kept here, not in the package):
a masked dense mini attention over all tokens of a cloud per view, Y = x + Out(Attn) for
every token-view, pooling by scatter, one BatchNorm per view over its occupied cells (the
empty cells of the grid counted as zero rows), the per-view features gathered back to every
token-view, the cosine view weights and their weighted sum.
"""
from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F

from any2point.adapters import AdapterConfig, CellAssignment, GuidedAdapters, pool_rows
from any2point.adapters.guided import view_batch_norm, view_weights, weighted_sum
from any2point.adapters.pooling import max_rows
from any2point.projections import ViewPositions

TOL = dict(rtol=1e-9, atol=1e-10)


class Dense:
    """The previous aggregation's formula, written plainly on dense tensors."""

    @staticmethod
    def mini_attention(att, x, local):
        """Y (M, B*G, D): per view, x + Out(softmax(QK^T / sqrt(heads*head_dim)) V) over the
        tokens of the same cloud and cell, Q/K/V from the view's LayerNorm of x."""
        (B, G, D), M, H, E = x.shape, att.views, att.heads, att.head_dim
        out = []
        for m in range(M):
            xn = F.layer_norm(x, (D,), att.norm_weight[m], att.norm_bias[m])
            q, k, v = (xn @ att.qkv_weight[m] + att.qkv_bias[m]).view(B, G, 3, H, E).unbind(2)
            scores = torch.einsum("bqhe,bkhe->bhqk", q, k) / math.sqrt(H * E)
            same = (local[m].unsqueeze(-1) == local[m].unsqueeze(-2)).unsqueeze(1)
            o = torch.einsum("bhqk,bkhe->bqhe", scores.masked_fill(~same, -math.inf).softmax(-1), v)
            out.append((x + o.reshape(B, G, H * E) @ att.out_weight[m] + att.out_bias[m]).reshape(B * G, D))
        return torch.stack(out)

    @staticmethod
    def pool(y, cell_rows, rows, mode):
        index = cell_rows.unsqueeze(-1).expand_as(y)
        total = y.new_zeros(rows, y.shape[-1]).scatter_add(0, index, y)
        count = y.new_zeros(rows).index_add(0, cell_rows, y.new_ones(cell_rows.shape[0]))
        pooled = total / count.clamp_min(1).unsqueeze(-1)
        if mode == "mean_max":
            pooled = pooled + y.new_zeros(rows, y.shape[-1]).scatter_reduce(0, index, y, "amax", include_self=False)
        return pooled

    @staticmethod
    def batch_norm(rows, per_view, norms, grid_rows):
        """BatchNorm1d of each view over its ``grid_rows`` cells, the given (occupied) rows and
        zero rows for the rest; running statistics updated as BatchNorm1d does."""
        out = []
        for x, norm in zip(rows.split(list(per_view)), norms):
            if norm.training:
                dense = torch.cat([x, x.new_zeros(grid_rows - x.shape[0], x.shape[1])])
                mean, var = dense.mean(0), dense.var(0, unbiased=False)
                with torch.no_grad():
                    norm.num_batches_tracked += 1
                    norm.running_mean.lerp_(mean, norm.momentum)
                    norm.running_var.lerp_(dense.var(0, unbiased=True), norm.momentum)
            else:
                mean, var = norm.running_mean, norm.running_var
            out.append((x - mean) / torch.sqrt(var + norm.eps) * norm.weight + norm.bias)
        return torch.cat(out)

    @classmethod
    def aggregate(cls, adapters, x, cells, index=0):
        block, cfg, M = adapters.blocks[index], adapters.config, adapters.views
        B, G, D = x.shape
        reference = None
        if cells.voxel_segments is not None:
            pooled = cls.pool(x.reshape(B * G, D), cells.voxel_segments, cells.num_voxels, "mean_max")
            reference = F.gelu(block.reference_norm(pooled))[cells.voxel_segments]
        if cells.cell_rows is None:
            return x + cfg.coef * reference.view_as(x)
        y = cls.mini_attention(adapters.mini_attention, x, cells.view_cells)
        pooled = cls.pool(y.reshape(M * B * G, D), cells.cell_rows, cells.num_cells, cfg.pool)
        features = F.gelu(cls.batch_norm(pooled, cells.occupied_per_view, block.view_norm, cells.grid_rows_per_view))
        views = features[cells.cell_rows].view(M, B * G, D)
        if reference is None:
            guided = views.mean(0)
        else:
            w = (F.cosine_similarity(views, reference.unsqueeze(0), dim=-1) + 1) / 2
            w = w / w.sum(0, keepdim=True).clamp_min(1e-6)
            guided = (w.unsqueeze(-1) * views).sum(0)
        return x + cfg.coef * guided.view_as(x)


def _adapters(pool="mean", reference="voxel", view_cells=True, canvas=None, length=None, views=3, cell=2.0,
              voxel=0.5, D=16, seed=0):
    torch.manual_seed(seed)
    config = AdapterConfig(cell=cell, voxel=voxel, pool=pool, reference=reference, view_cells=view_cells)
    adapters = GuidedAdapters(D, 1, views, config, canvas=canvas, length=length).double().train()
    with torch.no_grad():
        for p in adapters.parameters():  # no trivial LayerNorm affine, zero biases or unit BN
            p.add_(torch.randn_like(p) * 0.3)
    return adapters


def _scene(adapters, B=2, G=12, kind="1d", spread=1.2, seed=1):
    """Positions (a crowded cell in view 0 of cloud 0), centres and the assignment."""
    g = torch.Generator().manual_seed(seed)
    M = adapters.views
    if kind == "1d":
        units = torch.rand(B, M, G, 1, generator=g, dtype=torch.float64) * (adapters.length - 1)
        units[0, 0, :] = 3.5
        where = ViewPositions("1d", units, units[..., 0])
    else:
        H, W = adapters.canvas
        pixels = torch.rand(B, M, G, 2, generator=g, dtype=torch.float64) * torch.tensor([H - 1.0, W - 1.0])
        pixels[0, 0, :] = 5.0
        where = ViewPositions("2d", pixels, pixels)
    centres = torch.rand(B, G, 3, generator=g, dtype=torch.float64) * spread
    return adapters.assign(where, centres)


def _compare(adapters, cells, B=2, G=12, seed=2):
    """Ours against Dense: outputs, every gradient, running statistics; then in eval mode."""
    g = torch.Generator().manual_seed(seed)
    D = adapters.blocks[0].bottleneck.down.in_features
    x = torch.randn(B, G, D, generator=g, dtype=torch.float64, requires_grad=True)
    dense = copy.deepcopy(adapters)
    ours, want = adapters.aggregate(0, x, cells), Dense.aggregate(dense, x, cells)
    torch.testing.assert_close(ours, want, **TOL)
    grad = torch.randn(ours.shape, generator=g, dtype=torch.float64)
    ours_grads = torch.autograd.grad(ours, (x, *adapters.parameters()), grad, allow_unused=True)
    want_grads = torch.autograd.grad(want, (x, *dense.parameters()), grad, allow_unused=True)
    for (name, _), a, b in zip([("x", None), *adapters.named_parameters()], ours_grads, want_grads):
        assert (a is None) == (b is None), name
        if a is not None:
            torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-10, msg=name)
    for (name, a), b in zip(adapters.named_buffers(), dense.buffers()):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12, msg=name)
    adapters.eval(), dense.eval()
    with torch.no_grad():
        torch.testing.assert_close(adapters.aggregate(0, x, cells), Dense.aggregate(dense, x, cells), **TOL)


@pytest.mark.parametrize("pool", ["mean", "mean_max"])
@pytest.mark.parametrize("length", [20, 40])  # a cell grid smaller than the token-views, and larger
def test_1d_aggregation_equals_the_dense_formula(pool, length):
    adapters = _adapters(pool=pool, length=length)
    _compare(adapters, _scene(adapters))


@pytest.mark.parametrize("pool", ["mean", "mean_max"])
def test_2d_aggregation_equals_the_dense_formula(pool):
    adapters = _adapters(pool=pool, canvas=(40, 56), cell=8.0, views=4)
    _compare(adapters, _scene(adapters, kind="2d"))


@pytest.mark.parametrize("setting", [dict(reference="uniform"), dict(view_cells=False)])
def test_ablations_equal_the_dense_formula(setting):
    adapters = _adapters(length=30, **setting)
    _compare(adapters, _scene(adapters))


def test_one_token_per_voxel_takes_the_shortcut_and_equals_the_dense_formula():
    adapters = _adapters(length=30, voxel=1e-3)
    cells = _scene(adapters)
    assert cells.num_voxels == 2 * 12  # every token alone in its voxel
    _compare(adapters, cells)


def test_mini_attention_over_cell_pairs_equals_masked_dense_attention():
    adapters = _adapters(length=20)
    cells = _scene(adapters, B=3, G=10)
    x = torch.randn(3, 10, 16, dtype=torch.float64, requires_grad=True)
    att = adapters.mini_attention
    ours, want = att(x, cells), Dense.mini_attention(att, x, cells.view_cells)
    torch.testing.assert_close(ours, want, **TOL)
    inputs = (x, *att.parameters())
    for a, b in zip(torch.autograd.grad(ours.sin().sum(), inputs), torch.autograd.grad(want.sin().sum(), inputs)):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-10)


def test_same_cell_pairs_are_exactly_the_pairs_sharing_cloud_view_and_cell():
    local = torch.tensor([[[0, 0, 1, 2], [1, 1, 1, 0]], [[3, 3, 3, 3], [0, 1, 0, 1]]])  # (M=2, B=2, G=4)
    cells = CellAssignment.of_view_cells(local, 4)
    M, B, G = local.shape
    pairs = set(zip(cells.pair_query.tolist(), cells.pair_key.tolist()))
    want = set()
    for m in range(M):
        for b in range(B):
            for i in range(G):
                for j in range(G):
                    if local[m, b, i] == local[m, b, j]:
                        want.add(((b * G + i) * M + m, (b * G + j) * M + m))
    assert pairs == want and len(cells.pair_query) == len(want)
    assert torch.equal(cells.pair_query, torch.sort(cells.pair_query).values)  # sorted by query (segments)
    assert cells.keys_per_query.sum() == len(want)


def test_view_batch_norm_equals_batch_norm1d_on_each_dense_grid():
    torch.manual_seed(0)
    M, given, D, N = 3, 7, 5, 20
    norms = torch.nn.ModuleList(torch.nn.BatchNorm1d(D) for _ in range(M)).double().train()
    with torch.no_grad():
        for p in norms.parameters():
            p.add_(torch.randn_like(p))
    reference = copy.deepcopy(norms)
    rows = torch.randn(M, given, D, dtype=torch.float64, requires_grad=True)
    ours = view_batch_norm(rows, norms, N)
    want = torch.stack([norm(torch.cat([rows[m], rows.new_zeros(N - given, D)]))[:given]
                        for m, norm in enumerate(reference)])
    torch.testing.assert_close(ours, want, **TOL)
    params = [rows, *norms.parameters()]
    grads = torch.autograd.grad(ours.sin().sum(), params)
    wants = torch.autograd.grad(want.sin().sum(), [rows, *reference.parameters()])
    for a, b in zip(grads, wants):
        torch.testing.assert_close(a, b, **TOL)
    for a, b in zip(norms.buffers(), reference.buffers()):
        torch.testing.assert_close(a, b, **TOL)


def test_view_weights_and_sum_equal_cosine_similarity_over_gathered_views():
    adapters = _adapters(length=20)
    cells = _scene(adapters)
    M, rows, D = adapters.views, cells.rows_per_view, 16
    features = torch.randn(M, rows, D, dtype=torch.float64, requires_grad=True)
    reference = torch.randn(2 * 12, D, dtype=torch.float64, requires_grad=True)
    ours = weighted_sum(features, view_weights(features, reference, cells), cells)
    views = features.reshape(M * rows, D)[cells.cell_index].view(-1, M, D).transpose(0, 1)  # (M, B*G, D)
    w = (F.cosine_similarity(views, reference.unsqueeze(0), dim=-1) + 1) / 2
    w = w / w.sum(0, keepdim=True)
    want = (w.unsqueeze(-1) * views).sum(0)
    torch.testing.assert_close(ours, want, **TOL)
    for a, b in zip(torch.autograd.grad(ours.sin().sum(), (features, reference)),
                    torch.autograd.grad(want.sin().sum(), (features, reference))):
        torch.testing.assert_close(a, b, **TOL)


def test_max_rows_equals_scatter_reduce_amax_with_ties():
    torch.manual_seed(0)
    values = torch.randn(9, 4, dtype=torch.float64)
    values[3] = values[1]  # a tie in segment 1 (rows 1 and 3), every column
    values[5, 2] = values[4, 2]  # a tie in one column of segment 2
    index = torch.tensor([0, 1, 2, 1, 2, 2, 0, 4, 4])  # segment 3 is empty
    values.requires_grad_(True)
    ours = max_rows(values, index, 5)
    want = torch.zeros(5, 4, dtype=torch.float64).scatter_reduce(0, index.unsqueeze(-1).expand(-1, 4), values,
                                                                   "amax", include_self=False)
    assert torch.equal(ours, want)
    grad = torch.randn(5, 4, dtype=torch.float64)  # negative entries too: ties split them as well
    torch.testing.assert_close(torch.autograd.grad(ours, values, grad)[0], torch.autograd.grad(want, values, grad)[0],
                               **TOL)


def test_pool_rows_still_equals_the_dense_pooling():
    torch.manual_seed(0)
    values = torch.randn(11, 3, dtype=torch.float64, requires_grad=True)
    index = torch.tensor([0, 2, 2, 1, 0, 2, 4, 4, 4, 1, 0])
    for mode in ("mean", "mean_max"):
        ours, want = pool_rows(values, index, 5, mode), Dense.pool(values, index, 5, mode)
        torch.testing.assert_close(ours, want, **TOL)
        torch.testing.assert_close(torch.autograd.grad(ours.sin().sum(), values)[0],
                                   torch.autograd.grad(want.sin().sum(), values)[0], **TOL)


def test_the_aggregation_saves_no_views_by_tokens_copy_for_backward():
    """What the reformulation is for: autograd keeps a few tensors of the tokens' or cells' size,
    and at most one of views x tokens x D (the gathered rows of the view weights' dot
    products), where the dense formula kept several (Y, the gathered F_j, their products)."""
    torch.manual_seed(0)
    B, G, D, M, L = 4, 64, 96, 6, 77
    adapters = GuidedAdapters(D, 1, M, AdapterConfig(cell=2.0, voxel=0.08), length=L).train()
    units = torch.rand(B, M, G, 1) * (L - 1)
    centres = torch.rand(B, G, 3)
    cells = adapters.assign(ViewPositions("1d", units, units[..., 0]), centres)
    x = torch.randn(B, G, D, requires_grad=True)

    def saved_bytes(fn):
        sizes = []

        def pack(t):
            if t.is_floating_point() and not isinstance(t, torch.nn.Parameter):
                sizes.append(t.numel())
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            fn()
        return sizes

    ours = saved_bytes(lambda: adapters.aggregate(0, x, cells))
    dense = saved_bytes(lambda: Dense.aggregate(copy.deepcopy(adapters), x, cells))
    big = M * B * G * D
    assert sum(n >= big for n in ours) <= 1 < sum(n >= big for n in dense)
    assert sum(ours) < sum(dense) / 2
