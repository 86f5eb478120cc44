"""``bench profile``: time by module (forward, and backward given back to the module whose
forward made the autograd node) and by operator."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from torch.autograd.profiler import record_function
from torch.profiler import ProfilerActivity, profile

from any2point.bench.profile import ACCUMULATE, Labels, attribute, label_model, module_group


def test_backward_time_goes_to_the_label_whose_forward_made_the_node():
    torch.manual_seed(0)
    first, second = torch.nn.Linear(256, 512), torch.nn.Linear(512, 8)
    x = torch.randn(512, 256)
    labels = Labels()
    labels.module(first, "block.0")
    labels.module(second, "head")
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(2):
            out = second(first(x).relu())
            with record_function("loss"):
                loss = out.square().mean()
            loss.backward()
    labels.remove()
    table = attribute(prof.events(), steps=2)
    assert {("block.0",), ("head",), ("loss",), (ACCUMULATE,), ("(unlabelled)",)} <= set(table)
    assert table[("block.0",)]["forward_ms"] > 0 and table[("block.0",)]["backward_ms"] > 0
    assert table[("head",)]["backward_ms"] > 0 and table[(ACCUMULATE,)]["forward_ms"] == 0
    # every backward node is counted once: under a label, or unlabelled (relu, between the modules)
    backward = sum(e.cpu_time_total for e in prof.events() if e.name.startswith("autograd::engine::evaluate_function")
                   and not any(p.name.startswith("autograd::engine") for p in _parents(e))) / 1e3 / 2
    assert abs(sum(t["backward_ms"] for t in table.values()) - backward) < 1e-6 * max(backward, 1)
    assert first._forward_pre_hooks == {} and first._forward_hooks == {}  # the labels are gone


def _parents(event):
    while event.cpu_parent is not None:
        event = event.cpu_parent
        yield event


def test_labelled_methods_are_restored():
    model = torch.nn.Linear(2, 2)
    labels = Labels()
    labels.method(model, "forward", "head")
    assert "forward" in model.__dict__
    labels.remove()
    assert "forward" not in model.__dict__


def test_a_block_run_in_parts_is_labelled_as_the_block():
    class PostNorm(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.linear, self.norm = torch.nn.Linear(4, 4), torch.nn.LayerNorm(4)

        def residual(self, x):
            return x + self.linear(x)

        def output_norm(self, r):
            return self.norm(r)

        def forward(self, x):
            return self.output_norm(self.residual(x))

    class Model(torch.nn.Module):  # the parts label_model reads, with one post-LN block
        def __init__(self):
            super().__init__()
            self.tokenizer, self.head, self.learned_position = torch.nn.Identity(), torch.nn.Identity(), None
            self.peft_method = None  # no guided adapters
            self.views = torch.nn.Module()
            self.views.positions = self.views.encode = lambda *a: None
            self.source = torch.nn.Module()
            self.source.stem, self.source.blocks = torch.nn.Identity(), torch.nn.ModuleList([PostNorm()])

        def features(self, x):
            return x

    model = Model()
    block = model.source.blocks[0]
    labels = label_model(model)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        block.output_norm(block.residual(torch.randn(3, 4)))  # as a seam before the norm runs it
    labels.remove()
    names = [e.name for e in prof.events()]
    assert names.count("block.0") == 2 and "residual" not in block.__dict__


def test_module_rows_group_blocks_and_aggregation_parts():
    assert module_group(("block.3",)) == "frozen blocks"
    assert module_group(("block.3", "bottleneck")) == "bottleneck"
    assert module_group(("aggregation.3", "aggregation:mini_attention")) == "aggregation: mini_attention"
    assert module_group(("aggregation.3",)) == "aggregation: other"


@pytest.mark.slow  # a bench subprocess
def test_profile_quick_tables_modules_blocks_and_ops():
    proc = subprocess.run([sys.executable, "-m", "any2point.bench", "profile", "--quick", "--json", "--threads", "1"],
                          capture_output=True, text=True, timeout=600, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = json.loads(proc.stdout)
    modules = r["modules"]
    assert {"tokenizer", "projection", "frozen blocks", "bottleneck", "aggregation: mini_attention",
            "aggregation: cell_pooling", "aggregation: cell_norm", "aggregation: view_weights",
            "aggregation: view_sum", "aggregation: reference", "head", "optimizer"} <= set(modules)
    assert all(t["forward_ms"] > 0 for name, t in modules.items() if name not in (ACCUMULATE, "(unlabelled)"))
    assert [b["block"] for b in r["blocks"]] == [0, 1]  # tiny_1d has two blocks
    assert r["ops"] and all(op["self_ms"] >= 0 for op in r["ops"])
    total = sum(t["forward_ms"] + t["backward_ms"] for t in modules.values())
    assert 0.5 * r["step_ms"] < total <= 1.05 * r["step_ms"]
