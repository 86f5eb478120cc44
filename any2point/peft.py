"""PEFT methods as configurations of one composition (the ``peft`` config group).

Every method keeps the same tokenizer and head; only the adaptation differs. Trainability
is decided structurally, by module, never by matching parameter names:

- ``any2point``: tokenizer, cls token and position, guided adapters, final norm, head.
- ``adapter``: the same with plain bottleneck adapters (no view-guided aggregation).
- ``lora``: LoRA on the source's attention (and optionally MLP) projections, injected by
  the HF ``peft`` library; plus tokenizer, cls, final norm and head.
- ``prompt``: deep prompt tuning, learnable tokens prepended at every block; plus
  tokenizer, cls, final norm and head.
- ``linear``: only the head, on the frozen pipeline (tokenizer frozen at initialisation,
  position encoding on).
- ``full``: everything, the source included (no adapters).
"""
from __future__ import annotations

from dataclasses import dataclass

from torch import nn

__all__ = ["PeftConfig", "PEFT_METHODS", "apply_peft", "frozen_modules", "lora_layers"]

PEFT_METHODS = ("any2point", "adapter", "lora", "prompt", "linear", "full")


@dataclass
class PeftConfig:
    name: str = "any2point"
    lora_rank: int = 8
    lora_alpha: float = 16.0
    lora_dropout: float = 0.0
    lora_mlp: bool = False  # also adapt the MLP projections, not only attention
    prompt_tokens: int = 10  # per block, for deep prompt tuning


def frozen_modules(model: nn.Module) -> list[nn.Module]:
    """The submodules that do not train (kept in eval mode). LoRA layers inside the source
    train although the source is listed: their parameters are re-enabled structurally."""
    name = model.peft_config.name
    if name == "full":
        return []
    if name == "linear":
        return [m for m in (model.source, model.tokenizer, model.norm, model.learned_position) if m is not None]
    return [model.source]


def lora_layers(module: nn.Module) -> list[nn.Module]:
    from peft.tuners.lora import LoraLayer

    return [m for m in module.modules() if isinstance(m, LoraLayer)]


def _copied_source_parameters(source: nn.Module) -> list[nn.Parameter]:
    copied = list(source.final_norm.parameters())
    cls = source.cls_token()
    if cls is not None:
        ptr = cls.untyped_storage().data_ptr()
        copied += [p for p in source.parameters() if p.untyped_storage().data_ptr() == ptr]
    return copied


def _inject_lora(model: nn.Module, config: PeftConfig) -> None:
    from peft import LoraConfig, inject_adapter_in_model

    source = model.source
    targets = list(source.lora_targets.get("attention", ()))
    if config.lora_mlp:
        targets += list(source.lora_targets.get("mlp", ()))
    if not targets:
        raise ValueError(f"source {source.name!r} declares no LoRA target modules (FrozenSource.lora_targets)")
    lora = LoraConfig(r=config.lora_rank, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
                      target_modules=targets, bias="none")
    inject_adapter_in_model(lora, source)


def apply_peft(model: nn.Module, config: PeftConfig) -> None:
    """Inject what the method needs into the source, then set ``requires_grad`` by module."""
    if config.name not in PEFT_METHODS:
        raise ValueError(f"unknown peft method {config.name!r}; choose one of {', '.join(PEFT_METHODS)}")
    if config.name == "lora":
        _inject_lora(model, config)
    for p in model.parameters():
        p.requires_grad_(True)
    for module in frozen_modules(model):
        for p in module.parameters():
            p.requires_grad_(False)
    if config.name == "linear":
        model.cls_token.requires_grad_(False)
        model.cls_position.requires_grad_(False)
    if config.name == "full":
        # The composition runs its own copies of the source's final norm and cls token:
        # the originals never see a gradient, so they do not count as trainable.
        for p in _copied_source_parameters(model.source):
            p.requires_grad_(False)
    if config.name == "lora":
        for layer in lora_layers(model.source):
            for adapter in (layer.lora_A, layer.lora_B):
                for p in adapter.parameters():
                    p.requires_grad_(True)
