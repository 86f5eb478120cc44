"""The ``hf:`` family: any fitting transformers model by hub id or local folder.

The model's config decides the kind: ViT-style image encoders (a config with ``image_size``
and ``patch_size``) become 2D sources (``hf_vit``), BERT-family text encoders 1D sources
(``bert``); both refuse a model that does not fit, with the reason.
"""
from __future__ import annotations

import os
from pathlib import Path

from any2point.errors import WeightsUnavailableError
from any2point.backbones.registry import register_family
from any2point.backbones.tensor_files import first_line
from any2point.backbones.weights import local_weights

from .bert import BertSource
from .hf_load import build_hf, check_config_sizes, checked_config, hub_config_folder
from .hf_vit import HfViTSource

__all__ = ["hf_by_name", "names_folder"]


def names_folder(model: str) -> bool:
    """Whether ``hf:<model>`` names a local folder rather than a hub id (a path form)."""
    return model.startswith(("/", "./", "../", "~")) or Path(os.path.expanduser(model)).is_dir()


def _folder(model: str) -> Path | None:
    path = Path(os.path.expanduser(model))
    if path.is_dir():
        return path
    if model.startswith(("/", "./", "../", "~")):
        raise FileNotFoundError(f"hf:{model}: no such folder (expected a transformers folder with config.json)")
    return None


def _config(name: str, where: str, overrides: dict):
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(where)
    except Exception as exc:  # not a transformers config (or one that asks for remote code)
        raise WeightsUnavailableError(f"{name}: cannot read {where}/config.json as a transformers config: "
                                      f"{type(exc).__name__}: {first_line(exc)}") from None
    for key, value in overrides.items():
        if not hasattr(config, key):
            raise TypeError(f"{name}: {type(config).__name__} has no setting {key!r} (from source.options)")
        setattr(config, key, value)
    check_config_sizes(config.to_dict(), f"{where}/config.json" + (" with source.options" if overrides else ""), name)
    return config


@register_family("hf", library="transformers", syntax="hf:<model id or local folder>",
                 accepts="BERT-family encoders with absolute positions (BERT, RoBERTa, XLM-R, MiniLM) and "
                         "ViT-style image encoders (ViTModel)",
                 example="hf:bert-base-uncased")
def hf_by_name(model: str, pretrained: bool = True, weights: str | None = None, **config_overrides):
    """A transformers model; ``config_overrides`` set fields of its config (e.g. num_hidden_layers).
    ``weights`` (a folder) wins over a folder named by ``model``: a checkpoint's source name is
    never opened when the weights are given."""
    name = f"hf:{model}"
    local = local_weights(weights, name, folder=True)
    folder = local if local is not None else _folder(model)
    if folder is None:  # a hub id: its config.json from the verified hub cache
        where, _ = hub_config_folder(name, model, with_weights=False)
    else:
        checked_config(folder, name)
        where = folder
    config = _config(name, str(where), config_overrides)
    image = hasattr(config, "image_size") and hasattr(config, "patch_size")
    return build_hf(name, HfViTSource if image else BertSource, pretrained=pretrained, random_config=lambda: config,
                    hub_id=model, weights=None if folder is None else str(folder),  # a local copy: never the hub
                    config=config if config_overrides else None)
