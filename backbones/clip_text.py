"""open_clip text towers as 1D sources: ``open_clip:<arch>:<tag>`` and the ``clip_text``
preset (the OpenAI CLIP ViT-L/14 text tower) built on it. The image tower
(``open_clip:<arch>:<tag>:visual``) is in ``clip_visual``; both share the loading here.

open_clip builds the text tower alone (``open_clip.model._build_text_tower`` on the arch's
config, QuickGELU where the weights need it). A tower fits when it is open_clip's own
``TextTransformer`` (not a Hugging Face text model, no CoCa cls embedding). We keep its residual
blocks (batch-first ``ResidualAttentionBlock``s), its 77-row ``positional_embedding`` and
``ln_final``; the 49,408-word token embedding and the text projection are dropped.

Choices:
- attention runs without CLIP's causal mask by default: point tokens have no order. With
  ``causal=True`` each block builds the mask for the length T it receives (not 77).
- the cls token is the embedding of ``<start_of_text>`` (id 49406, for towers with CLIP's
  own 49,408-word vocabulary) and its position is row 0: CLIP text always starts with that
  token at position 0, so it is the one token the tower has seen in front of every sequence.
"""
from __future__ import annotations

import os
import warnings
import zipfile
from pathlib import Path

import torch
from torch import nn

from any2point.errors import UnknownSourceError
from any2point.registry import register_source
from any2point.weights import hf_hub_cached, hub_offline, local_weights, unavailable

from .base import FrozenSource, PositionTable, SourceBlock, SourceMismatchError, linear_targets, with_ffn

__all__ = ["ClipTextBlock", "ClipTextSource", "build_clip_text", "causal_mask", "open_clip_config",
           "official_checkpoint", "read_tower_state"]

MODEL = "ViT-L-14"
TAG = "openai"
SOT_TOKEN = 49406  # "<start_of_text>" in CLIP's BPE vocabulary (open_clip SimpleTokenizer.sot_token_id)
CLIP_VOCAB = 49408
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
        return with_ffn(h, f, ffn_hook)


class ClipTextSource(FrozenSource):
    def __init__(self, name: str, text: nn.Module, weights_tag: str, causal: bool = False):
        for part in ("transformer", "positional_embedding", "token_embedding", "ln_final"):
            if getattr(text, part, None) is None:
                raise SourceMismatchError(f"{name}: the text tower ({type(text).__name__}) has no {part}; Any2Point "
                                          "needs open_clip's TextTransformer with a learned absolute position table")
        if getattr(text, "cls_emb", None) is not None:
            raise SourceMismatchError(f"{name}: the text tower appends a cls embedding (CoCa); not supported")
        width = text.transformer.width
        super().__init__(name, width, text.heads, PositionTable("1d", (text.positional_embedding.shape[0],)),
                         nn.ModuleList(ClipTextBlock(b, causal) for b in text.transformer.resblocks),
                         text.ln_final, weights_tag)
        self.lora_targets = linear_targets(text.transformer.resblocks[0], "attn")
        self.causal = causal
        self.positional_embedding = text.positional_embedding  # (77, D)
        self.cls_embedding = None
        if text.token_embedding.num_embeddings == CLIP_VOCAB:  # CLIP's own BPE vocabulary
            sot = text.token_embedding.weight[SOT_TOKEN].detach().clone()
            self.cls_embedding = nn.Parameter(sot, requires_grad=False)

    def position_table(self) -> torch.Tensor:
        return self.positional_embedding

    def cls_position(self) -> torch.Tensor:
        return self.positional_embedding[0]

    def cls_token(self) -> torch.Tensor | None:
        return self.cls_embedding


def open_clip_config(name: str, arch: str, tag: str) -> tuple[dict, bool]:
    """open_clip's model config of ``arch`` and whether its ``tag`` weights need QuickGELU."""
    import open_clip

    cfg = open_clip.get_model_config(arch)
    if cfg is None:
        import difflib

        close = difflib.get_close_matches(arch, open_clip.list_models(), n=3)
        raise UnknownSourceError(f"{name}: open_clip has no model config {arch!r}"
                                 + (f"; close names: {', '.join(close)}" if close else "")
                                 + " (open_clip.list_models() lists them; open_clip.add_model_config adds yours)")
    quick_gelu = bool(cfg.get("quick_gelu", False) or open_clip.get_pretrained_cfg(arch, tag).get("quick_gelu", False))
    return cfg, quick_gelu


def _text_tower(name: str = "clip_text", arch: str = MODEL, tag: str = TAG) -> nn.Module:
    """A randomly initialised text tower of ``arch``, built by open_clip from its own config."""
    from open_clip.model import _build_text_tower

    cfg, quick_gelu = open_clip_config(name, arch, tag)
    if "hf_model_name" in cfg["text_cfg"]:
        raise SourceMismatchError(f"{name}: the text tower of {arch} is the Hugging Face model "
                                  f"{cfg['text_cfg']['hf_model_name']!r}; use hf:<that model> instead")
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


def read_tower_state(path: Path, wanted: set[str], prefix_of) -> dict[str, torch.Tensor]:
    """The tensors of one tower of a CLIP checkpoint (open_clip or OpenAI layout), by key;
    ``prefix_of(keys)`` says under which prefix the tower's keys are stored."""
    if path.suffix == ".safetensors":  # read only this tower's tensors, not the other tower
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            keys = list(f.keys())
            prefix = prefix_of(keys)
            return {k[len(prefix):]: f.get_tensor(k) for k in keys
                    if k.startswith(prefix) and k[len(prefix):] in wanted}
    if _is_torchscript(path):  # OpenAI's own ViT-L-14.pt; torch.load(weights_only=True) refuses these
        with warnings.catch_warnings():  # torch marks jit.load deprecated; it is the only reader of this format
            warnings.simplefilter("ignore", FutureWarning)
            state = torch.jit.load(str(path), map_location="cpu").state_dict()
    else:
        from open_clip.factory import load_state_dict

        state = load_state_dict(str(path))  # handles {'state_dict': ...} and 'module.' prefixes
    prefix = prefix_of(state)
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix) and k[len(prefix):] in wanted}


def load_tower_weights(tower: nn.Module, path: Path, name: str, arch: str, prefix_of, skip: tuple[str, ...],
                       layout: str) -> None:
    """Load one tower from ``path``; missing or mis-shaped tensors are named in the error."""
    wanted = {k for k in tower.state_dict() if not k.startswith(skip)}
    state = read_tower_state(path, wanted, prefix_of)
    missing = sorted(wanted - set(state))
    if missing:
        shown = ", ".join(missing[:8]) + (f" (+{len(missing) - 8} more)" if len(missing) > 8 else "")
        raise ValueError(f"{name}: {path} is not a CLIP {arch} checkpoint: missing keys {shown}; "
                         f"expected open_clip / OpenAI CLIP key names ({layout})")
    own = tower.state_dict()
    bad = [f"{k} {tuple(v.shape)} (expected {tuple(own[k].shape)})"
           for k, v in state.items() if v.shape != own[k].shape]
    if bad:
        raise ValueError(f"{name}: {path} has tensors of the wrong shape: {', '.join(bad[:8])}")
    tower.load_state_dict({k: v.float() for k, v in state.items()}, strict=False)


def _load_text_weights(text: nn.Module, path: Path, name: str, arch: str = MODEL) -> None:
    load_tower_weights(text, path, name, arch, lambda keys: _text_prefix(keys, set(text.state_dict())),
                       skip=("text_projection",), layout="text tower: transformer.resblocks.N.*, "
                       "positional_embedding, token_embedding.weight, ln_final.*")


def official_checkpoint(name: str, arch: str = MODEL, tag: str = TAG) -> Path:
    """The ``tag`` checkpoint of ``arch`` through open_clip's own download and cache."""
    import open_clip

    cfg = open_clip.get_pretrained_cfg(arch, tag)
    if not cfg:
        raise UnknownSourceError(f"{name}: open_clip has no pretrained tag {tag!r} for {arch}; tags: "
                                 + ", ".join(open_clip.list_pretrained_tags_by_model(arch)))
    hub = (cfg.get("hf_hub") or "").strip("/")
    url_file = _URL_CACHE / os.path.basename(cfg["url"]) if cfg.get("url") else None
    where = " or ".join(w for w in (f"https://huggingface.co/{hub}" if hub else "", cfg.get("url") or "") if w)
    hub_cached = bool(hub) and hf_hub_cached(hub, _HUB_FILES)
    if not hub_cached and url_file is not None and url_file.is_file():  # an earlier download of the URL's file
        return url_file
    try:
        if hub_offline() and not hub_cached:
            raise ConnectionError("HF_HUB_OFFLINE is set and neither the hub cache nor ~/.cache/clip holds a copy")
        path = open_clip.download_pretrained(cfg)
        if not path:
            raise FileNotFoundError("open_clip returned no checkpoint path")
    except Exception as exc:
        what = f"the CLIP {arch} `{tag}` checkpoint (open_clip_model.safetensors or the release file)"
        layout = "a full CLIP or single-tower state dict in open_clip/OpenAI layout is expected"
        raise unavailable(name, what=what, url=where, extra=layout, cause=exc) from exc
    return Path(path)


def official_cached(arch: str = MODEL, tag: str = TAG) -> bool:
    """Whether the ``tag`` weights of ``arch`` are on this machine (no network)."""
    import open_clip

    cfg = open_clip.get_pretrained_cfg(arch, tag)
    hub = (cfg.get("hf_hub") or "").strip("/")
    return (bool(hub) and hf_hub_cached(hub, _HUB_FILES)) or bool(
        cfg.get("url") and (_URL_CACHE / os.path.basename(cfg["url"])).is_file())


def build_clip_text(name: str = "clip_text", *, arch: str = MODEL, tag: str = TAG, pretrained: bool = True,
                    weights: str | None = None, causal: bool = False) -> ClipTextSource:
    """Random, a local checkpoint (``source.weights``), or open_clip's ``tag`` download."""
    path, weights_tag = None, "random"
    if pretrained:  # find the weights before building, so a missing file fails fast
        local = local_weights(weights, name)
        path = local if local is not None else official_checkpoint(name, arch, tag)
        weights_tag = f"file:{local.name}" if local is not None else tag
    text = _text_tower(name, arch, tag)
    if path is not None:
        _load_text_weights(text, path, name, arch)
    text.eval()
    return ClipTextSource(name, text, weights_tag, causal=causal)


@register_source("clip_text", family="open_clip", position=PositionTable("1d", (77,)), width=768, depth=12,
                 heads=12, origin=f"open_clip {MODEL} `{TAG}` (HF hub timm/vit_large_patch14_clip_224.openai / "
                 "OpenAI URL)", licence="MIT", weights_available=lambda: official_cached(MODEL, TAG))
def clip_text(pretrained: bool = True, weights: str | None = None, causal: bool = False) -> ClipTextSource:
    """OpenAI CLIP ViT-L/14 text tower (language); attention is bidirectional unless causal=True."""
    return build_clip_text("clip_text", pretrained=pretrained, weights=weights, causal=causal)
