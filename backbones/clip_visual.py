"""open_clip image towers as 2D sources (``open_clip:<arch>:<tag>:visual``), and the
``open_clip:`` family that names either tower.

A tower fits when it is open_clip's own ``VisionTransformer``: a learned (or fixed sin-cos)
absolute ``positional_embedding`` over the class embedding and the patch grid, residual
blocks, ``ln_pre`` (kept as the source's stem: it runs on the embeddings before the first
block) and ``ln_post`` (the final norm). Refused with the reason: ResNet towers, timm
trunks (use ``timm:``), attentional pooling that changes the final norm's width.
"""
from __future__ import annotations

import torch
from torch import nn

from any2point.errors import UnknownSourceError
from any2point.backbones.registry import register_family

from .base import FrozenSource, PositionTable, SourceMismatchError, linear_targets
from .clip_text import ClipTextBlock, build_clip_text, load_tower_weights, open_clip_config, pretrained_location

__all__ = ["ClipVisualSource", "build_clip_visual", "open_clip_by_name"]


class ClipVisualSource(FrozenSource):
    def __init__(self, name: str, visual: nn.Module, weights_tag: str):
        def refuse(reason: str):
            raise SourceMismatchError(f"{name}: {reason}; Any2Point needs open_clip's VisionTransformer with an "
                                      "absolute position table over its class embedding and patch grid")

        for part in ("transformer", "positional_embedding", "class_embedding", "ln_pre", "ln_post", "grid_size"):
            if getattr(visual, part, None) is None:
                refuse(f"the image tower ({type(visual).__name__}) has no {part}")
        width = visual.class_embedding.shape[0]
        grid = tuple(int(g) for g in visual.grid_size)
        if visual.positional_embedding.shape[0] != 1 + grid[0] * grid[1]:
            refuse(f"its position table has {visual.positional_embedding.shape[0]} rows, not 1 + {grid[0]}x{grid[1]}")
        norm_width = getattr(visual.ln_post, "normalized_shape", (width,))[0]
        if norm_width != width:
            refuse(f"its final norm works on the pooled width {norm_width}, not the token width {width}")
        blocks = visual.transformer.resblocks
        position = PositionTable("2d", grid, canvas=tuple(int(v) for v in visual.image_size),
                                 patch=tuple(int(v) for v in visual.patch_size), cls=True)
        super().__init__(name, width, blocks[0].attn.num_heads, position, nn.ModuleList(ClipTextBlock(b) for b in blocks),
                         visual.ln_post, weights_tag, stem=visual.ln_pre)
        self.lora_targets = linear_targets(blocks[0], "attn")
        self.positional_embedding, self.class_embedding = visual.positional_embedding, visual.class_embedding

    def position_table(self) -> torch.Tensor:
        rows, cols = self.position.shape
        return self.positional_embedding[1:].reshape(rows, cols, self.width)

    def cls_position(self) -> torch.Tensor:
        return self.positional_embedding[0]

    def cls_token(self) -> torch.Tensor:
        return self.class_embedding


def _vision_tower(name: str, arch: str, tag: str) -> nn.Module:
    from open_clip.model import _build_vision_tower

    cfg, quick_gelu = open_clip_config(name, arch, tag)
    vision = cfg["vision_cfg"]
    if "timm_model_name" in vision and vision["timm_model_name"]:
        raise SourceMismatchError(f"{name}: the image tower of {arch} is the timm model "
                                  f"{vision['timm_model_name']!r}; use timm:<that model> instead")
    if isinstance(vision.get("layers"), (tuple, list)):
        raise SourceMismatchError(f"{name}: the image tower of {arch} is a ResNet (no position table)")
    return _build_vision_tower(cfg["embed_dim"], vision, quick_gelu=quick_gelu)


def _visual_prefix(keys) -> str:
    return "visual."


def build_clip_visual(name: str, *, arch: str, tag: str, pretrained: bool = True,
                      weights: str | None = None) -> ClipVisualSource:
    """Random, a local checkpoint (``source.weights``), or open_clip's ``tag`` weights from the hub."""
    path, weights_tag, digest = pretrained_location(name, arch, tag, pretrained, weights)
    visual = _vision_tower(name, arch, tag)
    if path is not None:
        load_tower_weights(visual, path, name, arch, _visual_prefix, skip=("proj", "attn_pool"),
                           layout="image tower under visual.: conv1.*, class_embedding, positional_embedding, "
                           "transformer.resblocks.N.*, ln_pre.*, ln_post.*")
    visual.eval()
    source = ClipVisualSource(name, visual, weights_tag)
    source.weights_sha256 = digest
    return source


@register_family("open_clip", library="open_clip", syntax="open_clip:<arch>:<tag>[:visual]",
                 accepts="open_clip's own text tower (TextTransformer), or its VisionTransformer image tower "
                         "with ':visual'",
                 example="open_clip:ViT-B-32:openai")
def open_clip_by_name(model: str, pretrained: bool = True, weights: str | None = None, causal: bool = False):
    """The text tower of ``<arch>:<tag>``, or its image tower for ``<arch>:<tag>:visual``."""
    parts = model.split(":")
    visual = parts[-1] == "visual"
    if visual:
        parts = parts[:-1]
    if len(parts) != 2 or not all(parts):
        raise UnknownSourceError(f"open_clip:{model}: expected open_clip:<arch>:<tag> (text tower) or "
                                 "open_clip:<arch>:<tag>:visual (image tower), e.g. open_clip:ViT-B-32:openai")
    arch, tag = parts
    if visual:
        if causal:
            raise ValueError(f"open_clip:{model}: causal attention is a text-tower option")
        return build_clip_visual(f"open_clip:{model}", arch=arch, tag=tag, pretrained=pretrained, weights=weights)
    return build_clip_text(f"open_clip:{model}", arch=arch, tag=tag, pretrained=pretrained, weights=weights,
                           causal=causal)
