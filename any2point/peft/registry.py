"""The PEFT-method registry: names -> (method class, config dataclass).

Built-in methods register when ``any2point.peft`` is imported; third-party packages register
theirs through the entry-point group ``any2point.peft_methods`` (an entry point names a module
or a callable; loading it must call :func:`register_peft_method`). Registering also stores
the method's config dataclass in Hydra's ConfigStore as option ``<name>`` of the ``peft``
group, so ``any2point-train peft=<name>`` finds it with no YAML file, typed: a misspelt key
or a wrong type fails at start-up.
"""
from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass
from typing import Any, Callable, Mapping

from omegaconf import DictConfig, OmegaConf

from ..errors import ConfigError
from ..plugins import load_entry_points
from .base import OPTIONAL_PARTS, PeftConfig, PeftMethod

__all__ = ["PeftMethodSpec", "register_peft_method", "list_peft_methods", "get_peft_method", "peft_config",
           "create_peft_method", "load_peft_methods", "ENTRY_POINT_GROUP", "RENAMED_METHODS", "REMOVED_SETTINGS"]


ENTRY_POINT_GROUP = "any2point.peft_methods"
CONFIG_GROUP = "peft"

# Built-in methods renamed so that each model has one name: old name -> new. Asking for an old
# name is refused with the new one; a checkpoint that recorded one loads as the new
# (any2point.checkpoint).
RENAMED_METHODS = {"adapter": "bottleneck"}
# Settings removed for the same reason: full key -> what to use instead (refused at start-up
# by the apps and by create_model; a checkpoint's recorded value is upgraded on loading).
REMOVED_SETTINGS = {
    "model.adapter.guided": "peft=any2point is the guided adapter, peft=bottleneck the bottleneck alone (what "
                            "model.adapter.guided=false built)",
}


def refuse_renamed_method(name: str) -> None:
    """A :class:`ConfigError` for a method's old name (:data:`RENAMED_METHODS`), naming the new one."""
    if name in RENAMED_METHODS:
        raise ConfigError(f"peft={name} is now peft={RENAMED_METHODS[name]} (one name per model); use "
                          f"peft={RENAMED_METHODS[name]}")


def refuse_removed_setting(key: str) -> None:
    """A :class:`ConfigError` for a removed setting (:data:`REMOVED_SETTINGS`), saying what to use."""
    if key in REMOVED_SETTINGS:
        raise ConfigError(f"{key} was removed: {REMOVED_SETTINGS[key]}")


@dataclass(frozen=True)
class PeftMethodSpec:
    name: str
    method: type[PeftMethod]
    config: type[PeftConfig]
    description: str


# The one flat config of every method that checkpoints held before this registry (all five
# keys, whatever the method): each method keeps the ones it defines.
_FLAT_FIELDS = frozenset({"lora_rank", "lora_alpha", "lora_dropout", "lora_mlp", "prompt_tokens"})

_REGISTRY: dict[str, PeftMethodSpec] = {}


def _store_config(name: str, config: type[PeftConfig], provider: str) -> None:
    from hydra.core.config_store import ConfigStore

    ConfigStore.instance().store(group=CONFIG_GROUP, name=name, node=config(name=name), provider=provider)


def register_peft_method(name: str, config: type[PeftConfig] = PeftConfig) -> Callable:
    """Class decorator registering a :class:`PeftMethod` subclass under ``name`` with its
    config dataclass (a subclass of :class:`PeftConfig`; its defaults are the method's)."""
    if not (isinstance(config, type) and issubclass(config, PeftConfig) and dataclasses.is_dataclass(config)):
        raise TypeError(f"peft method {name!r}: config must be a dataclass subclassing PeftConfig, got {config!r}")

    def decorate(method: type[PeftMethod]) -> type[PeftMethod]:
        if not (isinstance(method, type) and issubclass(method, PeftMethod)):
            raise TypeError(f"peft method {name!r}: {method!r} is not a subclass of PeftMethod")
        unknown = sorted(set(method.unused_parts) - OPTIONAL_PARTS)
        if unknown:
            raise TypeError(f"peft method {name!r}: unused_parts names {unknown}, which the model does not have; "
                            f"the parts a method may leave out: {', '.join(sorted(OPTIONAL_PARTS))}")
        if method.unused_parts and method.encode is None:
            raise TypeError(f"peft method {name!r}: unused_parts needs an encode of its own (the model's own "
                            f"forward pass reads every shared part)")
        if name in _REGISTRY and _REGISTRY[name].method is not method:
            other = _REGISTRY[name].method.__module__
            raise ValueError(f"a peft method named {name!r} is already registered (by {other})")
        method.config_class = config
        description = (method.__doc__ or "").strip().split("\n")[0]
        _REGISTRY[name] = PeftMethodSpec(name=name, method=method, config=config, description=description)
        _store_config(name, config, method.__module__)
        return method

    return decorate


def load_peft_methods() -> None:
    """Load the third-party methods of the entry-point group (once). The Hydra apps call this
    before composing, so that ``peft=<their name>`` is a known option."""
    load_entry_points(ENTRY_POINT_GROUP, "peft method")


def list_peft_methods() -> list[str]:
    """Names of every registered method, sorted."""
    load_peft_methods()
    return sorted(_REGISTRY)


def get_peft_method(name: str) -> PeftMethodSpec:
    load_peft_methods()
    if name not in _REGISTRY:
        refuse_renamed_method(name)
        close = difflib.get_close_matches(name, list(_REGISTRY), n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"unknown peft method {name!r}.{hint} Registered methods: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name]


def peft_config(value: str | Mapping[str, Any] | PeftConfig | None) -> PeftConfig:
    """The typed config of a method from its name, a mapping with ``name`` (a checkpoint's
    JSON, a Hydra node) or a config object; unknown keys and wrong types fail by name."""
    if value is None:
        value = PeftConfig()
    if isinstance(value, str):
        return get_peft_method(value).config(name=value)
    if isinstance(value, PeftConfig):
        if type(value) is get_peft_method(value.name).config:
            return value
        value = dataclasses.asdict(value)
    fields = OmegaConf.to_container(value, resolve=True) if isinstance(value, DictConfig) else dict(value)
    name = fields.get("name")
    if not isinstance(name, str):
        raise ValueError(f"a peft config needs the method's name under 'name', got {fields!r}")
    spec = get_peft_method(name)
    if _FLAT_FIELDS <= set(fields):  # a checkpoint written before methods had configs of their own
        own = {f.name for f in dataclasses.fields(spec.config)}
        fields = {k: v for k, v in fields.items() if k in own or k not in _FLAT_FIELDS}
    try:
        merged = OmegaConf.merge(OmegaConf.structured(spec.config(name=name)), OmegaConf.create(fields))
    except Exception as exc:
        raise ValueError(f"peft method {name!r}: {exc}".splitlines()[0] + f" (its settings: "
                         f"{', '.join(f.name for f in dataclasses.fields(spec.config))})") from exc
    return OmegaConf.to_object(merged)


def create_peft_method(value: str | Mapping[str, Any] | PeftConfig | None) -> PeftMethod:
    """The method object for a config (see :func:`peft_config` for what ``value`` may be)."""
    config = peft_config(value)
    return get_peft_method(config.name).method(config)
