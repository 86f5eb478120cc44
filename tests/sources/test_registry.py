"""The source registry: checks generated for every registered source, plus the registry's
mechanics (unknown names, entry-point plug-ins) and weight resolution (offline errors,
local files through ``source.weights``)."""
from __future__ import annotations

import hashlib
import importlib
import json
import logging
import sys
import textwrap
import warnings

import open_clip
import pytest
import timm
import torch
import torch.nn.functional as F
from open_clip.model import _build_text_tower
from open_clip.transformer import Transformer as OpenClipTransformer
from safetensors.torch import save as safetensors_bytes
from safetensors.torch import save_file
from torch import nn
from transformers.models.bert.modeling_bert import BertEncoder

import any2point
from any2point.backbones import registry
from any2point.backbones import clip_text as clip_text_module
from any2point.backbones.bert import BertBlock
from any2point.backbones.base import PositionTable
from any2point.backbones.clip_text import ClipTextBlock, ClipTextSource
from any2point.backbones.hf_vit import HfViTBlock
from any2point.backbones.imagebind_audio import ImageBindAudioBlock
from any2point.backbones.vit import TimmBlock
from any2point import plugins
from any2point.data import list_data_formats
from any2point.errors import UnknownSourceError, WeightsUnavailableError
from any2point.peft import list_peft_methods
from ..hub_cache import plant_hub_file

BIG = {"clip_text", "dinov2", "deit_base", "roberta_base", "imagebind_audio"}


# ---------------------------------------------------------------- library references
def _timm_reference(blocks, x):
    return nn.Sequential(*(b.block for b in blocks))(x)  # timm's own Block.forward


def _bert_reference(blocks, x):
    encoder = BertEncoder(blocks[0].layer.attention.self.config)
    encoder.layer = nn.ModuleList(b.layer for b in blocks)
    return encoder.eval()(x).last_hidden_state


def _clip_reference(blocks, x):
    first = blocks[0].block
    transformer = OpenClipTransformer(first.attn.embed_dim, 0, first.attn.num_heads)
    transformer.resblocks = nn.ModuleList(b.block for b in blocks)
    mask = None
    if blocks[0].causal:  # open_clip's 77 x 77 text mask, cut to the sequence length
        mask = torch.empty(77, 77).fill_(float("-inf")).triu_(1)[: x.shape[1], : x.shape[1]]
    return transformer.eval()(x, attn_mask=mask)


def _hf_vit_reference(blocks, x):
    for b in blocks:  # transformers' own ViTLayer.forward
        x = b.layer(x)
    return x


def _imagebind_reference(blocks, x):
    """ImageBind's trunk as it runs: sequence-first, torch's nn.MultiheadAttention with bias_k/v."""
    x = x.transpose(0, 1)
    for b in blocks:
        D = x.shape[-1]
        mha = nn.MultiheadAttention(D, b.attn.num_heads, bias=True, add_bias_kv=True)
        mha.load_state_dict(b.attn.state_dict())
        y = F.layer_norm(x, (D,), b.norm_1.weight, b.norm_1.bias, 1e-6)
        x = x + mha(y, y, y, need_weights=False)[0]
        y = F.layer_norm(x, (D,), b.norm_2.weight, b.norm_2.bias, 1e-6)
        x = x + F.linear(F.gelu(F.linear(y, b.mlp.fc1.weight, b.mlp.fc1.bias)), b.mlp.fc2.weight, b.mlp.fc2.bias)
    return x.transpose(0, 1)


REFERENCES = {TimmBlock: _timm_reference, BertBlock: _bert_reference, ClipTextBlock: _clip_reference,
              ImageBindAudioBlock: _imagebind_reference, HfViTBlock: _hf_vit_reference}


# ---------------------------------------------------------------- generated per source
# full-size sources (BIG) are slow to build: their checks run with -m slow
@pytest.fixture(scope="module", params=[pytest.param(n, marks=pytest.mark.slow) if n in BIG else n
                                        for n in any2point.list_sources()])
def built(request):
    """Each source built once with random weights (pytest groups the tests by source)."""
    torch.manual_seed(0)
    return request.param, any2point.create_source(request.param, pretrained=False).eval()


def _input(name, width):
    B, T = (1, 6) if name in BIG else (2, 9)
    return torch.randn(B, T, width, generator=torch.Generator().manual_seed(1))


def test_fully_frozen(built):
    name, source = built
    params = list(source.parameters())
    assert params and not any(p.requires_grad for p in params)
    assert not source.position_table().requires_grad


def test_sizes_match_spec(built):
    name, source = built
    spec = any2point.get_source_spec(name)
    assert (source.width, source.depth, source.heads) == (spec.width, spec.depth, spec.heads)
    assert source.name == name and source.weights_tag == "random"
    assert all(b.__class__ in REFERENCES for b in source.blocks)


def _check_position_table(source):
    pos, table = source.position, source.position_table()
    assert table.shape == (*pos.shape, source.width)
    if pos.kind == "2d":  # the grid tiles the canvas exactly
        assert tuple(g * p for g, p in zip(pos.shape, pos.patch)) == pos.canvas
    assert (source.cls_position() is not None) == pos.cls or pos.kind == "1d"
    for extra in (source.cls_position(), source.cls_token()):
        assert extra is None or extra.shape == (source.width,)


def test_position_table_is_the_registered_one(built):
    name, source = built
    spec = any2point.get_source_spec(name)
    assert source.position == spec.position  # registered as a value, not as prose
    _check_position_table(source)


def test_blocks_match_library_layers(built):
    name, source = built
    _check_blocks(source, _input(name, source.width))


def _check_blocks(source, x):
    reference = REFERENCES[type(source.blocks[0])]
    with torch.no_grad():
        ours = x
        for block in source.blocks:
            ours = block(ours)
        expected = reference(source.blocks, x)
        torch.testing.assert_close(ours, expected, rtol=1e-4, atol=1e-4)
        # the reference path of the source: stem, blocks, final norm
        torch.testing.assert_close(source(x), source.final_norm(reference(source.blocks, source.stem(x))),
                                   rtol=1e-4, atol=1e-4)


def test_ffn_hook_sees_ffn_output_and_zero_hook_changes_nothing(built):
    name, source = built
    _check_ffn_hook(source, _input(name, source.width))


def _check_ffn_hook(source, x):
    seen = []

    def zero_hook(f):
        seen.append(f.shape)
        return torch.zeros_like(f)

    with torch.no_grad():
        for block in source.blocks[:2]:
            torch.testing.assert_close(block(x, ffn_hook=zero_hook), block(x), rtol=0, atol=0)
            assert not torch.allclose(block(x, ffn_hook=lambda f: torch.ones_like(f)), block(x))
    assert seen == [x.shape] * min(2, source.depth)


# ---------------------------------------------------------------- registry mechanics
def test_unknown_source_lists_names_and_closest_match():
    with pytest.raises(UnknownSourceError) as err:
        any2point.create_source("dinov3")
    msg = str(err.value)
    assert "Did you mean 'dinov2'" in msg
    for name in any2point.list_sources():
        assert name in msg
    assert isinstance(err.value, KeyError)


@pytest.fixture
def isolated_registry(monkeypatch):
    """A registry copy whose entry points are read again; restored afterwards."""
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    monkeypatch.setattr(plugins, "_loaded", plugins._loaded - {registry.ENTRY_POINT_GROUP})


def _write_distribution(root, name, entry_points, group="any2point.sources"):
    dist = root / f"{name}-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name.replace('_', '-')}\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(f"[{group}]\n" + entry_points)


def test_third_party_source_registers_through_entry_point(tmp_path, monkeypatch, isolated_registry):
    (tmp_path / "a2p_demo_plugin.py").write_text(textwrap.dedent('''
        from transformers import BertConfig
        from any2point.registry import register_source  # the path plug-ins used before the registry moved
        from any2point.backbones.base import PositionTable
        from any2point.backbones.bert import build_bert

        def _config():
            return BertConfig(vocab_size=16, hidden_size=24, num_hidden_layers=1, num_attention_heads=2,
                              intermediate_size=48, max_position_embeddings=20)

        @register_source("demo_plugin", family="demo", position=PositionTable("1d", (20,)), width=24, depth=1,
                         heads=2, origin="random", licence="n/a", weights_available=lambda: True)
        def demo_plugin(pretrained=True):
            """A plug-in source from another distribution."""
            return build_bert("demo_plugin", pretrained=False, random_config=_config, hub_id="")
    '''))
    _write_distribution(tmp_path, "a2p_demo_plugin", "demo_plugin = a2p_demo_plugin\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "a2p_demo_plugin", raising=False)
    importlib.invalidate_caches()
    try:
        assert "demo_plugin" in any2point.list_sources()
        source = any2point.create_source("demo_plugin")
        assert source.width == 24 and source.position_table().shape == (20, 24)
        assert any2point.get_source_spec("demo_plugin").table == "20 rows"
        assert not any(p.requires_grad for p in source.parameters())
    finally:
        sys.modules.pop("a2p_demo_plugin", None)


@pytest.mark.parametrize("group, what, listed, builtins", [
    ("any2point.sources", "source", any2point.list_sources, {"minilm", "tiny_1d", "dinov2"}),
    ("any2point.peft_methods", "peft method", list_peft_methods, {"any2point", "lora", "full"}),
    ("any2point.data_formats", "data format", list_data_formats, {"modelnet40_h5", "shapes", "folder"}),
])
def test_broken_plugin_is_reported_and_does_not_hide_builtins(tmp_path, monkeypatch, caplog, group, what, listed,
                                                              builtins):
    """Every registry reads its group through the one loader (any2point.plugins): a plug-in that
    cannot be imported is one warning naming it, and the built-ins stay listed."""
    _write_distribution(tmp_path, "a2p_broken_plugin", "broken = a2p_module_that_does_not_exist\n", group)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(plugins, "_loaded", plugins._loaded - {group})
    importlib.invalidate_caches()
    with caplog.at_level(logging.WARNING, logger="any2point.plugins"):
        names = listed()
    assert builtins <= set(names)
    assert (f"could not load {what} plug-in 'broken' (a2p_module_that_does_not_exist): "
            f"No module named 'a2p_module_that_does_not_exist'") in caplog.text
    assert group in plugins._loaded


# ---------------------------------------------------------------- weight resolution
def test_pretrained_offline_without_copy_names_url_and_config_key(tmp_path, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "empty-hub-cache"))
    assert not any2point.get_source_spec("dinov2").weights_available()
    with pytest.raises(WeightsUnavailableError) as err:
        any2point.create_source("dinov2")
    msg = str(err.value)
    assert "https://huggingface.co/timm/vit_base_patch14_dinov2.lvd142m" in msg
    assert "source.weights=" in msg


def test_missing_local_file_names_config_key(tmp_path):
    with pytest.raises(WeightsUnavailableError, match=r"source\.weights=.*nope\.safetensors"):
        any2point.create_source("dinov2", weights=str(tmp_path / "nope.safetensors"))


@pytest.mark.slow  # a full-size DINOv2 (timm's and ours)
def test_timm_state_dict_loads_through_source_weights(tmp_path):
    torch.manual_seed(3)
    vit = timm.create_model("vit_base_patch14_dinov2", pretrained=False, num_classes=0)
    path = tmp_path / "dinov2_timm.safetensors"
    save_file({k: v.contiguous() for k, v in vit.state_dict().items()}, str(path))
    source = any2point.create_source("dinov2", weights=str(path))
    assert source.weights_tag == "file:dinov2_timm.safetensors"
    assert torch.equal(source.position_table(), vit.pos_embed[0, 1:].reshape(37, 37, 768))
    assert torch.equal(source.cls_token(), vit.cls_token[0, 0])
    assert torch.equal(source.blocks[11].block.mlp.fc2.weight, vit.blocks[11].mlp.fc2.weight)
    x = torch.randn(1, 5, 768)
    with torch.no_grad():
        torch.testing.assert_close(source(x), vit.norm(nn.Sequential(*vit.blocks)(x)))


# ---------------------------------------------------------------- clip_text specifics (small tower)
def _small_text_tower(*_args):
    """open_clip's own text-tower builder at test size (the ViT-L one is checked above)."""
    cfg = dict(open_clip.get_model_config("ViT-L-14")["text_cfg"], width=64, heads=4, layers=2)
    return _build_text_tower(32, cfg, quick_gelu=True)


@pytest.fixture
def small_clip(monkeypatch):
    monkeypatch.setattr(clip_text_module, "_text_tower", _small_text_tower)


def test_clip_text_causal_mask_follows_sequence_length(small_clip):
    torch.manual_seed(0)
    bidirectional = any2point.create_source("clip_text", pretrained=False)
    causal = any2point.create_source("clip_text", pretrained=False, causal=True)
    assert not bidirectional.causal and causal.causal
    causal.load_state_dict(bidirectional.state_dict())
    x = torch.randn(2, 10, 64)
    with torch.no_grad():
        out_c = nn.Sequential(*causal.blocks)(x)
        out_b = nn.Sequential(*bidirectional.blocks)(x)
        torch.testing.assert_close(out_c, _clip_reference(causal.blocks, x))
        # causal: a token never sees later ones; bidirectional: it does
        later = x.clone()
        later[:, 5:] += torch.randn(2, 5, 64)  # not a constant shift: LayerNorm would remove that
        assert torch.allclose(nn.Sequential(*causal.blocks)(later)[:, :5], out_c[:, :5], atol=1e-6)
        assert not torch.allclose(nn.Sequential(*bidirectional.blocks)(later)[:, :5], out_b[:, :5], atol=1e-3)


def test_clip_text_full_77_tokens_equal_open_clip_text_tower():
    torch.manual_seed(0)
    text = _small_text_tower().eval()
    source = ClipTextSource("clip_text", text, "random", causal=True)
    ids = torch.randint(0, 49408, (2, 77))
    ids[:, 0] = 49406
    with torch.no_grad():
        x = text.token_embedding(ids) + text.positional_embedding
        expected = text.ln_final(text.transformer(x, attn_mask=text.attn_mask))
        got = source.final_norm(nn.Sequential(*source.blocks)(x))
    torch.testing.assert_close(got, expected)
    assert torch.equal(source.cls_token(), text.token_embedding.weight[49406])
    assert torch.equal(source.cls_position(), text.positional_embedding[0])


class _OpenAIHolder(nn.Module):
    """Holds a text tower under OpenAI CLIP's names, to write a TorchScript archive like ViT-L-14.pt."""

    def __init__(self, text):
        super().__init__()
        self.transformer, self.token_embedding, self.ln_final = text.transformer, text.token_embedding, text.ln_final
        self.positional_embedding, self.text_projection = text.positional_embedding, text.text_projection

    def forward(self, x):
        return self.ln_final(x + self.positional_embedding) @ self.text_projection


@pytest.mark.parametrize("layout", ["clip.safetensors", "custom_text.pt"])
def test_clip_text_checkpoint_loads_through_source_weights(small_clip, tmp_path, layout):
    torch.manual_seed(1)
    donor = _small_text_tower()
    state = {k: v.clone() for k, v in donor.state_dict().items()}
    if layout == "clip.safetensors":  # full CLIP layout: text keys at the top, a vision tower beside them
        state.update({"visual.proj": torch.randn(8, 32), "logit_scale": torch.tensor(4.6)})
        path = tmp_path / layout
        save_file(state, str(path))
    else:  # open_clip CustomTextCLIP layout: the text tower under "text.", plain tensors saved with torch.save
        state = {"text." + k: v for k, v in state.items()} | {"visual.proj": torch.randn(8, 32)}
        path = tmp_path / layout
        torch.save({"state_dict": state}, path)
    source = any2point.create_source("clip_text", weights=str(path))
    assert source.weights_tag == f"file:{layout}"
    assert source.weights_sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert torch.equal(source.positional_embedding, donor.positional_embedding)
    assert torch.equal(source.cls_token(), donor.token_embedding.weight[49406])
    assert torch.equal(source.blocks[1].block.attn.in_proj_weight, donor.transformer.resblocks[1].attn.in_proj_weight)
    assert torch.equal(source.final_norm.weight, donor.ln_final.weight)


def test_clip_text_refuses_an_openai_torchscript_release_file(small_clip, tmp_path):
    """OpenAI's ViT-L-14.pt is a TorchScript archive: refused by name, never loaded."""
    path = tmp_path / "ViT-L-14.pt"
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", r"`torch\.jit\.\w+` is deprecated", FutureWarning)  # the release's format
        torch.jit.save(torch.jit.trace(_OpenAIHolder(_small_text_tower()), torch.randn(1, 77, 64)), str(path))
    with pytest.raises(WeightsUnavailableError) as err:
        any2point.create_source("clip_text", weights=str(path))
    msg = str(err.value)
    assert "\n" not in msg and str(path) in msg and "TorchScript" in msg
    assert "open_clip_model.safetensors" in msg and "timm/vit_large_patch14_clip_224.openai" in msg


def test_clip_text_incomplete_checkpoint_names_missing_keys(small_clip, tmp_path):
    state = _small_text_tower().state_dict()
    del state["transformer.resblocks.1.mlp.c_fc.weight"]
    path = tmp_path / "broken.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    with pytest.raises(ValueError, match=r"broken\.safetensors.*transformer\.resblocks\.1\.mlp\.c_fc\.weight"):
        any2point.create_source("clip_text", weights=str(path))


def test_clip_text_offline_without_copy_names_url(small_clip, tmp_path, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "empty-hub-cache"))
    with pytest.raises(WeightsUnavailableError) as err:
        any2point.create_source("clip_text")
    assert "https://huggingface.co/timm/vit_large_patch14_clip_224.openai" in str(err.value)
    assert "openaipublic" in str(err.value) and "source.weights=" in str(err.value)


# ---------------------------------------------------------------- any2point-sources
def test_sources_table_lists_every_source_without_building_any(monkeypatch, capsys):
    import dataclasses

    from any2point import cli_sources

    def no_build(**kwargs):
        raise AssertionError("any2point-sources must not build sources")

    specs = {n: dataclasses.replace(any2point.get_source_spec(n), factory=no_build) for n in any2point.list_sources()}
    monkeypatch.setattr(registry, "_REGISTRY", specs)
    assert cli_sources.main(["--json"]) == 0
    listing = json.loads(capsys.readouterr().out)
    rows = listing["sources"]
    assert [r["name"] for r in rows] == sorted(specs)
    by_name = {r["name"]: r for r in rows}
    assert by_name["imagebind_audio"]["licence"] == "CC BY-NC-SA 4.0"
    assert by_name["clip_text"]["table"] == "77 rows" and by_name["clip_text"]["width"] == 768
    dino = by_name["dinov2"]  # the values, and the text rendered from them
    assert (dino["table_shape"], dino["canvas"], dino["patch"], dino["cls_position"]) == ([37, 37], [518, 518],
                                                                                           [14, 14], True)
    assert dino["table"] == "37x37 (+cls) on 518x518 px"
    assert by_name["imagebind_audio"]["table"] == "12x19 (+cls) on 192x304 px"
    assert by_name["tiny_1d"]["weights_available"] is True
    assert [f["prefix"] for f in listing["prefixes"]] == ["timm", "hf", "open_clip"]
    assert cli_sources.main([]) == 0
    table = capsys.readouterr().out
    assert table.splitlines()[0].split()[:2] == ["name", "pos"] and "imagebind_audio" in table
    for syntax in ("timm:<model name>", "hf:<model id or local folder>", "open_clip:<arch>:<tag>[:visual]"):
        assert syntax in table


def test_clip_text_reads_the_hub_cache_only_when_the_blob_verifies(small_clip, tmp_path, monkeypatch):
    """Offline, the official weights come from the hub cache, and only when the content hashes to
    the blob's name; OpenAI's own download folder (~/.cache/clip) is never read."""
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HOME", str(tmp_path))
    hub = tmp_path / "hub-cache"
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(hub))
    donor = _small_text_tower()
    (tmp_path / ".cache" / "clip").mkdir(parents=True)  # an "earlier download" of the release file: ignored
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", r"`torch\.jit\.\w+` is deprecated", FutureWarning)
        torch.jit.save(torch.jit.trace(_OpenAIHolder(donor), torch.randn(1, 77, 64)),
                       str(tmp_path / ".cache" / "clip" / "ViT-L-14.pt"))
    assert not any2point.get_source_spec("clip_text").weights_available()
    with pytest.raises(WeightsUnavailableError, match="https://huggingface.co/timm/vit_large_patch14_clip_224.openai"):
        any2point.create_source("clip_text")
    data = safetensors_bytes({k: v.contiguous() for k, v in donor.state_dict().items()})
    repo = "timm/vit_large_patch14_clip_224.openai"
    link = plant_hub_file(hub, repo, "open_clip_model.safetensors", data)
    assert any2point.get_source_spec("clip_text").weights_available()
    source = any2point.create_source("clip_text")
    assert source.weights_tag == "openai" and source.weights_sha256 == hashlib.sha256(data).hexdigest()
    assert torch.equal(source.blocks[0].block.mlp.c_proj.weight, donor.transformer.resblocks[0].mlp.c_proj.weight)
    # the same name over other content: refused, naming the blob
    blob = link.resolve()
    blob.write_bytes(safetensors_bytes({k: torch.zeros_like(v) for k, v in donor.state_dict().items()}))
    with pytest.raises(WeightsUnavailableError) as err:
        any2point.create_source("clip_text")
    assert blob.name in str(err.value) and "delete" in str(err.value) and "\n" not in str(err.value)
