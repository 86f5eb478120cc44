"""The hooks a PEFT method has (issue 27): a record of its own per forward pass, its own parts
re-initialised by ``model.init``, shared parts it leaves out. The methods here are written as
a third party would write them, in this file, without touching the model."""
from __future__ import annotations

import math
from dataclasses import dataclass

import pytest
import torch
from torch import nn

import any2point
from any2point.peft import PeftConfig, PeftMethod, register_peft_method


class StackedLinears(nn.Module):
    """Two Linear layers stored as one (2, out, in) tensor: initialised through the stacked protocol."""

    def __init__(self, width: int):
        super().__init__()
        self.weight = nn.Parameter(torch.full((2, width, width), 5.0))
        self.bias = nn.Parameter(torch.full((2, width), 5.0))
        self.calls = 0

    def initialise_stacked(self, init_matrix) -> None:
        with torch.no_grad():
            for matrix in self.weight:
                init_matrix(matrix)
                self.calls += 1
            self.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.weight[0].t() + self.bias[0]


@dataclass
class CentreShiftConfig(PeftConfig):
    name: str = "test_centre_shift"


@register_peft_method("test_centre_shift", CentreShiftConfig)
class CentreShiftMethod(PeftMethod):
    """Test method: after each block, the point tokens move by a learned map of their 3D centres."""

    def inject(self, model) -> None:
        width = model.source.width
        model.centre_shift = nn.ModuleDict({"lift": nn.Linear(3, width), "mix": StackedLinears(width),
                                            "norm": nn.LayerNorm(width)})

    def initialised_parts(self, model) -> list[nn.Module]:
        return [model.centre_shift]

    def pass_state(self, model, where, centres: torch.Tensor) -> torch.Tensor:
        return centres  # (B, G, 3): what every block reads

    def run_block(self, model, i: int, block: nn.Module, x: torch.Tensor, context) -> torch.Tensor:
        parts = model.centre_shift
        shift = parts["mix"](parts["norm"](parts["lift"](context.state)))
        y = block(x)
        return torch.cat([y[:, :1], y[:, 1:] + shift], dim=1)


@register_peft_method("test_tokens_max")
class TokensMaxMethod(PeftMethod):
    """Test method: the tokenizer's tokens max-pooled twice into the head; no cls, no final norm."""

    unused_parts = frozenset({"cls_token", "cls_position", "norm"})

    def encode(self, model, points: torch.Tensor) -> torch.Tensor:
        tokens, _ = model.tokenizer(points)
        top = tokens.amax(dim=1)
        return torch.cat([top, top], dim=-1)


def _cloud(b: int = 2, n: int = 256) -> torch.Tensor:
    g = torch.Generator().manual_seed(3)
    x = torch.randn(b, n, 3, generator=g)
    return x / x.norm(dim=-1, keepdim=True).amax(dim=1, keepdim=True)


def test_a_methods_per_pass_state_reaches_every_block_through_the_context():
    torch.manual_seed(0)
    model = any2point.create_model("tiny_2d", num_classes=3, peft="test_centre_shift").eval()
    points = _cloud()
    with torch.no_grad():
        x, context = model.embed(points)
        _, centres = model.tokenizer(points)
        assert torch.equal(context.state, centres)
        parts = model.centre_shift
        shift = parts["mix"](parts["norm"](parts["lift"](centres)))
        h = model.source.stem(x)
        for i, block in enumerate(model.source.blocks):
            if i > 0:  # the tiny source's preset re-injects the PE before every block but the first
                h = h + context.position
            y = block(h)
            h = torch.cat([y[:, :1], y[:, 1:] + shift], dim=1)
        assert torch.equal(model.run_blocks(x, context), h)
        assert torch.equal(model(points), model.head(model.features(h)))
    assert all(p.requires_grad for p in model.centre_shift.parameters())  # outside the source: it trains


@pytest.mark.parametrize("init", ["scan", "modelnet"])
def test_init_reinitialises_a_methods_own_parts_and_its_stacked_layers(init):
    torch.manual_seed(0)
    model = any2point.create_model("tiny_2d", num_classes=3, peft="test_centre_shift", init=init)
    lift, mix, norm = (model.centre_shift[k] for k in ("lift", "mix", "norm"))
    assert mix.calls == 2 and torch.equal(mix.bias, torch.zeros_like(mix.bias))
    assert torch.equal(lift.bias, torch.zeros_like(lift.bias))
    for matrix in (lift.weight, *mix.weight):
        if init == "scan":  # xavier_uniform
            bound = math.sqrt(6 / sum(matrix.shape))
            assert matrix.abs().max() <= bound and matrix.abs().max() > 0.5 * bound
        else:  # trunc_normal(std 0.02), truncated at +-2
            assert matrix.abs().max() <= 2 and 0.01 < matrix.std() < 0.03
    assert torch.equal(norm.weight, torch.ones_like(norm.weight))
    torch.manual_seed(0)
    default = any2point.create_model("tiny_2d", num_classes=3, peft="test_centre_shift")
    assert default.centre_shift["mix"].calls == 0 and bool((default.centre_shift["mix"].weight == 5).all())


def test_declared_unused_parts_are_never_parts_of_the_model():
    torch.manual_seed(0)
    model = any2point.create_model("tiny_2d", num_classes=3, peft="test_tokens_max", init="modelnet").train()
    assert model.cls_token is None and model.cls_position is None and model.norm is None
    names = set(model.state_dict())
    assert not any(n.startswith(("cls_token", "cls_position", "norm.")) for n in names)
    assert any(n.startswith("tokenizer.") for n in names) and any(n.startswith("head.") for n in names)
    points = _cloud()
    model(points).sum().backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
    model.eval()
    with torch.no_grad():
        top = model.tokenizer(points)[0].amax(dim=1)
        assert torch.equal(model(points), model.head(torch.cat([top, top], dim=-1)))


def test_a_seed_gives_the_head_the_same_values_whether_or_not_shared_parts_are_left_out():
    # an unused part is still drawn: the head that follows gets the values it gets with every part
    torch.manual_seed(0)
    without = any2point.create_model("tiny_2d", num_classes=3, peft="test_tokens_max", cls_token="random",
                                     cls_position="random")
    torch.manual_seed(0)
    linear = any2point.create_model("tiny_2d", num_classes=3, peft="linear", cls_token="random",
                                    cls_position="random")
    for (name, a), (_, b) in zip(without.head.state_dict().items(), linear.head.state_dict().items()):
        assert torch.equal(a, b), name


def test_a_method_declaring_parts_it_cannot_leave_out_is_refused_when_registered():
    class Bad(PeftMethod):
        unused_parts = frozenset({"head"})

        def encode(self, model, points):
            return points

    parts = "cls_position, cls_token, learned_position, norm"
    with pytest.raises(TypeError, match=rf"'test_bad_part'.*\['head'\].*: {parts}"):
        register_peft_method("test_bad_part")(Bad)

    class NoEncode(PeftMethod):
        unused_parts = frozenset({"norm"})

    with pytest.raises(TypeError, match="'test_no_encode': unused_parts needs an encode of its own"):
        register_peft_method("test_no_encode")(NoEncode)
