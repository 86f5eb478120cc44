"""The compiled CPU kernels (any2point.native) against the PyTorch formulas they replace, and
how they are built: once per machine, or not at all (then the PyTorch path, with a warning)."""
from __future__ import annotations

import warnings

import pytest
import torch

import any2point
from any2point import native
from any2point.adapters import AdapterConfig, GuidedAdapters, batch_segments, same_cell_pairs
from any2point.adapters.cells import CellAssignment
from any2point.adapters.guided import _cosine_to_cells
from any2point.adapters.mini_attention import _ResidualOutProjection, pair_attention
from any2point.adapters.norm import GroupedBatchNorm
from any2point.native.guided_sum import native_guided_sum
from any2point.native.pair_attention import native_pair_attention
from any2point.native.projected_pooling import native_projected_pooling
from any2point.ops import BagTranspose, mean_plus_max, weighted_bag

needs_kernels = pytest.mark.skipif(native.library() is None, reason="no C compiler could build the CPU kernels")


def _segments(M: int, B: int, G: int, cells: int, generator: torch.Generator) -> tuple[torch.Tensor, int]:
    """Random cells numbered by (view, cloud), as CellAssignment numbers them."""
    local = torch.randint(0, cells, (M * B, G), generator=generator)
    segments, count = batch_segments(local)
    return segments.reshape(-1), count


def _projection_then_pooling(x, o, weight, bias, segments, by_segment):
    y = _ResidualOutProjection.apply(x.reshape(-1, x.shape[-1]), o, weight, bias)
    return mean_plus_max(y.reshape(-1, x.shape[-1]), segments, by_segment)


def _pooling_and_gradients(pool, inputs, segments, by_segment, grad):
    inputs = [t.detach().clone().requires_grad_(True) for t in inputs]
    out = pool(*inputs, segments, by_segment)
    return (out, *torch.autograd.grad(out, inputs, grad))


@needs_kernels
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_projected_pooling_equals_projection_then_mean_plus_max_with_ties(dtype):
    """Small integers make every sum exact in both paths and make equal maxima common, so the
    max's gradient must be split between tied rows exactly as scatter_reduce's amax does. The
    width (70) is not a multiple of the kernel's 64-channel chunks."""
    g = torch.Generator().manual_seed(0)
    M, B, G, K, D = 3, 4, 12, 5, 70
    segments, cells = _segments(M, B, G, 4, g)
    by_segment = BagTranspose.of(segments.unsqueeze(1), cells)
    shapes = ((B, G, D), (M, B * G, K), (M, K, D), (M, D))
    inputs = [torch.randint(-2, 3, shape, generator=g).to(dtype) for shape in shapes]
    grad = torch.randn(cells, D, generator=g, dtype=torch.float64).to(dtype)

    ours = _pooling_and_gradients(_native, inputs, segments, by_segment, grad)
    reference = _pooling_and_gradients(_projection_then_pooling, inputs, segments, by_segment, grad)
    assert _tied_maxima(inputs, segments, cells) > cells  # the inputs do make ties
    # float32: the gradients' sums over channels round differently in the two paths
    tolerance = dict(rtol=1e-5, atol=1e-4) if dtype == torch.float32 else dict(rtol=1e-12, atol=1e-12)
    for a, b in zip(ours, reference):
        torch.testing.assert_close(a, b, **tolerance)


def _native(x, o, weight, bias, segments, by_segment):
    return native_projected_pooling(x, o, weight, bias, segments, by_segment.members, by_segment.offsets)


def _tied_maxima(inputs, segments, cells):
    """How many (cell, channel) maxima more than one row reaches."""
    x, o, weight, bias = inputs
    y = (x.reshape(-1, x.shape[-1]) + torch.bmm(o, weight) + bias.unsqueeze(1)).reshape(-1, x.shape[-1])
    index = segments.unsqueeze(-1).expand_as(y)
    peak = y.new_zeros(cells, y.shape[-1]).scatter_reduce(0, index, y, "amax", include_self=False)
    hits = y.new_zeros(cells, y.shape[-1]).index_add(0, segments, (y == peak[segments]).to(y.dtype))
    return int((hits > 1).sum())


@needs_kernels
def test_projected_pooling_in_float32_matches_a_float64_reference():
    g = torch.Generator().manual_seed(1)
    M, B, G, K, D = 6, 3, 32, 12, 128
    segments, cells = _segments(M, B, G, 6, g)
    by_segment = BagTranspose.of(segments.unsqueeze(1), cells)
    shapes = ((B, G, D), (M, B * G, K), (M, K, D), (M, D))
    inputs = [torch.randn(shape, generator=g, dtype=torch.float64) for shape in shapes]
    grad = torch.randn(cells, D, generator=g, dtype=torch.float64)
    ours = _pooling_and_gradients(_native, [t.float() for t in inputs], segments, by_segment, grad.float())
    reference = _pooling_and_gradients(_projection_then_pooling, inputs, segments, by_segment, grad)
    for a, b in zip(ours, reference):
        torch.testing.assert_close(a.double(), b, rtol=1e-5, atol=1e-5)


@needs_kernels
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_pair_attention_kernel_equals_the_pytorch_pair_attention(dtype):
    """Same outputs and qkv gradient; random cells, so some tokens attend only to themselves."""
    g = torch.Generator().manual_seed(3)
    M, B, G, H, E = 3, 2, 20, 6, 2
    segments, cells = _segments(M, B, G, 6, g)
    pairs = same_cell_pairs(segments, BagTranspose.of(segments.unsqueeze(1), cells))
    T = B * G
    qkv = torch.randn(T, M, 3 * H * E, generator=g, dtype=torch.float64).to(dtype).requires_grad_(True)
    ours = native_pair_attention(qkv, H, E, pairs, G)
    q, k, v = qkv.transpose(0, 1).reshape(M * T, 3, H, E).unbind(1)
    reference = pair_attention(q, k, v, pairs).view(M, T, H * E)
    grad = torch.randn(reference.shape, generator=g, dtype=torch.float64).to(dtype)
    tolerance = dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else dict(rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(ours, reference, **tolerance)
    torch.testing.assert_close(torch.autograd.grad(ours, qkv, grad)[0], torch.autograd.grad(reference, qkv, grad)[0],
                               **tolerance)


@needs_kernels
def test_pair_attention_kernel_refuses_pairs_that_leave_their_cloud():
    """Its backward adds to keys from several threads, one (view, cloud) slice each: a cell
    spanning two clouds would race, so the forward refuses it."""
    segments = torch.zeros(8, dtype=torch.long)  # one cell over both clouds of 4 tokens, one view
    pairs = same_cell_pairs(segments, BagTranspose.of(segments.unsqueeze(1), 1))
    with pytest.raises(ValueError, match="leaves its slice of 4 token-views"):
        native_pair_attention(torch.randn(8, 1, 36), 6, 2, pairs, 4)


@needs_kernels
def test_mini_attention_pools_the_same_with_and_without_the_kernels(monkeypatch):
    torch.manual_seed(0)
    D, M, B, G = 48, 3, 2, 20
    attention = GuidedAdapters(D, depth=1, views=M, config=AdapterConfig()).mini_attention
    segments, cells = _segments(M, B, G, 5, torch.Generator().manual_seed(2))
    by_segment = BagTranspose.of(segments.unsqueeze(1), cells)
    pairs = same_cell_pairs(segments, by_segment)
    attention.double()  # in float64, so only a wrong formula can exceed the tolerance
    x = torch.randn(B, G, D, dtype=torch.float64, requires_grad=True)
    with torch.no_grad():
        for p in attention.parameters():
            p.add_(torch.randn_like(p) * 0.3)  # no zero biases

    def pooled_and_gradients():
        out = attention.pooled(x, pairs, segments, by_segment)
        return (out, *torch.autograd.grad(out.square().sum(), (x, *attention.parameters())))

    with_kernels = pooled_and_gradients()
    monkeypatch.setattr(native, "library", lambda: None)
    without = pooled_and_gradients()
    for a, b in zip(with_kernels, without):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


@needs_kernels
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_guided_sum_kernel_equals_cosine_weights_and_weighted_bag(dtype):
    """Includes a token whose reference feature is zero (its norm is clamped, as F.normalize does)."""
    g = torch.Generator().manual_seed(4)
    M, B, G, D = 4, 3, 16, 40
    segments, cells = _segments(M, B, G, 5, g)
    token_cells = segments.view(M, -1).t().contiguous()
    assignment = CellAssignment(M, token_cells=token_cells, cell_tokens=BagTranspose.of(token_cells, cells))
    views = torch.randn(cells, D, generator=g, dtype=torch.float64).to(dtype).requires_grad_(True)
    reference = torch.randn(B * G, D, generator=g, dtype=torch.float64).to(dtype)
    if dtype == torch.float64:
        reference[5] = 0
    reference.requires_grad_(True)
    ours = native_guided_sum(views, reference, token_cells, B)
    weights = (_cosine_to_cells(views, reference, assignment) + 1) / 2
    weights = weights / weights.sum(dim=1, keepdim=True).clamp_min(1e-6)
    expected = weighted_bag(views, token_cells, weights, assignment.cell_tokens)
    grad = torch.randn(expected.shape, generator=g, dtype=torch.float64).to(dtype)
    tolerance = dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else dict(rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(ours, expected, **tolerance)
    for a, b in zip(torch.autograd.grad(ours, (views, reference), grad),
                    torch.autograd.grad(expected, (views, reference), grad)):
        torch.testing.assert_close(a, b, **tolerance)


@needs_kernels
def test_grouped_batch_norm_is_the_same_with_and_without_the_kernels(monkeypatch):
    """Groups in any order, one of them empty: output, gradients and running statistics."""
    g = torch.Generator().manual_seed(5)
    groups, D = 4, 24
    group = torch.randint(0, groups - 1, (50,), generator=g)  # the last group has no rows
    x = torch.randn(50, D, generator=g, dtype=torch.float64) * 3 + 1

    def step():
        torch.manual_seed(0)
        norm = GroupedBatchNorm(groups, D).double()
        with torch.no_grad():
            norm.weight.add_(torch.randn_like(norm.weight)), norm.bias.add_(torch.randn_like(norm.bias))
        rows = x.clone().requires_grad_(True)
        y = norm(rows, group)
        grads = torch.autograd.grad(y.sin().sum(), (rows, norm.weight, norm.bias))
        return (y, *grads, norm.running_mean, norm.running_var)

    with_kernels = step()
    monkeypatch.setattr(native, "library", lambda: None)
    for a, b in zip(with_kernels, step()):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


@needs_kernels
def test_grouped_batch_norm_kernel_refuses_a_group_id_out_of_range():
    norm = GroupedBatchNorm(3, 8)
    with pytest.raises(IndexError, match=r"group ids must lie in \[0, 3\), got 0..3"):
        norm(torch.randn(5, 8), torch.tensor([0, 1, 2, 3, 0]))


class _Recorder:
    """The compiled library, noting which kernels are called."""

    def __init__(self, lib):
        self.lib, self.called = lib, set()

    def __getattr__(self, name):
        self.called.add(name)
        return getattr(self.lib, name)


@needs_kernels
@pytest.mark.parametrize("source", ["tiny_1d", "tiny_2d"])
def test_a_training_step_is_the_same_with_and_without_the_kernels(source, monkeypatch):
    """The whole model in float64: logits, every gradient and the BatchNorm statistics, with all
    kernels (each one is called) and with the PyTorch path only."""
    torch.manual_seed(0)
    model = any2point.create_model(source, num_classes=3).train().double()
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    state = {k: v.clone() for k, v in model.state_dict().items()}
    g = torch.Generator().manual_seed(6)
    points = torch.randn(3, 256, 3, generator=g, dtype=torch.float64)
    points = points / points.norm(dim=-1, keepdim=True).amax(dim=1, keepdim=True)
    labels = torch.tensor([0, 1, 2])

    def step():
        model.load_state_dict(state)
        model.zero_grad(set_to_none=True)
        logits = model(points)
        torch.nn.functional.cross_entropy(logits, labels).backward()
        grads = [p.grad.clone() for p in model.parameters() if p.requires_grad]
        return [logits.detach(), *grads, *(b.clone() for b in model.buffers() if b.is_floating_point())]

    recorder = _Recorder(native.library())
    monkeypatch.setattr(native, "library", lambda: recorder)
    with_kernels = step()
    kernels = {"projected_pooling", "pair_attention", "guided_sum", "grouped_norm"}
    assert recorder.called == {f"{k}_{way}_f64" for k in kernels for way in ("forward", "backward")}
    monkeypatch.setattr(native, "library", lambda: None)
    without = step()
    for a, b in zip(with_kernels, without, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)


@pytest.fixture
def fresh_library(monkeypatch, tmp_path):
    """library() rebuilt from scratch into an empty cache, and forgotten again afterwards."""
    monkeypatch.setenv("ANY2POINT_CACHE", str(tmp_path))
    native.library.cache_clear()
    yield tmp_path
    native.library.cache_clear()


def test_a_compiler_that_fails_means_the_pytorch_path_and_a_warning(fresh_library, monkeypatch):
    monkeypatch.setenv("CC", "false")
    with pytest.warns(RuntimeWarning, match="building the native kernels failed"):
        assert native.library() is None
    assert not list(fresh_library.rglob("*.so"))


def test_a_cache_that_cannot_be_written_means_the_pytorch_path_and_a_warning(fresh_library, monkeypatch):
    blocker = fresh_library / "a file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("ANY2POINT_CACHE", str(blocker / "cache"))
    with pytest.warns(RuntimeWarning, match="PyTorch path"):
        assert native.library() is None


def test_any2point_native_0_turns_the_kernels_off(fresh_library, monkeypatch):
    monkeypatch.setenv("ANY2POINT_NATIVE", "0")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert native.library() is None


@needs_kernels
def test_the_kernels_are_built_once_per_machine(fresh_library, monkeypatch):
    assert native.library() is not None
    built = list(fresh_library.rglob("*.so"))
    assert len(built) == 1
    native.library.cache_clear()
    monkeypatch.setattr(native, "_build", lambda *a: pytest.fail("rebuilt although the cache holds the library"))
    assert native.library() is not None
