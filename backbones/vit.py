"""Vision transformers from timm as 2D sources: DINOv2 ViT-B/14, DeiT-B/16 and a tiny one.

Only the blocks, final norm, position table and cls token are kept; the patch stem and the
classifier head are dropped (points never pass through them).
"""
from __future__ import annotations

import torch
from torch import nn

from any2point.registry import register_source
from any2point.weights import hf_hub_cached, hub_offline, local_weights, unavailable

from .base import FrozenSource, PositionTable, SourceBlock

__all__ = ["TimmBlock", "TimmViTSource", "build_timm_vit"]


class TimmBlock(SourceBlock):
    """timm's pre-LN ``Block`` (LayerScale and DropPath kept) with an FFN hook."""

    def __init__(self, block: nn.Module):
        super().__init__()
        self.block = block

    def forward(self, x: torch.Tensor, ffn_hook=None) -> torch.Tensor:
        b = self.block
        x = x + b.drop_path1(b.ls1(b.attn(b.norm1(x))))
        f = b.drop_path2(b.ls2(b.mlp(b.norm2(x))))
        return x + f if ffn_hook is None else x + f + ffn_hook(f)


class TimmViTSource(FrozenSource):
    lora_targets = {"attention": ("attn.qkv", "attn.proj"), "mlp": ("mlp.fc1", "mlp.fc2")}

    def __init__(self, name: str, vit: nn.Module, weights_tag: str):
        grid = tuple(vit.patch_embed.grid_size)
        position = PositionTable("2d", grid, canvas=tuple(vit.patch_embed.img_size),
                                 patch=tuple(vit.patch_embed.patch_size))
        super().__init__(name, vit.embed_dim, vit.blocks[0].attn.num_heads, position,
                         nn.ModuleList(TimmBlock(b) for b in vit.blocks), vit.norm, weights_tag)
        if getattr(vit, "reg_token", None) is not None:
            raise ValueError(f"{name}: register tokens are not supported")
        self.pos_embed = vit.pos_embed  # (1, [1 +] rows*cols, D)
        self.cls = vit.cls_token  # (1, 1, D) or None
        self._prefix_rows = 0 if vit.no_embed_class else vit.num_prefix_tokens

    def position_table(self) -> torch.Tensor:
        rows, cols = self.position.shape
        return self.pos_embed[0, self._prefix_rows:].reshape(rows, cols, self.width)

    def cls_position(self) -> torch.Tensor | None:
        return self.pos_embed[0, 0] if self._prefix_rows else None

    def cls_token(self) -> torch.Tensor | None:
        return None if self.cls is None else self.cls[0, 0]


def build_timm_vit(name: str, timm_name: str, *, pretrained: bool, weights: str | None = None,
                   **timm_kwargs) -> TimmViTSource:
    """Create ``timm_name`` (random, from a local file, or from the hub) and wrap it."""
    import timm  # imported here: timm pulls in torchvision, seconds that listing sources should not pay

    timm_kwargs.setdefault("drop_path_rate", 0.0)
    local = local_weights(weights, name)
    if not pretrained:
        vit, tag = timm.create_model(timm_name, pretrained=False, **timm_kwargs), "random"
    elif local is not None:
        vit = timm.create_model(timm_name, pretrained=True, pretrained_cfg_overlay={"file": str(local)}, **timm_kwargs)
        tag = f"file:{local.name}"
    else:
        cfg = timm.models.get_pretrained_cfg(timm_name)
        hub_id = cfg.hf_hub_id if cfg is not None else timm_name
        try:
            if hub_offline() and not hf_hub_cached(hub_id):
                raise ConnectionError("HF_HUB_OFFLINE is set and the hub cache holds no copy")
            vit = timm.create_model(timm_name, pretrained=True, **timm_kwargs)
        except Exception as exc:  # network, offline mode or missing cache
            raise unavailable(name, what=f"the timm weights of {timm_name}", url=f"https://huggingface.co/{hub_id}",
                              extra="a timm .safetensors/.pth state dict is expected", cause=exc) from exc
        tag = timm_name.split(".", 1)[1] if "." in timm_name else "timm"
    return TimmViTSource(name, vit, tag)


_DINOV2 = "vit_base_patch14_dinov2.lvd142m"
_DEIT = "deit_base_patch16_224.fb_in1k"


@register_source("dinov2", family="vit", position="2d", width=768, depth=12, heads=12,
                 table="37x37 (+cls) on 518x518 px", origin=f"timm {_DINOV2} (HF hub)", licence="Apache-2.0",
                 weights_available=lambda: hf_hub_cached(f"timm/{_DINOV2}"))
def dinov2(pretrained: bool = True, weights: str | None = None, **kw) -> TimmViTSource:
    """DINOv2 ViT-B/14 (self-supervised vision, LVD-142M)."""
    return build_timm_vit("dinov2", _DINOV2, pretrained=pretrained, weights=weights, **kw)


@register_source("deit_base", family="vit", position="2d", width=768, depth=12, heads=12,
                 table="14x14 (+cls) on 224x224 px", origin=f"timm {_DEIT} (HF hub)", licence="Apache-2.0",
                 weights_available=lambda: hf_hub_cached(f"timm/{_DEIT}"))
def deit_base(pretrained: bool = True, weights: str | None = None, **kw) -> TimmViTSource:
    """DeiT-B/16 (supervised vision, ImageNet-1k)."""
    return build_timm_vit("deit_base", _DEIT, pretrained=pretrained, weights=weights, **kw)
