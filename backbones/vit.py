"""Vision transformers from timm as 2D sources: ``timm:<model name>`` for any timm ViT-style
model, and the presets built on it (DINOv2 ViT-B/14, DeiT-B/16, the tiny test ViT).

A model fits when it has ``blocks`` of timm's pre-LN ``Block`` shape, a learned absolute
``pos_embed`` that covers the patch grid (plus the cls row, if any) and a ``patch_embed``
with a fixed grid. Refused, with the reason: register tokens, a position table without the
cls row (``no_embed_class``), rotary or no position embeddings, dynamic image sizes.
Only the blocks, final norm, position table and cls token are kept; the patch stem and the
classifier head are dropped (points never pass through them).
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from any2point.errors import Any2PointError, ConfigError, UnknownSourceError
from any2point.backbones.registry import register_family, register_source
from any2point.backbones.tensor_files import check_weights_values, read_state_dict
from any2point.backbones.weights import file_sha256, hf_hub_cached, hub_file, local_weights, unavailable

from .base import FrozenSource, PositionTable, SourceBlock, SourceMismatchError, linear_targets, with_ffn

__all__ = ["TimmBlock", "TimmViTSource", "build_timm_vit", "timm_position"]

# timm.create_model arguments that make timm read weights from a path or URL of its own choosing:
# weights come through source.weights (checked, hashed) or the verified hub cache only.
_WEIGHTS_OPTIONS = ("pretrained_cfg", "pretrained_cfg_overlay", "checkpoint_path", "cache_dir")
_BLOCK_PARTS = ("norm1", "attn", "ls1", "drop_path1", "norm2", "mlp", "ls2", "drop_path2")


class TimmBlock(SourceBlock):
    """timm's pre-LN ``Block`` (LayerScale and DropPath kept) with an FFN hook."""

    def __init__(self, block: nn.Module):
        super().__init__()
        self.block = block

    def forward(self, x: torch.Tensor, ffn_hook=None) -> torch.Tensor:
        b = self.block
        x = x + b.drop_path1(b.ls1(b.attn(b.norm1(x))))
        f = b.drop_path2(b.ls2(b.mlp(b.norm2(x))))
        return with_ffn(x, f, ffn_hook)


def timm_position(vit: nn.Module, name: str) -> PositionTable:
    """The position table of a timm ViT, read from the model; refuses what does not fit."""
    def refuse(reason: str):
        raise SourceMismatchError(f"{name}: {reason}; Any2Point needs a ViT whose blocks are timm Blocks and whose "
                                  "learned absolute pos_embed covers the cls token and the patch grid")

    if not hasattr(vit, "blocks") or not len(vit.blocks):
        refuse(f"{type(vit).__name__} has no `blocks`")
    if getattr(vit, "rope", None) is not None:
        refuse("it uses rotary position embeddings (relative positions only)")
    missing = [p for p in _BLOCK_PARTS if not hasattr(vit.blocks[0], p)]
    if missing or not hasattr(vit.blocks[0].attn, "num_heads"):
        refuse(f"its blocks ({type(vit.blocks[0]).__name__}) are not timm's pre-LN Block (no {', '.join(missing)})")
    if getattr(vit, "pos_embed", None) is None:
        refuse("it has no absolute position table (pos_embed)")
    if getattr(vit, "reg_token", None) is not None or getattr(vit, "num_reg_tokens", 0):
        refuse("it has register tokens")
    if getattr(vit, "no_embed_class", False):
        refuse("its position table has no row for the cls token (no_embed_class)")
    if getattr(vit, "dynamic_img_size", False):
        refuse("it resamples its position table per image size (dynamic_img_size)")
    pe = getattr(vit, "patch_embed", None)
    if pe is None or getattr(pe, "grid_size", None) is None:
        refuse("it has no patch grid (patch_embed.grid_size)")
    grid, prefix = tuple(int(g) for g in pe.grid_size), int(getattr(vit, "num_prefix_tokens", 0))
    rows = vit.pos_embed.shape[1]
    if rows != prefix + grid[0] * grid[1]:
        refuse(f"pos_embed has {rows} rows, not {prefix} prefix + {grid[0]}x{grid[1]} grid rows")
    return PositionTable("2d", grid, canvas=tuple(int(v) for v in pe.img_size),
                         patch=tuple(int(v) for v in pe.patch_size), cls=prefix > 0)


class TimmViTSource(FrozenSource):
    def __init__(self, name: str, vit: nn.Module, weights_tag: str):
        position = timm_position(vit, name)
        # CLIP-style ViTs normalise the embeddings before the blocks (norm_pre); average-pooling
        # ones keep their final norm after the pool (fc_norm) and an Identity in `norm`.
        norm = vit.norm
        if isinstance(norm, nn.Identity) and isinstance(getattr(vit, "fc_norm", None), nn.LayerNorm):
            norm = vit.fc_norm
        super().__init__(name, vit.embed_dim, vit.blocks[0].attn.num_heads, position,
                         nn.ModuleList(TimmBlock(b) for b in vit.blocks), norm, weights_tag,
                         stem=getattr(vit, "norm_pre", None))
        self.lora_targets = linear_targets(vit.blocks[0], "attn")
        self.pos_embed = vit.pos_embed  # (1, [1 +] rows*cols, D)
        self.cls = vit.cls_token  # (1, 1, D) or None
        self._prefix_rows = vit.num_prefix_tokens

    def position_table(self) -> torch.Tensor:
        rows, cols = self.position.shape
        return self.pos_embed[0, self._prefix_rows:].reshape(rows, cols, self.width)

    def cls_position(self) -> torch.Tensor | None:
        return self.pos_embed[0, 0] if self._prefix_rows else None

    def cls_token(self) -> torch.Tensor | None:
        return None if self.cls is None else self.cls[0, 0]


def _hub_weights(name: str, timm_name: str) -> tuple[Path, str]:
    """(path, SHA-256) of timm's pretrained weights of ``timm_name`` from the Hugging Face hub
    (its cache, or a download when online), verified against the cache's blob name."""
    import timm

    cfg = timm.models.get_pretrained_cfg(timm_name)
    hub_id = cfg.hf_hub_id if cfg is not None else None
    what = f"the timm weights of {timm_name}"
    extra = "a timm .safetensors state dict is expected"
    if not hub_id:  # a release URL only: timm would fetch it unverified
        url = cfg.url if cfg is not None and cfg.url else f"https://huggingface.co/timm/{timm_name}"
        raise unavailable(name, what=what, url=url, extra=extra + "; only Hugging Face hub copies are fetched")
    repo, _, revision = hub_id.partition("@")
    if cfg.hf_hub_filename:
        stem = cfg.hf_hub_filename.rsplit(".", 1)[0].replace("pytorch_model", "model")
        files = tuple(dict.fromkeys((stem + ".safetensors", cfg.hf_hub_filename)))
    else:
        files = ("model.safetensors", "pytorch_model.bin")  # timm's names, safetensors first
    try:
        return hub_file(repo, files, name, revision=revision or None)
    except Any2PointError:
        raise  # a damaged or replaced cache file: the message says what to delete
    except Exception as exc:  # network, offline mode or missing cache
        raise unavailable(name, what=what, url=f"https://huggingface.co/{repo}", extra=extra, cause=exc) from exc


def build_timm_vit(name: str, timm_name: str, *, pretrained: bool, weights: str | None = None,
                   **timm_kwargs) -> TimmViTSource:
    """Create ``timm_name`` (random, from a local file, or from the hub) and wrap it. The weights
    are read here (safetensors, or ``torch.load(weights_only=True)``) and handed to timm as a
    state dict, so its own conversions for the model apply and it opens no file itself."""
    import timm  # imported here: timm pulls in torchvision, seconds that listing sources should not pay

    if not timm.is_model(timm_name.split(".", 1)[0]):
        import difflib

        close = difflib.get_close_matches(timm_name.split(".", 1)[0], timm.list_models(), n=3)
        raise UnknownSourceError(f"{name}: timm has no model {timm_name!r}"
                                 + (f"; close names: {', '.join(close)}" if close else "")
                                 + " (timm.list_models() lists them)")
    named = sorted(set(timm_kwargs) & set(_WEIGHTS_OPTIONS))
    if named:
        raise ConfigError(f"{name}: source.options.{named[0]} would let timm read weights from a place of its own "
                          f"choosing; give the weights file with source.weights=PATH instead")
    timm_kwargs.setdefault("drop_path_rate", 0.0)
    if not pretrained:
        source = TimmViTSource(name, timm.create_model(timm_name, pretrained=False, **timm_kwargs), "random")
        return source
    local = local_weights(weights, name)
    if local is not None:
        path, tag, digest = local, f"file:{local.name}", file_sha256(local, name)
    else:
        path, digest = _hub_weights(name, timm_name)
        tag = timm_name.split(".", 1)[1] if "." in timm_name else "timm"
    state = read_state_dict(path, name)
    vit = timm.create_model(timm_name, pretrained=True, pretrained_cfg_overlay={"state_dict": state}, **timm_kwargs)
    check_weights_values(vit.named_parameters(), path, name)  # NaN or infinity would make every prediction NaN
    source = TimmViTSource(name, vit, tag)
    source.weights_sha256 = digest
    return source


_DINOV2 = "vit_base_patch14_dinov2.lvd142m"
_DEIT = "deit_base_patch16_224.fb_in1k"


@register_family("timm", library="timm", syntax="timm:<model name>[.<weights tag>]",
                 accepts="ViT-style models with timm Blocks, a learned pos_embed with its cls row and a fixed "
                         "patch grid (no register tokens, no rotary positions)",
                 example="timm:vit_small_patch14_dinov2.lvd142m")
def timm_by_name(model: str, pretrained: bool = True, weights: str | None = None, **timm_kwargs) -> TimmViTSource:
    """Any fitting timm model; ``timm_kwargs`` go to ``timm.create_model`` (e.g. img_size, depth)."""
    return build_timm_vit(f"timm:{model}", model, pretrained=pretrained, weights=weights, **timm_kwargs)


@register_source("dinov2", family="timm", width=768, depth=12, heads=12,
                 position=PositionTable("2d", (37, 37), canvas=(518, 518), patch=(14, 14), cls=True),
                 origin=f"timm {_DINOV2} (HF hub)", licence="Apache-2.0",
                 weights_available=lambda: hf_hub_cached(f"timm/{_DINOV2}"))
def dinov2(pretrained: bool = True, weights: str | None = None, **kw) -> TimmViTSource:
    """DINOv2 ViT-B/14 (self-supervised vision, LVD-142M)."""
    return build_timm_vit("dinov2", _DINOV2, pretrained=pretrained, weights=weights, **kw)


@register_source("deit_base", family="timm", width=768, depth=12, heads=12,
                 position=PositionTable("2d", (14, 14), canvas=(224, 224), patch=(16, 16), cls=True),
                 origin=f"timm {_DEIT} (HF hub)", licence="Apache-2.0",
                 weights_available=lambda: hf_hub_cached(f"timm/{_DEIT}"))
def deit_base(pretrained: bool = True, weights: str | None = None, **kw) -> TimmViTSource:
    """DeiT-B/16 (supervised vision, ImageNet-1k)."""
    return build_timm_vit("deit_base", _DEIT, pretrained=pretrained, weights=weights, **kw)
