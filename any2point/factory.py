"""``create_model``: a source name (or a built source) -> an Any2Point classifier.

Model settings come from the packaged YAML ``conf/model/<preset>.yaml`` (the source's
ScanObjectNN preset of the release, or documented defaults) merged over
``conf/model/base.yaml``; keyword overrides win. Which preset a source name gets is decided by
one rule, :func:`any2point.backbones.registry.source_preset`, which the Hydra training app
follows too, so a model built here and one built by ``any2point-train`` agree.
"""
from __future__ import annotations

import dataclasses
from importlib import resources
from typing import Any, Mapping

from omegaconf import DictConfig, OmegaConf

from .backbones.base import FrozenSource
from .model import Any2PointModel, ModelConfig
from .peft import PeftConfig, peft_config, refuse_removed_setting
from .backbones.registry import BASE_PRESET, create_source, source_preset

__all__ = ["create_model", "create_model_from_config", "model_config", "model_preset_names"]

_SECTIONS = tuple(f.name for f in dataclasses.fields(ModelConfig))  # tokenizer, projection, ..., init


def _load_model_yaml(preset: str) -> DictConfig:
    path = resources.files("any2point.conf").joinpath("model", f"{preset}.yaml")
    cfg = OmegaConf.create(path.read_text())
    cfg.pop("defaults", None)
    return cfg


def model_preset_names() -> list[str]:
    folder = resources.files("any2point.conf").joinpath("model")
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".yaml") and p.name != f"{BASE_PRESET}.yaml")


def model_config(source_name: str, overrides: Mapping[str, Any] | DictConfig | None = None) -> ModelConfig:
    """The model settings for ``source_name``: base <- the source's preset <- ``overrides``."""
    merged = OmegaConf.merge(OmegaConf.structured(ModelConfig), _load_model_yaml(BASE_PRESET))
    preset = source_preset(source_name)
    if preset != BASE_PRESET:
        merged = OmegaConf.merge(merged, _load_model_yaml(preset))
    if overrides:
        unknown = set(overrides) - set(_SECTIONS)
        if unknown:
            raise ValueError(f"unknown model settings {sorted(unknown)}; expected sections {list(_SECTIONS)}")
        for section, values in overrides.items():
            for key in (values if isinstance(values, Mapping) else ()):
                refuse_removed_setting(f"model.{section}.{key}")
        merged = OmegaConf.merge(merged, OmegaConf.create(dict(overrides) if not isinstance(overrides, DictConfig)
                                                          else overrides))
    return OmegaConf.to_object(merged)


def create_model(source: str | FrozenSource, num_classes: int, pretrained: bool = True,
                 peft: str | Mapping[str, Any] | PeftConfig = "any2point",
                 source_options: Mapping[str, Any] | None = None, model: ModelConfig | None = None,
                 **overrides) -> Any2PointModel:
    """Build an Any2Point classifier on a frozen source (the one model builder: the apps and
    checkpoint loading call it too).

    ``source``: a registered name or an already built source. ``overrides``: model sections
    (``tokenizer``, ``projection``, ``adapter``, ``head``) as dicts, e.g.
    ``adapter={"rank": 8}``. ``model``: complete model settings used as they are instead of
    the source's preset (a composed config, a checkpoint's). ``source_options``: extra
    arguments of the source's factory (e.g. ``{"weights": "/path/to/file"}``).
    """
    if model is not None and overrides:
        raise ValueError("pass either complete model settings (model=...) or section overrides, not both")
    if isinstance(source, str):
        source = create_source(source, pretrained=pretrained, **dict(source_options or {}))
    config = model if model is not None else model_config(source.name, overrides)
    return Any2PointModel(source, num_classes, config, peft_config(peft))


def create_model_from_config(cfg: DictConfig, num_classes: int) -> Any2PointModel:
    """The model a composed training config describes (its ``source``, ``model`` and ``peft``
    sections), as ``any2point-train`` builds it."""
    source = OmegaConf.to_container(cfg.source, resolve=True)
    options = dict(source.get("options") or {})
    if source.get("weights"):
        options["weights"] = str(source["weights"])
    return create_model(source["name"], num_classes, pretrained=bool(source["pretrained"]),
                        peft=OmegaConf.to_object(cfg.peft), source_options=options,
                        model=OmegaConf.to_object(cfg.model))
