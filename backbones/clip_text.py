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

import posixpath
from pathlib import Path

import torch
from torch import nn

from any2point.alloc_budget import unbudgeted
from any2point.errors import Any2PointError, UnknownSourceError, WeightsUnavailableError
from any2point.backbones.registry import register_source
from any2point.backbones.tensor_files import check_weights_values, first_line, read_state_dict, refuse_torchscript
from any2point.backbones.weights import file_sha256, hf_hub_cached, hub_file, local_weights, unavailable

from .base import FrozenSource, PositionTable, SourceBlock, SourceMismatchError, linear_targets, with_ffn

__all__ = ["ClipTextBlock", "ClipTextSource", "build_clip_text", "causal_mask", "open_clip_config",
           "official_checkpoint", "read_tower_state"]

MODEL = "ViT-L-14"
TAG = "openai"
SOT_TOKEN = 49406  # "<start_of_text>" in CLIP's BPE vocabulary (open_clip SimpleTokenizer.sot_token_id)
CLIP_VOCAB = 49408
_HUB_FILES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")  # open_clip's names, safetensors first


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
    with unbudgeted():  # sized by open_clip's config of the arch, not by a checkpoint's description
        return _build_text_tower(cfg["embed_dim"], cfg["text_cfg"], quick_gelu=quick_gelu)


def _text_prefix(keys, wanted: set[str]) -> str:
    """'' for CLIP / OpenAI layouts, 'text.' for open_clip's CustomTextCLIP layout."""
    keys = set(keys)
    return "text." if not wanted & keys and any(k.startswith("text.") for k in keys) else ""


def read_tower_state(path: Path, wanted, prefix_of, name: str) -> dict[str, torch.Tensor]:
    """The tensors of one tower of a CLIP checkpoint (open_clip or OpenAI key layout), by key;
    ``prefix_of(keys)`` says under which prefix the tower's keys are stored. safetensors, or a
    ``torch.save`` state dict read with ``weights_only=True``; TorchScript archives (OpenAI's own
    ``.pt`` release files) are refused: loading one runs the code it carries. ``wanted``: the
    keys, or key -> shape, in which case a safetensors tensor of another shape is refused from
    the file's header, before it is read into memory."""
    refuse_torchscript(path, name)  # whatever its name says
    if path.suffix == ".safetensors":  # read only this tower's tensors, not the other tower
        from safetensors import SafetensorError, safe_open

        shapes = wanted if isinstance(wanted, dict) else {}
        bad: list[str] = []
        try:
            with safe_open(str(path), framework="pt") as f:
                keys = list(f.keys())
                prefix = prefix_of(keys)
                picked = {k[len(prefix):]: k for k in keys if k.startswith(prefix) and k[len(prefix):] in wanted}
                for own, k in picked.items():
                    found = tuple(f.get_slice(k).get_shape())
                    if own in shapes and found != shapes[own]:
                        bad.append(f"{own} {found} (expected {shapes[own]})")
                if not bad:
                    return {own: f.get_tensor(k) for own, k in picked.items()}
        except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
            raise WeightsUnavailableError(f"{name}: {path} is not a readable safetensors file "
                                          f"({first_line(exc)})") from None
        raise ValueError(f"{name}: {path} has tensors of the wrong shape: {', '.join(bad[:8])}")
    state = read_state_dict(path, name)  # unwraps {'state_dict': ...} and 'module.' prefixes
    prefix = prefix_of(state)
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix) and k[len(prefix):] in wanted}


def load_tower_weights(tower: nn.Module, path: Path, name: str, arch: str, prefix_of, skip: tuple[str, ...],
                       layout: str) -> None:
    """Load one tower from ``path``; missing or mis-shaped tensors are named in the error."""
    wanted = {k: tuple(v.shape) for k, v in tower.state_dict().items() if not k.startswith(skip)}
    state = read_tower_state(path, wanted, prefix_of, name)
    missing = sorted(set(wanted) - set(state))
    if missing:
        shown = ", ".join(missing[:8]) + (f" (+{len(missing) - 8} more)" if len(missing) > 8 else "")
        raise ValueError(f"{name}: {path} is not a CLIP {arch} checkpoint: missing keys {shown}; "
                         f"expected open_clip / OpenAI CLIP key names ({layout})")
    own = tower.state_dict()
    bad = [f"{k} {tuple(v.shape)} (expected {tuple(own[k].shape)})"
           for k, v in state.items() if v.shape != own[k].shape]
    if bad:
        raise ValueError(f"{name}: {path} has tensors of the wrong shape: {', '.join(bad[:8])}")
    check_weights_values(sorted(state.items()), path, name)
    with unbudgeted():  # the file's tensors, already read and checked
        tower.load_state_dict({k: v.float() for k, v in state.items()}, strict=False)


def _load_text_weights(text: nn.Module, path: Path, name: str, arch: str = MODEL) -> None:
    load_tower_weights(text, path, name, arch, lambda keys: _text_prefix(keys, set(text.state_dict())),
                       skip=("text_projection",), layout="text tower: transformer.resblocks.N.*, "
                       "positional_embedding, token_embedding.weight, ln_final.*")


def _hub_location(arch: str, tag: str) -> tuple[str, tuple[str, ...]]:
    """(hub repository, file names to try) of open_clip's ``tag`` weights of ``arch``; open_clip
    writes ``org/model/`` (its default file names) or ``org/model/<file>``."""
    import open_clip

    hub = open_clip.get_pretrained_cfg(arch, tag).get("hf_hub") or ""
    repo, filename = (hub.strip("/"), "") if hub.endswith("/") else posixpath.split(hub)
    if not filename:
        return repo, _HUB_FILES
    stem = filename.rsplit(".", 1)[0]
    safe = "open_clip_model.safetensors" if filename == "open_clip_pytorch_model.bin" else stem + ".safetensors"
    return repo, (safe, filename) if safe != filename else (filename,)


def official_checkpoint(name: str, arch: str = MODEL, tag: str = TAG) -> tuple[Path, str]:
    """(path, SHA-256) of open_clip's ``tag`` weights of ``arch`` from the Hugging Face hub (its
    cache, or a download when online), verified against the cache's blob name. OpenAI's own
    release URLs are never used: those files are TorchScript archives."""
    import open_clip

    cfg = open_clip.get_pretrained_cfg(arch, tag)
    if not cfg:
        raise UnknownSourceError(f"{name}: open_clip has no pretrained tag {tag!r} for {arch}; tags: "
                                 + ", ".join(open_clip.list_pretrained_tags_by_model(arch)))
    repo, files = _hub_location(arch, tag)
    what = f"the CLIP {arch} `{tag}` checkpoint ({files[0]})"
    url = f"https://huggingface.co/{repo}" if repo else "the Hugging Face hub"
    extra = "a full CLIP or single-tower state dict in open_clip/OpenAI layout is expected (safetensors, or plain " \
            "tensors saved with torch.save)"
    if cfg.get("url"):
        extra += f"; the release file {cfg['url']} is a TorchScript archive and is never read"
    if not repo:
        raise unavailable(name, what=what, url=url, extra=extra)
    try:
        return hub_file(repo, files, name)
    except Any2PointError:
        raise  # a damaged or replaced cache file: the message says what to delete
    except Exception as exc:
        raise unavailable(name, what=what, url=url, extra=extra, cause=exc) from exc


def official_cached(arch: str = MODEL, tag: str = TAG) -> bool:
    """Whether the ``tag`` weights of ``arch`` are in the hub cache (no network; verified on use)."""
    repo, files = _hub_location(arch, tag)
    return bool(repo) and hf_hub_cached(repo, files)


def build_clip_text(name: str = "clip_text", *, arch: str = MODEL, tag: str = TAG, pretrained: bool = True,
                    weights: str | None = None, causal: bool = False) -> ClipTextSource:
    """Random, a local checkpoint (``source.weights``), or open_clip's ``tag`` weights from the hub."""
    path, weights_tag, digest = pretrained_location(name, arch, tag, pretrained, weights)
    text = _text_tower(name, arch, tag)
    if path is not None:
        _load_text_weights(text, path, name, arch)
    text.eval()
    source = ClipTextSource(name, text, weights_tag, causal=causal)
    source.weights_sha256 = digest
    return source


def pretrained_location(name: str, arch: str, tag: str, pretrained: bool,
                        weights: str | None) -> tuple[Path | None, str, str | None]:
    """(path, weights tag, SHA-256) of the weights to load: none (random), the checked local
    file of ``source.weights``, or the verified hub copy. Found before building, so a missing or
    refused file fails fast."""
    if not pretrained:
        return None, "random", None
    local = local_weights(weights, name)
    if local is not None:
        return local, f"file:{local.name}", file_sha256(local, name)
    path, digest = official_checkpoint(name, arch, tag)
    return path, tag, digest


@register_source("clip_text", family="open_clip", position=PositionTable("1d", (77,)), width=768, depth=12,
                 heads=12, origin=f"open_clip {MODEL} `{TAG}` (HF hub timm/vit_large_patch14_clip_224.openai)",
                 licence="MIT", weights_available=lambda: official_cached(MODEL, TAG))
def clip_text(pretrained: bool = True, weights: str | None = None, causal: bool = False) -> ClipTextSource:
    """OpenAI CLIP ViT-L/14 text tower (language); attention is bidirectional unless causal=True."""
    return build_clip_text("clip_text", pretrained=pretrained, weights=weights, causal=causal)
