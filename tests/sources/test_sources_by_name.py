"""Sources named by library (``timm:``, ``hf:``, ``open_clip:``): a small random model of each
kind gets the registry's checks (blocks against the library's own forward, the FFN hook,
frozen parameters, the position table read from the model), whole towers are compared with
the library's forward, misfits are refused with the reason, pretrained weights offline give
the download error, and one tiny training run goes through ``any2point-train``."""
from __future__ import annotations

import json

import open_clip
import pytest
import timm
import torch
from omegaconf import OmegaConf
from safetensors.torch import save_file
from torch import nn
from transformers import BertConfig, BertModel, RobertaConfig, RobertaModel, RoFormerConfig, ViTConfig, ViTModel

import any2point
from any2point.backbones.base import PositionTable, SourceMismatchError
from any2point.checkpoint import load_checkpoint
from any2point.errors import UnknownSourceError, WeightsUnavailableError
from any2point.backbones.registry import source_preset
from any2point.errors import ConfigError
from any2point.hydra_app import check_source_preset, source_preset_overrides
from .test_registry import REFERENCES, _check_blocks, _check_ffn_hook, _check_position_table
from ..tiny_run import TINY, compose_config, metrics, run_module

TIMM_TINY = "timm:vit_tiny_patch16_224"
TIMM_OPTIONS = dict(depth=2, img_size=(32, 48), patch_size=8)  # 4 x 6 patches: rows and columns differ
CLIP_ARCH = "A2PTestTiny"  # a custom open_clip config, added the way users add theirs
CLIP_CONFIG = {"embed_dim": 32,
               "vision_cfg": {"image_size": 32, "layers": 2, "width": 48, "head_width": 12, "patch_size": 8},
               "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 40, "heads": 4, "layers": 2}}


def _small_bert(cls_config, **kw):
    return cls_config(vocab_size=120, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                      intermediate_size=64, **kw)


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """transformers folders written by the library itself (config + weights), an open_clip config."""
    root = tmp_path_factory.mktemp("library_models")
    torch.manual_seed(0)
    made = {}
    for key, model in {
        "bert": BertModel(_small_bert(BertConfig, max_position_embeddings=40), add_pooling_layer=False),
        "roberta": RobertaModel(_small_bert(RobertaConfig, max_position_embeddings=42, pad_token_id=1,
                                            bos_token_id=0, eos_token_id=2), add_pooling_layer=False),
        "vit": ViTModel(ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                                  image_size=[32, 48], patch_size=8), add_pooling_layer=False),
        "relative": BertModel(_small_bert(BertConfig, position_embedding_type="relative_key"), add_pooling_layer=False),
        "rotary": None,
    }.items():
        made[key] = root / key
        if model is None:  # RoFormer: rotary positions only; the config alone is enough to refuse it
            _small_bert(RoFormerConfig, embedding_size=32).save_pretrained(made[key])
        else:
            model.save_pretrained(made[key])
    clip_dir = root / "open_clip_configs"
    clip_dir.mkdir()
    (clip_dir / f"{CLIP_ARCH}.json").write_text(json.dumps(CLIP_CONFIG))
    open_clip.add_model_config(clip_dir)
    return made


KINDS = ["timm", "hf_bert", "hf_roberta", "hf_vit", "open_clip_text", "open_clip_visual"]


def _name_and_options(kind, folders):
    return {"timm": (TIMM_TINY, TIMM_OPTIONS),
            "hf_bert": (f"hf:{folders['bert']}", {}),
            "hf_roberta": (f"hf:{folders['roberta']}", {}),
            "hf_vit": (f"hf:{folders['vit']}", {}),
            "open_clip_text": (f"open_clip:{CLIP_ARCH}:none", {}),
            "open_clip_visual": (f"open_clip:{CLIP_ARCH}:none:visual", {})}[kind]


@pytest.fixture(scope="module", params=KINDS)
def by_name(request, folders):
    name, options = _name_and_options(request.param, folders)
    torch.manual_seed(0)
    return request.param, name, any2point.create_source(name, pretrained=False, **options).eval()


def test_generated_checks_hold_for_every_library(by_name):
    kind, name, source = by_name
    assert source.name == name and source.weights_tag == "random"
    params = list(source.parameters())
    assert params and not any(p.requires_grad for p in params)
    assert all(type(b) in REFERENCES for b in source.blocks)
    x = torch.randn(2, 7, source.width, generator=torch.Generator().manual_seed(1))
    _check_blocks(source, x)
    _check_ffn_hook(source, x)
    _check_position_table(source)


def test_lora_targets_are_read_from_the_model_and_name_its_linears(by_name):
    kind, name, source = by_name
    linears = [n for n, m in source.named_modules() if isinstance(m, nn.Linear)]
    targets = source.lora_targets["attention"] + source.lora_targets["mlp"]
    assert source.lora_targets["mlp"]
    for target in targets:
        assert any(n.endswith("." + target) for n in linears), target
    if kind.startswith("open_clip"):  # nn.MultiheadAttention reads out_proj's weight directly: not a target
        assert source.lora_targets["attention"] == ()
    else:
        assert source.lora_targets["attention"]


def test_sizes_and_position_table_are_read_from_the_timm_model():
    torch.manual_seed(5)
    vit = timm.create_model("vit_tiny_patch16_224", pretrained=False, drop_path_rate=0.0, **TIMM_OPTIONS)
    torch.manual_seed(5)
    source = any2point.create_source(TIMM_TINY, pretrained=False, **TIMM_OPTIONS)
    assert (source.width, source.depth, source.heads) == (192, 2, 3)
    assert source.position == PositionTable("2d", (4, 6), canvas=(32, 48), patch=(8, 8), cls=True)
    assert torch.equal(source.position_table(), vit.pos_embed[0, 1:].reshape(4, 6, 192))
    assert torch.equal(source.cls_position(), vit.pos_embed[0, 0]) and torch.equal(source.cls_token(), vit.cls_token[0, 0])
    x = torch.randn(2, 5, 192)
    with torch.no_grad():
        torch.testing.assert_close(source(x), vit.norm(vit.blocks(x)))


@pytest.mark.parametrize("model", ["vit_tiny_patch16_224", "vit_base_patch16_clip_224"])  # the CLIP one has norm_pre
def test_timm_tower_equals_timm_forward_features(model):
    """Patch tokens + the table, cls token + its row, through the source == timm's own forward."""
    options = dict(depth=2, embed_dim=48, num_heads=4, img_size=(32, 48), patch_size=8)
    torch.manual_seed(1)
    vit = timm.create_model(model, pretrained=False, drop_path_rate=0.0, **options).eval()
    torch.manual_seed(1)
    source = any2point.create_source(f"timm:{model}", pretrained=False, **options).eval()
    pixels = torch.randn(2, 3, 32, 48)
    with torch.no_grad():
        patches = vit.patch_embed(pixels) + source.position_table().reshape(1, 24, 48)
        cls = (source.cls_token() + source.cls_position()).expand(2, 1, 48)
        torch.testing.assert_close(source(torch.cat([cls, patches], 1)), vit.forward_features(pixels))


@pytest.mark.parametrize("key,model_cls,first_row", [("bert", BertModel, 0), ("roberta", RobertaModel, 2)])
def test_hf_text_folder_equals_the_library_encoder(folders, key, model_cls, first_row):
    """Positions as the library numbers them: RoBERTa from padding_idx + 1 = 2."""
    model = model_cls.from_pretrained(folders[key], add_pooling_layer=False).eval()
    source = any2point.create_source(f"hf:{folders[key]}")
    assert source.weights_tag == f"file:{key}"
    rows = model.config.max_position_embeddings - first_row
    assert source.position == PositionTable("1d", (rows,))
    weight = model.embeddings.position_embeddings.weight
    assert torch.equal(source.position_table(), weight[first_row:])
    cls_id = 0 if key == "roberta" else 101
    assert torch.equal(source.cls_token(), model.embeddings.word_embeddings.weight[cls_id])
    embeds = torch.randn(2, 9, 32)
    with torch.no_grad():
        expected = model(inputs_embeds=embeds).last_hidden_state
        torch.testing.assert_close(source(embeds + source.position_table()[:9]), expected, rtol=1e-4, atol=1e-5)


def test_hf_vit_folder_equals_the_library_encoder(folders):
    model = ViTModel.from_pretrained(folders["vit"], add_pooling_layer=False).eval()
    source = any2point.create_source(f"hf:{folders['vit']}")
    assert (source.width, source.depth, source.heads) == (32, 2, 4)
    assert source.position == PositionTable("2d", (4, 6), canvas=(32, 48), patch=(8, 8), cls=True)
    pe = model.embeddings.position_embeddings
    assert torch.equal(source.position_table(), pe[0, 1:].reshape(4, 6, 32))
    assert torch.equal(source.cls_token(), model.embeddings.cls_token[0, 0])
    pixels = torch.randn(2, 3, 32, 48)
    with torch.no_grad():
        expected = model(pixel_values=pixels).last_hidden_state
        tokens = model.embeddings.patch_embeddings(pixels) + source.position_table().reshape(1, 24, 32)
        cls = (source.cls_token() + source.cls_position()).expand(2, 1, 32)
        torch.testing.assert_close(source(torch.cat([cls, tokens], 1)), expected, rtol=1e-4, atol=1e-5)


@pytest.fixture(scope="module")
def clip_checkpoint(folders, tmp_path_factory):
    """A whole open_clip model of the custom arch, and its state dict saved as a user would."""
    torch.manual_seed(2)
    clip = open_clip.create_model(CLIP_ARCH, pretrained=None).eval()
    path = tmp_path_factory.mktemp("clip") / "tiny_clip.safetensors"
    save_file({k: v.contiguous() for k, v in clip.state_dict().items()}, str(path))
    return clip, path


def test_open_clip_text_tower_equals_the_library_text_encoder(clip_checkpoint):
    clip, path = clip_checkpoint
    source = any2point.create_source(f"open_clip:{CLIP_ARCH}:none", weights=str(path), causal=True)
    assert source.weights_tag == "file:tiny_clip.safetensors"
    assert (source.width, source.depth, source.heads) == (40, 2, 4) and source.position == PositionTable("1d", (16,))
    assert torch.equal(source.cls_token(), clip.token_embedding.weight[49406])
    ids = torch.randint(0, 49408, (2, 16))
    with torch.no_grad():
        x = clip.token_embedding(ids) + clip.positional_embedding
        expected = clip.ln_final(clip.transformer(x, attn_mask=clip.attn_mask))
        torch.testing.assert_close(source(x), expected)


def test_open_clip_image_tower_equals_the_library_image_encoder(clip_checkpoint):
    clip, path = clip_checkpoint
    source = any2point.create_source(f"open_clip:{CLIP_ARCH}:none:visual", weights=str(path))
    assert (source.width, source.depth, source.heads) == (48, 2, 4)
    assert source.position == PositionTable("2d", (4, 4), canvas=(32, 32), patch=(8, 8), cls=True)
    visual = clip.visual
    pixels = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = visual.ln_post(visual.transformer(visual._embeds(pixels)))
        patches = visual.conv1(pixels).flatten(2).transpose(1, 2) + source.position_table().reshape(1, 16, 48)
        cls = (source.cls_token() + source.cls_position()).expand(2, 1, 48)
        torch.testing.assert_close(source(torch.cat([cls, patches], 1)), expected)


REFUSED = [
    ("timm:vit_base_patch14_reg4_dinov2", dict(depth=1, embed_dim=32, num_heads=2, img_size=28), "register tokens"),
    ("timm:vit_tiny_patch16_224", dict(depth=1, img_size=32, no_embed_class=True), "no_embed_class"),
    ("timm:eva02_tiny_patch14_224", dict(depth=1, img_size=28), "rotary"),
    ("timm:resnet18", {}, "no `blocks`"),
    ("hf:{relative}", {}, "'relative_key', not absolute"),
    ("hf:{rotary}", {}, "no absolute position table"),
    ("open_clip:RN50:openai:visual", {}, "ResNet"),
    ("open_clip:xlm-roberta-base-ViT-B-32:laion5b_s13b_b90k", {}, "Hugging Face model 'xlm-roberta-base'"),
]


@pytest.mark.parametrize("name,options,reason", REFUSED)
def test_a_model_that_does_not_fit_is_refused_with_the_reason(folders, name, options, reason):
    name = name.format(**folders)
    with pytest.raises(SourceMismatchError) as err:
        any2point.create_source(name, pretrained=False, **options)
    assert reason in str(err.value) and name in str(err.value)


@pytest.mark.parametrize("name,expected", [
    ("foo:bar", "prefixes: timm:<model name>"),
    ("timm:", "names no model"),
    ("timm:vit_tiny_patch16_2244", "vit_tiny_patch16_224"),
    ("open_clip:ViT-B-32", "open_clip:<arch>:<tag>"),
    ("open_clip:ViT-B-3:openai", "ViT-B-32"),
])
def test_unknown_names_are_reported_with_what_is_expected(name, expected):
    with pytest.raises(UnknownSourceError) as err:
        any2point.create_source(name, pretrained=False)
    assert expected in str(err.value)


def test_a_missing_local_hf_folder_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="no_such_folder"):
        any2point.create_source(f"hf:{tmp_path / 'no_such_folder'}")


@pytest.mark.parametrize("name,urls", [
    ("timm:vit_small_patch14_dinov2.lvd142m", ["https://huggingface.co/timm/vit_small_patch14_dinov2.lvd142m"]),
    ("hf:bert-base-uncased", ["https://huggingface.co/bert-base-uncased"]),
    ("open_clip:ViT-B-32:openai:visual", ["https://huggingface.co/timm/vit_base_patch32_clip_224.openai",
                                          "https://openaipublic.azureedge.net/clip/models/"]),
])
def test_pretrained_offline_without_copy_says_what_to_download_and_where(tmp_path, monkeypatch, name, urls):
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "empty-hub-cache"))
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.cache/clip is read either way
    with pytest.raises(WeightsUnavailableError) as err:
        any2point.create_source(name)
    msg = str(err.value)
    assert msg.startswith(name + ":") and "source.weights=" in msg and "source.pretrained=false" in msg
    for url in urls:
        assert url in msg


def test_create_model_by_name_runs_on_the_base_settings():
    torch.manual_seed(0)
    model = any2point.create_model(TIMM_TINY, num_classes=5, pretrained=False, source_options=TIMM_OPTIONS,
                                   tokenizer={"k": 8})
    assert model.source.name == TIMM_TINY
    assert any2point.model_config(TIMM_TINY) == any2point.model_config("no_such_preset")
    assert any2point.model_config("hf:/some/folder") == any2point.model_config("no_such_preset")
    model.eval()
    with torch.no_grad():
        assert model(torch.randn(2, 64, 3)).shape == (2, 5)


PRESET_NAMES = ["minilm", "dinov2", "tiny_2d", "clip_text", "hf:org/name", "hf:/data/models/bert-base",
                TIMM_TINY + ".augreg_in21k", "open_clip:ViT-B-32:openai", "open_clip:ViT-B-32:openai:visual",
                "org/name", "../model/minilm"]


@pytest.mark.parametrize("name", PRESET_NAMES)
def test_a_source_name_gets_the_same_preset_from_create_model_and_from_the_app(name):
    # the app's composition of a command naming the source by value, as any2point-train runs it
    overrides = source_preset_overrides([f"source.name={name}", "source.pretrained=false"])
    cfg = compose_config("train", overrides)
    assert cfg.source.name == name and not cfg.source.pretrained
    assert OmegaConf.to_object(cfg.model) == any2point.model_config(name)
    preset = source_preset(name)
    assert overrides[-1] == f"model={preset}"
    if ":" in name or "/" in name:
        assert preset == "base" and any2point.model_config(name) == any2point.model_config("no_such_preset")
    else:  # a named source's own file, chosen by the source option too (the defaults list follows the rule)
        assert preset == name
        assert OmegaConf.to_object(compose_config("train", [f"source={name}"]).model) == any2point.model_config(name)
        assert any2point.model_config(name) != any2point.model_config("no_such_preset")


def test_create_model_builds_on_the_preset_of_the_name():
    for name, options in (("tiny_2d", {}), (TIMM_TINY, TIMM_OPTIONS)):
        model = any2point.create_model(name, num_classes=3, pretrained=False, source_options=options)
        assert model.source.name == name and model.config == any2point.model_config(name)
    assert any2point.model_config("tiny_2d") != any2point.model_config(TIMM_TINY)


def test_any2point_show_composes_a_source_name_on_its_preset_as_the_training_app_does():
    from any2point.show.inputs import compose_train_config

    for name in ("hf:org/name", "dinov2_small"):
        cfg = compose_train_config([f"source.name={name}"])
        assert OmegaConf.to_object(cfg.model) == any2point.model_config(name)


def test_a_preset_chosen_on_the_command_line_wins_and_a_mixed_sweep_is_refused():
    name = "hf:org/name"
    assert source_preset_overrides([f"source.name={name}", "model=tiny_2d"]) == [f"source.name={name}", "model=tiny_2d"]
    assert source_preset_overrides(["seed=1"]) == ["seed=1"]
    assert source_preset_overrides([f"source.name={name},{TIMM_TINY}", "seed=1"]) == [
        f"source.name={name},{TIMM_TINY}", "seed=1", "model=base"]
    with pytest.raises(ConfigError, match=r"source.name=minilm,hf:org/name: .*minilm -> model=minilm, "
                                          r"hf:org/name -> model=base"):
        source_preset_overrides([f"source.name=minilm,{name}"])


def test_a_run_whose_config_names_another_sources_preset_is_refused():
    check_source_preset("dinov2", "dinov2", [])
    check_source_preset("timm:x", "minilm", ["model=minilm"])  # chosen on the command line
    with pytest.raises(ConfigError, match="source.name=timm:x runs on model preset 'base'.*composed model=minilm"):
        check_source_preset("timm:x", "minilm", ["experiment=mine"])


def test_training_a_timm_model_by_name_end_to_end(tmp_path):
    run_dir = tmp_path / "run"
    tiny = [o for o in TINY if not o.startswith("source=")]
    options = [f"+source.options.{k}={list(v) if isinstance(v, tuple) else v}" for k, v in TIMM_OPTIONS.items()]
    assert "data=shapes" in tiny and "train.epochs=1" in tiny
    # model/base.yaml's k=81 is more than the 64-point clouds hold: refused at start-up, so set it
    proc = run_module("any2point.train", [f"source.name={TIMM_TINY}", "source.pretrained=false", *tiny, *options,
                                          "model.tokenizer.k=8", f"hydra.run.dir={run_dir}"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = metrics(run_dir)
    assert result["epochs"] == 1 and 0.0 <= result["oa"] <= 100.0
    saved = OmegaConf.load(run_dir / ".hydra" / "config.yaml")
    expected = OmegaConf.to_container(OmegaConf.structured(any2point.model_config(TIMM_TINY)))
    expected["tokenizer"]["k"] = 8  # model/base.yaml, with the command line's k
    assert OmegaConf.to_container(saved.model) == expected
    loaded = load_checkpoint(run_dir / "checkpoint.safetensors")
    assert loaded.model.source.name == TIMM_TINY and loaded.model.source.position.shape == (4, 6)
