"""The ImageBind-Huge audio trunk as a 2D source (``imagebind_audio``).

Licence: ImageBind's code and weights are CC BY-NC-SA 4.0 (non-commercial, share-alike).

ImageBind ships no pip package, so the trunk is rebuilt here with torch modules: 12 pre-LN
blocks of width 768 with 12 heads, MLP ratio 4, LayerNorm eps 1e-6, no drop path, and
``nn.MultiheadAttention(add_bias_kv=True)``: every attention appends one learnable key and
one learnable value token (``bias_k`` / ``bias_v``), loaded from the checkpoint and used.
The audio stem (a 16x16 conv, stride 10, over 128 mel bins x 204 frames) gives a 12 (mel)
x 19 (time) patch grid; the position embedding stores a cls row and then that grid row by
row, so table[r, c] = pos_embed[1 + 19 r + c]. The grid is placed on a virtual 192 x 304 px
canvas of 16 px patches. The final norm is the head's LayerNorm (``modality_heads.audio.0``).

Weights come from the official ``imagebind_huge.pth`` (all modalities, ~4.5 GB), read by its
public key names with ``torch.load(weights_only=True)`` (TorchScript and pickled objects are
refused). The first load copies just the audio part into any2point's cache as safetensors, so
the big file is unpickled once; later loads read the cache.

The derived cache and its rule (a file there is used only when its digest is the expected one):

- ``imagebind_huge_audio-<S>.safetensors`` holds the audio part of the checkpoint whose SHA-256
  is ``S``; beside it ``imagebind_huge_audio-<S>.sha256`` holds the SHA-256 of the derived file
  itself, written after it (both atomically). The derived file is used only when its content
  hashes to that digest; otherwise it is ignored and derived again from the checkpoint.
- ``imagebind_huge_audio.official`` names the ``S`` of the official checkpoint last derived, so
  ``source=imagebind_audio`` without ``source.weights`` reads the verified derived file and
  never the 4.5 GB checkpoint again.
- the weights identity (``weights_sha256``) is ``S``, the digest of the checkpoint: the same for
  the official copy and a local copy of the same file. An audio-only ``.safetensors`` given as
  ``source.weights`` is read as it is; its identity is its own digest.

ImageBind publishes no digest of ``imagebind_huge.pth``, so the copy in torch's hub folder cannot
be checked against one: it is read as tensors only, and its digest is what checkpoints pin.
"""
from __future__ import annotations

import logging
import re
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Mapping

import torch
from torch import nn

from any2point.atomic import atomic_write, atomic_write_text
from any2point.errors import WeightsUnavailableError
from any2point.backbones.registry import register_source
from any2point.backbones.tensor_files import check_weights_values, refuse_torchscript, torch_load
from any2point.backbones.weights import cache_dir, file_sha256, hub_offline, local_weights, regular_file, unavailable

from .base import FrozenSource, PositionTable, SourceBlock, with_ffn

__all__ = ["ImageBindAudioBlock", "ImageBindAudioSource", "build_imagebind_audio", "official_layout",
           "extract_audio_state", "derived_path", "URL", "CHECKPOINT"]

log = logging.getLogger(__name__)

URL = "https://dl.fbaipublicfiles.com/imagebind/imagebind_huge.pth"
CHECKPOINT = "imagebind_huge.pth"
OFFICIAL_POINTER = "imagebind_huge_audio.official"  # names the digest of the official checkpoint derived
LICENCE = "CC BY-NC-SA 4.0"
WIDTH, DEPTH, HEADS, MLP_RATIO, EPS = 768, 12, 12, 4, 1e-6
GRID, CANVAS, PATCH = (12, 19), (192, 304), (16, 16)

PRE = "modality_preprocessors.audio."
TRUNK = "modality_trunks.audio."
HEAD = "modality_heads.audio.0."
# Tensors of the audio part that points never use (the spectrogram stem, the projection).
_UNUSED_PREFIXES = (PRE + "rgbt_stem.", "modality_heads.audio.2.")


class AudioMlp(nn.Module):
    """ImageBind's two-layer MLP (names ``fc1`` / ``fc2`` as in its checkpoint)."""

    def __init__(self, width: int, hidden: int):
        super().__init__()
        self.fc1, self.act, self.fc2 = nn.Linear(width, hidden), nn.GELU(), nn.Linear(hidden, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class ImageBindAudioBlock(SourceBlock):
    """ImageBind's ``BlockWithMasking`` (pre-LN, attention with bias tokens), batch-first.

    ``attn_drop`` / ``drop_path``: attention dropout and stochastic depth, active only when
    the block is in training mode (the paper experiments' regulariser; weights stay frozen)."""

    def __init__(self, width: int = WIDTH, heads: int = HEADS, mlp_ratio: int = MLP_RATIO,
                 attn_drop: float = 0.0, drop_path: float = 0.0):
        super().__init__()
        from timm.layers import DropPath

        self.norm_1 = nn.LayerNorm(width, eps=EPS)
        self.attn = nn.MultiheadAttention(width, heads, dropout=attn_drop, bias=True, add_bias_kv=True,
                                          batch_first=True)
        self.norm_2 = nn.LayerNorm(width, eps=EPS)
        self.mlp = AudioMlp(width, mlp_ratio * width)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor, ffn_hook=None) -> torch.Tensor:
        y = self.norm_1(x)
        h = x + self.drop_path(self.attn(y, y, y, need_weights=False)[0])
        f = self.drop_path(self.mlp(self.norm_2(h)))
        return with_ffn(h, f, ffn_hook)


def _official_name(own: str) -> str:
    """Checkpoint key of one of our parameters."""
    if own == "pos_embed":
        return PRE + "pos_embedding_helper.pos_embed"
    if own == "cls":
        return PRE + "cls_token"
    if own.startswith("blocks."):
        return TRUNK + own
    if own.startswith("final_norm."):
        return HEAD + own[len("final_norm."):]
    raise KeyError(f"imagebind_audio: no checkpoint name for parameter {own!r}")


class ImageBindAudioSource(FrozenSource):
    def __init__(self, name: str = "imagebind_audio", depth: int = DEPTH, weights_tag: str = "random",
                 attn_drop_rate: float = 0.0, drop_path_rate: float = 0.0):
        if not 1 <= depth <= DEPTH:
            raise ValueError(f"{name}: depth must be in [1, {DEPTH}], got {depth}")
        position = PositionTable("2d", GRID, canvas=CANVAS, patch=PATCH, cls=True)
        # drop-path rising linearly from 0 at the first block to drop_path_rate at the last (as timm)
        rates = [drop_path_rate * i / max(depth - 1, 1) for i in range(depth)]
        blocks = nn.ModuleList(ImageBindAudioBlock(attn_drop=attn_drop_rate, drop_path=r) for r in rates)
        super().__init__(name, WIDTH, HEADS, position, blocks, nn.LayerNorm(WIDTH, eps=EPS), weights_tag)
        rows, cols = GRID
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + rows * cols, WIDTH))
        self.cls = nn.Parameter(torch.zeros(1, 1, WIDTH))
        self._init_random()

    @torch.no_grad()
    def _init_random(self) -> None:
        """ImageBind's own initialisation (open_clip-style embeddings, jax-style linears)."""
        for p in (self.pos_embed, self.cls):
            nn.init.normal_(p).mul_(WIDTH ** -0.5)
        for m in self.blocks.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)

    def position_table(self) -> torch.Tensor:
        rows, cols = GRID
        return self.pos_embed[0, 1:].reshape(rows, cols, WIDTH)

    def cls_position(self) -> torch.Tensor:
        return self.pos_embed[0, 0]

    def cls_token(self) -> torch.Tensor:
        return self.cls[0, 0]

    def official_shapes(self) -> dict[str, tuple[int, ...]]:
        """Checkpoint key -> shape of every tensor this source reads."""
        return {_official_name(k): tuple(v.shape) for k, v in self.state_dict().items()}

    def load_official(self, state: Mapping[str, torch.Tensor], origin: str) -> None:
        """Load tensors named as in ImageBind's checkpoint; every mismatch is reported by name."""
        own = {_official_name(k): k for k in self.state_dict()}
        check_audio_keys(set(state), set(own), origin)
        state = {k: state[k] for k in own}  # tensors outside the audio namespace are not ours
        shapes = self.official_shapes()
        bad = [f"{k}: {tuple(v.shape)} (expected {shapes[k]})" for k, v in state.items() if tuple(v.shape) != shapes[k]]
        if bad:
            raise ValueError(f"imagebind_audio: {origin} has tensors of the wrong shape: {_shorten(bad, sep='; ')}")
        check_weights_values(sorted(state.items()), origin, self.name)
        self.load_state_dict({own[k]: v.float() for k, v in state.items()}, strict=True)


def official_layout(depth: int = DEPTH) -> dict[str, tuple[int, ...]]:
    """Key -> shape of the audio tensors in ``imagebind_huge.pth`` that this source reads."""
    with torch.device("meta"):
        return ImageBindAudioSource(depth=depth).official_shapes()


def _in_audio_namespace(key: str) -> bool:
    """Keys the source is responsible for: the trunk, position/cls embeddings, the final norm."""
    return key.startswith((TRUNK, HEAD, PRE + "pos_embedding_helper.")) or key == PRE + "cls_token"


def _shorten(keys: list[str], limit: int = 12, sep: str = ", ") -> str:
    return sep.join(keys[:limit]) + (f" (+{len(keys) - limit} more)" if len(keys) > limit else "")


def check_audio_keys(found: set[str], expected: set[str], origin: str) -> None:
    """Raise naming the missing keys and the unexpected keys of the audio namespace."""
    missing = sorted(expected - found)
    unexpected = sorted(k for k in found - expected if _in_audio_namespace(k))
    if missing or unexpected:
        parts = [f"{what} keys: {_shorten(keys)}" for what, keys in (("missing", missing), ("unexpected", unexpected))
                 if keys]
        raise ValueError(f"imagebind_audio: {origin} does not match the ImageBind-Huge audio layout "
                         f"({len(expected)} tensors, e.g. {TRUNK}blocks.N.attn.bias_k); " + "; ".join(parts))


@contextmanager
def _open_checkpoint(path: Path, name: str = "imagebind_audio") -> Iterator[Mapping[str, torch.Tensor]]:
    """Lazy access to a checkpoint's tensors: safetensors, or a memory-mapped ``torch.save`` file
    read with ``weights_only=True``. TorchScript is refused whatever the file's name says."""
    refuse_torchscript(path, name)
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError, safe_open

        try:
            handle = safe_open(str(path), framework="pt")
        except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
            raise WeightsUnavailableError(f"{name}: {path} is not a readable safetensors file ({exc})") from None
        with handle as f:
            yield _SafeMapping(f, path)
        return
    state = torch_load(path, name)
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ValueError(f"imagebind_audio: {path} does not hold a state dict (found {type(state).__name__})")
    yield state


class _SafeMapping(Mapping):
    """A safetensors file's tensors, read on access; a tensor of the audio layout whose header
    gives another shape is refused before it is read into memory."""

    def __init__(self, handle, path: Path):
        self._h, self._keys, self._path = handle, dict.fromkeys(handle.keys()), path
        self._layout = official_layout()

    def __getitem__(self, key: str) -> torch.Tensor:
        if key not in self._keys:
            raise KeyError(key)
        found = tuple(self._h.get_slice(key).get_shape())
        if key in self._layout and found != self._layout[key]:
            raise ValueError(f"imagebind_audio: {self._path} has tensors of the wrong shape: {key}: {found} "
                             f"(expected {self._layout[key]})")
        return self._h.get_tensor(key)

    def __iter__(self):
        return iter(self._keys)

    def __len__(self) -> int:
        return len(self._keys)


def extract_audio_state(path: Path, depth: int = DEPTH, name: str = "imagebind_audio") -> dict[str, torch.Tensor]:
    """The audio tensors of a checkpoint, checked against the layout (no other tensor is read)."""
    expected = official_layout(depth)
    with _open_checkpoint(path, name) as state:
        check_audio_keys(set(state), set(expected), str(path))
        return {k: state[k].detach().to(torch.float32).contiguous().clone() for k in expected}


_DIGEST = re.compile(r"[0-9a-f]{64}")


def derived_path(checkpoint_sha256: str) -> Path:
    """The cache file of the audio part of the checkpoint whose SHA-256 is ``checkpoint_sha256``."""
    return cache_dir() / f"imagebind_huge_audio-{checkpoint_sha256}.safetensors"


def _read_digest(path: Path) -> str | None:
    """The hex digest a small text file holds, or None (absent, not a regular file, not a digest)."""
    try:
        regular_file(path, "imagebind_audio", "digest file")
        if path.stat().st_size > 256:
            return None
        text = path.read_text(encoding="ascii").strip()
    except (WeightsUnavailableError, OSError, UnicodeDecodeError):
        return None
    return text if _DIGEST.fullmatch(text) else None


def _verified(derived: Path, name: str) -> bool:
    """Whether ``derived`` is a regular file whose content hashes to the digest beside it."""
    expected = _read_digest(derived.with_suffix(".sha256"))
    if expected is None or not derived.exists():
        return False
    try:
        actual = file_sha256(derived, name)
    except WeightsUnavailableError as exc:
        log.warning("ignoring the cache file %s: %s", derived, exc)
        return False
    if actual != expected:
        log.warning("ignoring the cache file %s: it hashes to %s, not the %s recorded beside it", derived, actual,
                    expected)
        return False
    return True


def _cached_audio(checkpoint: Path, checkpoint_sha256: str, depth: int, name: str) -> Path:
    """The verified audio cache of ``checkpoint``, extracted when it is absent or does not verify."""
    derived = derived_path(checkpoint_sha256)
    for path in (derived, derived.with_suffix(".sha256")):
        if path.is_dir() and not path.is_symlink():
            raise WeightsUnavailableError(f"{name}: {path} is a directory where the cache file {path.name} is "
                                          f"expected; remove it (any2point derives the file again)")
    if not _verified(derived, name):
        from safetensors.torch import save_file

        tensors = extract_audio_state(checkpoint, depth, name)
        meta = {"checkpoint_sha256": checkpoint_sha256, "licence": LICENCE}
        atomic_write(derived, lambda tmp: save_file(tensors, tmp, metadata=meta))
        atomic_write_text(derived.with_suffix(".sha256"), file_sha256(derived, name) + "\n")
    return derived


def _hub_checkpoint() -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints" / CHECKPOINT


def _official_derived(name: str) -> tuple[Path, str] | None:
    """(verified derived file, checkpoint digest) named by the official pointer, if any."""
    digest = _read_digest(cache_dir() / OFFICIAL_POINTER)
    if digest is None:
        return None
    derived = derived_path(digest)
    return (derived, digest) if _verified(derived, name) else None


def _weights_on_disk() -> bool:
    return (cache_dir() / OFFICIAL_POINTER).exists() or _hub_checkpoint().exists()


def _official_audio(name: str, depth: int) -> tuple[Path, str]:
    """(audio cache, checkpoint digest) of the official checkpoint, downloading it if needed."""
    found = _official_derived(name)
    if found is not None:
        return found
    ckpt = _hub_checkpoint()
    if not ckpt.exists():
        try:
            if hub_offline():
                raise ConnectionError("offline mode is set (HF_HUB_OFFLINE / ANY2POINT_OFFLINE)")
            ckpt.parent.mkdir(parents=True, exist_ok=True)
            torch.hub.download_url_to_file(URL, str(ckpt), progress=True)
        except Exception as exc:
            raise unavailable(name, what=f"{CHECKPOINT} (~4.5 GB, {LICENCE})", url=URL,
                              extra=f"or place it at {ckpt}; the first load keeps only its audio part in {cache_dir()}",
                              cause=exc) from exc
    regular_file(ckpt, name, "official checkpoint")
    digest = file_sha256(ckpt, name)
    derived = _cached_audio(ckpt, digest, depth, name)
    atomic_write_text(cache_dir() / OFFICIAL_POINTER, digest + "\n")
    return derived, digest


def build_imagebind_audio(name: str = "imagebind_audio", *, pretrained: bool = True, weights: str | None = None,
                          depth: int = DEPTH, attn_drop_rate: float = 0.0,
                          drop_path_rate: float = 0.0) -> ImageBindAudioSource:
    """Random, a local checkpoint (``source.weights``: full .pth or audio .safetensors), or the official one."""
    regularise = dict(attn_drop_rate=attn_drop_rate, drop_path_rate=drop_path_rate)
    if not pretrained:
        return ImageBindAudioSource(name, depth, **regularise)
    local = local_weights(weights, name)
    if local is None:
        (path, digest), tag = _official_audio(name, depth), "imagebind_huge"
    else:
        digest, tag = file_sha256(local, name), f"file:{local.name}"
        path = local if local.suffix == ".safetensors" else _cached_audio(local, digest, depth, name)
    source = ImageBindAudioSource(name, depth, weights_tag=tag, **regularise)
    with _open_checkpoint(path, name) as state:
        source.load_official(state, str(path))
    source.weights_sha256 = digest
    return source


@register_source("imagebind_audio", family="imagebind", width=WIDTH, depth=DEPTH, heads=HEADS,
                 position=PositionTable("2d", GRID, canvas=CANVAS, patch=PATCH, cls=True), origin=f"official {CHECKPOINT} ({URL})", licence=LICENCE,
                 weights_available=_weights_on_disk)
def imagebind_audio(pretrained: bool = True, weights: str | None = None, depth: int = DEPTH,
                    attn_drop_rate: float = 0.0, drop_path_rate: float = 0.0) -> ImageBindAudioSource:
    """ImageBind-Huge audio trunk (audio spectrograms; key/value bias tokens kept)."""
    return build_imagebind_audio("imagebind_audio", pretrained=pretrained, weights=weights, depth=depth,
                                 attn_drop_rate=attn_drop_rate, drop_path_rate=drop_path_rate)
