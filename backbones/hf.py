"""The ``hf:`` family: any fitting transformers model by hub id or local folder.

The model's config decides the kind: ViT-style image encoders (a config with ``image_size``
and ``patch_size``) become 2D sources (``hf_vit``), BERT-family text encoders 1D sources
(``bert``); both refuse a model that does not fit, with the reason.
"""
from __future__ import annotations

import os
from pathlib import Path

from any2point.registry import register_family
from any2point.weights import local_weights, unavailable

from .bert import BertSource
from .hf_load import build_hf
from .hf_vit import HfViTSource

__all__ = ["hf_by_name"]


def _folder(model: str) -> Path | None:
    path = Path(os.path.expanduser(model))
    if path.is_dir():
        return path
    if model.startswith(("/", "./", "../", "~")):
        raise FileNotFoundError(f"hf:{model}: no such folder (expected a transformers folder with config.json)")
    return None


def _config(name: str, model: str, overrides: dict):
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(model)
    except Exception as exc:  # offline without a cached copy, or no such model id
        raise unavailable(name, what=f"the transformers folder of {model} (config.json and weights)",
                          url=f"https://huggingface.co/{model}", extra="or name the folder: hf:/path/to/folder",
                          cause=exc) from exc
    for key, value in overrides.items():
        if not hasattr(config, key):
            raise TypeError(f"{name}: {type(config).__name__} has no setting {key!r} (from source.options)")
        setattr(config, key, value)
    return config


@register_family("hf", library="transformers", syntax="hf:<model id or local folder>",
                 accepts="BERT-family encoders with absolute positions (BERT, RoBERTa, XLM-R, MiniLM) and "
                         "ViT-style image encoders (ViTModel)",
                 example="hf:bert-base-uncased")
def hf_by_name(model: str, pretrained: bool = True, weights: str | None = None, **config_overrides):
    """A transformers model; ``config_overrides`` set fields of its config (e.g. num_hidden_layers)."""
    name = f"hf:{model}"
    folder = _folder(model)
    local = local_weights(weights, name) if pretrained else None
    where = folder or local
    config = _config(name, str(where) if where is not None else model, config_overrides)
    image = hasattr(config, "image_size") and hasattr(config, "patch_size")
    if weights is None and folder is not None:
        weights = str(folder)  # a local copy: tagged by its folder name, never looked up on the hub
    return build_hf(name, HfViTSource if image else BertSource, pretrained=pretrained, random_config=lambda: config,
                    hub_id=model, weights=weights, config=config if config_overrides else None)
