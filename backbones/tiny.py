"""Test-sized random sources, one per position kind, built by the real family builders so
CPU tests exercise the same code paths as the full-size sources.

- ``tiny_1d``: a 2-block BERT (post-LN, embedding LayerNorm), width 48, 64 position rows.
- ``tiny_2d``: a 2-block timm ViT with LayerScale, width 48, an 8 x 12 patch grid on a
  64 x 96 px canvas (not square, so a swapped row/column shows up in tests).
"""
from __future__ import annotations

from any2point.backbones.registry import register_source

from .base import PositionTable
from .bert import BertSource, build_bert
from .vit import TimmViTSource, build_timm_vit


def _tiny_bert_config():
    from transformers import BertConfig

    return BertConfig(vocab_size=128, hidden_size=48, num_hidden_layers=2, num_attention_heads=4,
                      intermediate_size=96, max_position_embeddings=64)


@register_source("tiny_1d", family="tiny", position=PositionTable("1d", (64,)), width=48, depth=2, heads=4,
                 origin="random (test source)", licence="n/a", weights_available=lambda: True)
def tiny_1d(pretrained: bool = True) -> BertSource:
    """Tiny random BERT for tests (1D positions)."""
    return build_bert("tiny_1d", pretrained=False, random_config=_tiny_bert_config, hub_id="")


@register_source("tiny_2d", family="tiny", width=48, depth=2, heads=4,
                 position=PositionTable("2d", (8, 12), canvas=(64, 96), patch=(8, 8), cls=True),
                 origin="random (test source)", licence="n/a", weights_available=lambda: True)
def tiny_2d(pretrained: bool = True) -> TimmViTSource:
    """Tiny random ViT with LayerScale for tests (2D positions)."""
    return build_timm_vit("tiny_2d", "vit_small_patch16_224", pretrained=False, img_size=(64, 96), patch_size=8,
                          embed_dim=48, depth=2, num_heads=4, init_values=0.1, num_classes=0)
