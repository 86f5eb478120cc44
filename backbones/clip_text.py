"""The OpenAI CLIP ViT-L/14 text tower from open_clip as a 1D source (``clip_text``).

open_clip builds the text tower alone (``open_clip.model._build_text_tower`` on the
``ViT-L-14`` config, QuickGELU as the ``openai`` weights need). We keep its residual
blocks (batch-first ``ResidualAttentionBlock``s), its 77-row ``positional_embedding`` and
``ln_final``; the 49,408-word token embedding and the text projection are dropped.

Choices:
- attention runs without CLIP's causal mask by default: point tokens have no order. With
  ``causal=True`` each block builds the mask for the length T it receives (not 77).
- the cls token is the embedding of ``<start_of_text>`` (id 49406) and its position is
  row 0: CLIP text always starts with that token at position 0, so it is the one token
  the tower has seen in front of every sequence.
"""
from __future__ import annotations

import os
import warnings
import zipfile
from pathlib import Path

import torch
from torch import nn

from any2point.registry import register_source
from any2point.weights import hf_hub_cached, hub_offline, local_weights, unavailable

from .base import FrozenSource, PositionTable, SourceBlock

__all__ = ["ClipTextBlock", "ClipTextSource", "build_clip_text", "causal_mask"]

MODEL = "ViT-L-14"
TAG = "openai"
SOT_TOKEN = 49406  # "<start_of_text>" in CLIP's BPE vocabulary (open_clip SimpleTokenizer.sot_token_id)
_HUB = "timm/vit_large_patch14_clip_224.openai"  # where open_clip fetches the `openai` tag from
_HUB_FILES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")
_URL_CACHE = Path(os.path.expanduser("~/.cache/clip"))  # open_clip's cache for direct URL downloads


def causal_mask(T: int, device: torch.device | None = None, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Additive (T, T) mask: token i attends to tokens 0..i (CLIP's text masking)."""
    return torch.full((T, T), float("-inf"), device=device, dtype=dtype).triu_(1)


class ClipTextBlock(SourceBlock):
    """open_clip's ``ResidualAttentionBlock`` (batch-first, LayerScale kept) with an FFN hook."""

    def __init__(self, block: nn.Module, causal: bool = False):
        super().__init__()
        if not getattr(block.attn, "batch_first", False):
            raise ValueError("clip_text needs open_clip blocks built with batch_first=True (open_clip >= 2.24)")
        self.block, self.causal = block, causal

    def forward(self, x: torch.Tensor, ffn_hook=None) -> torch.Tensor:
        b = self.block
        mask = causal_mask(x.shape[1], x.device, x.dtype) if self.causal else None
        h = x + b.ls_1(b.attention(q_x=b.ln_1(x), attn_mask=mask))
        f = b.ls_2(b.mlp(b.ln_2(h)))
        return h + f if ffn_hook is None else h + f + ffn_hook(f)


class ClipTextSource(FrozenSource):
    def __init__(self, name: str, text: nn.Module, weights_tag: str, causal: bool = False):
        width = text.transformer.width
        super().__init__(name, width, text.heads, PositionTable("1d", (text.positional_embedding.shape[0],)),
                         nn.ModuleList(ClipTextBlock(b, causal) for b in text.transformer.resblocks),
                         text.ln_final, weights_tag)
        self.causal = causal
        self.positional_embedding = text.positional_embedding  # (77, D)
        sot = text.token_embedding.weight[SOT_TOKEN].detach().clone()
        self.cls_embedding = nn.Parameter(sot, requires_grad=False)

    def position_table(self) -> torch.Tensor:
        return self.positional_embedding

    def cls_position(self) -> torch.Tensor:
        return self.positional_embedding[0]

    def cls_token(self) -> torch.Tensor:
        return self.cls_embedding


def _text_tower() -> nn.Module:
    """A randomly initialised ViT-L/14 text tower, built by open_clip from its own config."""
    import open_clip
    from open_clip.model import _build_text_tower

    cfg = open_clip.get_model_config(MODEL)
    if cfg is None:
        raise RuntimeError(f"open_clip has no model config named {MODEL!r}")
    quick_gelu = bool(open_clip.get_pretrained_cfg(MODEL, TAG).get("quick_gelu", False))
    return _build_text_tower(cfg["embed_dim"], cfg["text_cfg"], quick_gelu=quick_gelu)


def _text_prefix(keys, wanted: set[str]) -> str:
    """'' for CLIP / OpenAI layouts, 'text.' for open_clip's CustomTextCLIP layout."""
    keys = set(keys)
    return "text." if not wanted & keys and any(k.startswith("text.") for k in keys) else ""


def _is_torchscript(path: Path) -> bool:
    """TorchScript archives are zips holding ``constants.pkl`` (plain torch.save zips do not)."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as z:
        return any(n.endswith("/constants.pkl") for n in z.namelist())


def _read_text_state(path: Path, wanted: set[str]) -> dict[str, torch.Tensor]:
    """The text-tower tensors of a CLIP checkpoint (open_clip or OpenAI layout), by key."""
    if path.suffix == ".safetensors":  # read only the text tensors, not the vision tower
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            keys = list(f.keys())
            prefix = _text_prefix(keys, wanted)
            return {k[len(prefix):]: f.get_tensor(k) for k in keys
                    if k.startswith(prefix) and k[len(prefix):] in wanted}
    if _is_torchscript(path):  # OpenAI's own ViT-L-14.pt; torch.load(weights_only=True) refuses these
        with warnings.catch_warnings():  # torch marks jit.load deprecated; it is the only reader of this format
            warnings.simplefilter("ignore", FutureWarning)
            state = torch.jit.load(str(path), map_location="cpu").state_dict()
    else:
        from open_clip.factory import load_state_dict

        state = load_state_dict(str(path))  # handles {'state_dict': ...} and 'module.' prefixes
    prefix = _text_prefix(state, wanted)
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix) and k[len(prefix):] in wanted}


def _load_text_weights(text: nn.Module, path: Path, name: str) -> None:
    wanted = {k for k in text.state_dict() if not k.startswith("text_projection")}
    state = _read_text_state(path, wanted)
    missing = sorted(wanted - set(state))
    if missing:
        shown = ", ".join(missing[:8]) + (f" (+{len(missing) - 8} more)" if len(missing) > 8 else "")
        raise ValueError(f"{name}: {path} is not a CLIP {MODEL} checkpoint: missing text-tower keys {shown}; "
                         "expected open_clip / OpenAI CLIP key names (transformer.resblocks.N.*, "
                         "positional_embedding, token_embedding.weight, ln_final.*)")
    own = text.state_dict()
    bad = [f"{k} {tuple(v.shape)} (expected {tuple(own[k].shape)})"
           for k, v in state.items() if v.shape != own[k].shape]
    if bad:
        raise ValueError(f"{name}: {path} has text-tower tensors of the wrong shape: {', '.join(bad[:8])}")
    text.load_state_dict({k: v.float() for k, v in state.items()}, strict=False)


def _official_checkpoint(name: str) -> Path:
    """The ``openai`` checkpoint through open_clip's own download and cache."""
    import open_clip

    cfg = open_clip.get_pretrained_cfg(MODEL, TAG)
    url = f"https://huggingface.co/{_HUB} (or {cfg.get('url')})"
    hub_cached, url_file = hf_hub_cached(_HUB, _HUB_FILES), _URL_CACHE / "ViT-L-14.pt"
    if not hub_cached and url_file.is_file():  # an earlier download of OpenAI's own file
        return url_file
    try:
        if hub_offline() and not hub_cached:
            raise ConnectionError("HF_HUB_OFFLINE is set and neither the hub cache nor ~/.cache/clip holds a copy")
        path = open_clip.download_pretrained(cfg)
        if not path:
            raise FileNotFoundError("open_clip returned no checkpoint path")
    except Exception as exc:
        what = f"the CLIP {MODEL} `{TAG}` checkpoint (open_clip_model.safetensors or ViT-L-14.pt)"
        layout = "a full CLIP or text-tower-only state dict in open_clip/OpenAI layout is expected"
        raise unavailable(name, what=what, url=url, extra=layout, cause=exc) from exc
    return Path(path)


def _cached() -> bool:
    return hf_hub_cached(_HUB, _HUB_FILES) or (_URL_CACHE / "ViT-L-14.pt").is_file()


def build_clip_text(name: str = "clip_text", *, pretrained: bool = True, weights: str | None = None,
                    causal: bool = False) -> ClipTextSource:
    """Random, a local checkpoint (``source.weights``), or open_clip's ``openai`` download."""
    path, tag = None, "random"
    if pretrained:  # find the weights before building, so a missing file fails fast
        local = local_weights(weights, name)
        path = local if local is not None else _official_checkpoint(name)
        tag = f"file:{local.name}" if local is not None else TAG
    text = _text_tower()
    if path is not None:
        _load_text_weights(text, path, name)
    text.eval()
    return ClipTextSource(name, text, tag, causal=causal)


@register_source("clip_text", family="clip", position="1d", width=768, depth=12, heads=12, table="77 rows",
                 origin=f"open_clip {MODEL} `{TAG}` (HF hub {_HUB} / OpenAI URL)", licence="MIT",
                 weights_available=_cached)
def clip_text(pretrained: bool = True, weights: str | None = None, causal: bool = False) -> ClipTextSource:
    """OpenAI CLIP ViT-L/14 text tower (language); attention is bidirectional unless causal=True."""
    return build_clip_text("clip_text", pretrained=pretrained, weights=weights, causal=causal)
