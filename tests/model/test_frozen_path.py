"""The frozen source costs no weight gradients: after backward no frozen weight has a
``.grad``, the frozen blocks keep for backward only what the input gradient needs (not the
inputs of their linear layers, which only weight gradients read), the adapters add only what
they themselves keep, and the tokenizer's FPS and kNN stay outside autograd."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import any2point
from any2point.ops import furthest_point_sample, knn

TINY = ["tiny_1d", "tiny_2d"]


def _cloud(b: int = 2, n: int = 256, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, n, 3, generator=g)
    return x / x.norm(dim=-1, keepdim=True).amax(dim=1, keepdim=True)


class SavedTensors:
    """The tensors autograd saves for backward inside the block (``saved_tensors_hooks``)."""

    def __init__(self):
        self.tensors: list[torch.Tensor] = []

    def __enter__(self):
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, lambda t: t)
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc):
        self._hooks.__exit__(*exc)

    def _pack(self, t: torch.Tensor) -> torch.Tensor:
        self.tensors.append(t)
        return t

    def storages(self) -> set[int]:
        return {t.untyped_storage().data_ptr() for t in self.tensors}

    def activation_elements(self, parameters) -> int:
        """Elements of the saved floating tensors that are not (views of) parameters."""
        params = {p.untyped_storage().data_ptr() for p in parameters}
        return sum(t.numel() for t in self.tensors
                   if t.is_floating_point() and t.untyped_storage().data_ptr() not in params)


@pytest.mark.parametrize("source", TINY)
def test_no_frozen_weight_gets_a_gradient_and_every_trainable_one_does(source):
    torch.manual_seed(0)
    model = any2point.create_model(source, num_classes=4).train()
    F.cross_entropy(model(_cloud()), torch.tensor([0, 3])).backward()
    frozen = [n for n, p in model.named_parameters() if not p.requires_grad]
    assert frozen and all(n.startswith("source.") for n in frozen)
    assert [n for n, p in model.named_parameters() if not p.requires_grad and p.grad is not None] == []
    assert [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None] == []


def _mlp_out_inputs(block: torch.nn.Module) -> list[torch.nn.Linear]:
    """The linear layers that narrow the width (the FFN's second layer): their input is the
    activation's output, which nothing but their own weight gradient needs."""
    return [m for m in block.modules() if isinstance(m, torch.nn.Linear) and m.in_features > m.out_features]


@pytest.mark.parametrize("source", TINY)
def test_frozen_blocks_do_not_keep_the_inputs_only_weight_gradients_need(source):
    torch.manual_seed(0)
    points = _cloud()
    kept = {}
    for frozen in (True, False):  # the second run (weights training) shows the check can fail
        model = any2point.create_model(source, num_classes=4).train()
        if not frozen:
            model.source.requires_grad_(True)
        inputs = []  # held, so that no later tensor can reuse their memory (and address)
        handles = [layer.register_forward_pre_hook(lambda _m, args: inputs.append(args[0]))
                   for block in model.source.blocks for layer in _mlp_out_inputs(block)]
        with SavedTensors() as saved:
            logits = model(points)
        for h in handles:
            h.remove()
        assert len(inputs) == len(model.source.blocks)
        kept[frozen] = [t.untyped_storage().data_ptr() in saved.storages() for t in inputs]
        del logits
    assert not any(kept[True]) and all(kept[False])


@pytest.mark.parametrize("source", TINY)
def test_the_bottleneck_adds_to_a_frozen_block_only_what_it_keeps_itself(source):
    torch.manual_seed(0)
    model = any2point.create_model(source, num_classes=4).train()
    block, bottleneck = model.source.blocks[0], model.adapters.blocks[0].bottleneck
    x = torch.randn(2, 17, model.source.width, requires_grad=True)
    params = list(model.parameters())
    with SavedTensors() as plain:
        block(x)
    torch.manual_seed(1)
    with SavedTensors() as adapted:
        block(x, bottleneck)
    f = torch.randn(2, 17, model.source.width, requires_grad=True)
    torch.manual_seed(1)
    with SavedTensors() as alone:
        bottleneck(f)
    extra = adapted.activation_elements(params) - plain.activation_elements(params)
    assert 0 < extra == alone.activation_elements(params)


@pytest.mark.parametrize("source", TINY)
def test_tokenizer_geometry_runs_outside_autograd(source):
    """FPS and kNN keep nothing for backward and give index tensors without history, even for
    points that require gradients; the centres still carry the points' gradient."""
    torch.manual_seed(0)
    model = any2point.create_model(source, num_classes=4).train()
    points = _cloud().requires_grad_(True)
    stage = model.tokenizer.stages[0]
    with SavedTensors() as saved:
        centre_idx, centres, group_idx = stage.group(points, 64)
    assert centre_idx.grad_fn is None and group_idx.grad_fn is None
    # only the gather of the centres keeps anything: its index and the points themselves (no copy)
    floats = [t for t in saved.tensors if t.is_floating_point()]
    assert all(t.untyped_storage().data_ptr() == points.untyped_storage().data_ptr() for t in floats)
    with SavedTensors() as geometry:
        idx = furthest_point_sample(points, 64)
        near = knn(points[:, :64], points, 16)
    assert geometry.tensors == [] and idx.grad_fn is None and near.grad_fn is None
    centres.sum().backward()
    assert points.grad is not None and points.grad.abs().sum() == 64 * 3 * 2
