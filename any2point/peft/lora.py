"""LoRA on the source's attention (and optionally MLP) projections, injected by HF ``peft``."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

from torch import nn

from .. import checks
from .base import PeftConfig, PeftMethod, parameters_outside_source
from .registry import register_peft_method

__all__ = ["LoraPeftConfig", "LoraMethod", "lora_layers"]


@dataclass
class LoraPeftConfig(PeftConfig):
    name: str = "lora"
    lora_rank: int = 8
    lora_alpha: float = 16.0
    lora_dropout: float = 0.0
    lora_mlp: bool = False  # also adapt the MLP projections, not only attention

    def __post_init__(self) -> None:
        checks.integer("peft.lora_rank", self.lora_rank, 1)
        checks.number("peft.lora_alpha", self.lora_alpha, above=0)
        checks.fraction("peft.lora_dropout", self.lora_dropout)


def lora_layers(module: nn.Module) -> list[nn.Module]:
    from peft.tuners.lora import LoraLayer

    return [m for m in module.modules() if isinstance(m, LoraLayer)]


@register_peft_method("lora", LoraPeftConfig)
class LoraMethod(PeftMethod):
    """Baseline: LoRA on the source's attention projections (HF peft); tokenizer, cls, final norm and head train."""

    def inject(self, model) -> None:
        from peft import LoraConfig, inject_adapter_in_model

        source, config = model.source, self.config
        targets = list(source.lora_targets.get("attention", ()))
        if config.lora_mlp:
            targets += list(source.lora_targets.get("mlp", ()))
        if not targets:
            raise ValueError(f"source {source.name!r} declares no LoRA target modules (FrozenSource.lora_targets)")
        lora = LoraConfig(r=config.lora_rank, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
                          target_modules=targets, bias="none")
        inject_adapter_in_model(lora, source)

    def trainable_parameters(self, model) -> Iterator[nn.Parameter]:
        yield from parameters_outside_source(model)
        for layer in lora_layers(model.source):
            for adapter in (layer.lora_A, layer.lora_B):
                yield from adapter.parameters()

    def trained_inside_frozen(self, model) -> list[nn.Module]:
        return lora_layers(model.source)
