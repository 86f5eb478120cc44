"""ViT-style image encoders from transformers (``ViTModel``) as 2D sources: the ``hf:``
family's image half.

A model fits when its layers are ViT layers (``layernorm_before``, ``attention``,
``layernorm_after``, ``mlp``), its ``embeddings.position_embeddings`` hold the cls row and
the patch grid, and ``layernorm`` is its final norm. Refused with the reason: extra prefix
tokens (a distillation token, registers), other layer shapes (use ``timm:`` for those).
"""
from __future__ import annotations

import torch
from torch import nn

from .base import FrozenSource, PositionTable, SourceBlock, SourceMismatchError, linear_targets, with_ffn

__all__ = ["HfViTBlock", "HfViTSource", "hf_vit_layers"]

_LAYER_PARTS = ("layernorm_before", "attention", "layernorm_after", "mlp", "dropout")


class HfViTBlock(SourceBlock):
    """transformers' pre-LN ``ViTLayer`` with an FFN hook (its own attention module runs)."""

    def __init__(self, layer: nn.Module):
        super().__init__()
        self.layer = layer

    def forward(self, x: torch.Tensor, ffn_hook=None) -> torch.Tensor:
        l = self.layer
        h = x + l.dropout(l.attention(l.layernorm_before(x))[0])
        f = l.dropout(l.mlp(l.layernorm_after(h)))
        return with_ffn(h, f, ffn_hook)


def hf_vit_layers(model: nn.Module) -> nn.ModuleList | None:
    """The layer list of a transformers ViT (``layers``, or ``encoder.layer`` in older versions)."""
    layers = getattr(model, "layers", None)
    if layers is None:
        layers = getattr(getattr(model, "encoder", None), "layer", None)
    return layers


def _as_pair(v) -> tuple[int, int]:
    return (int(v), int(v)) if isinstance(v, int) else (int(v[0]), int(v[1]))


class HfViTSource(FrozenSource):
    def __init__(self, name: str, model: nn.Module, weights_tag: str):
        cfg = model.config

        def refuse(reason: str):
            raise SourceMismatchError(f"{name}: {reason}; Any2Point needs a ViT-style encoder (ViTModel) with a "
                                      "learned absolute position table over its cls token and patch grid")

        layers = hf_vit_layers(model)
        if not layers or not all(hasattr(layers[0], p) for p in _LAYER_PARTS):
            refuse(f"{type(model).__name__}'s layers are not ViT layers ({', '.join(_LAYER_PARTS)})")
        emb = getattr(model, "embeddings", None)
        pe, cls = getattr(emb, "position_embeddings", None), getattr(emb, "cls_token", None)
        if not isinstance(pe, nn.Parameter) or pe.dim() != 3:
            refuse("it has no absolute position table (embeddings.position_embeddings)")
        canvas, patch = _as_pair(cfg.image_size), _as_pair(cfg.patch_size)
        grid = (canvas[0] // patch[0], canvas[1] // patch[1])
        prefix = 1 if cls is not None else 0
        if pe.shape[1] != prefix + grid[0] * grid[1]:
            refuse(f"its position table has {pe.shape[1]} rows, not {prefix} cls + {grid[0]}x{grid[1]} grid rows "
                   "(extra prefix tokens such as a distillation token are not supported)")
        position = PositionTable("2d", grid, canvas=canvas, patch=patch, cls=bool(prefix))
        super().__init__(name, cfg.hidden_size, cfg.num_attention_heads, position,
                         nn.ModuleList(HfViTBlock(l) for l in layers), model.layernorm, weights_tag)
        self.lora_targets = linear_targets(layers[0], "attention")
        self.pos_embed, self.cls, self._prefix_rows = pe, cls, prefix

    def position_table(self) -> torch.Tensor:
        rows, cols = self.position.shape
        return self.pos_embed[0, self._prefix_rows:].reshape(rows, cols, self.width)

    def cls_position(self) -> torch.Tensor | None:
        return self.pos_embed[0, 0] if self._prefix_rows else None

    def cls_token(self) -> torch.Tensor | None:
        return None if self.cls is None else self.cls[0, 0]
