"""Deep prompt tuning: learnable tokens placed after the cls token before every frozen block."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .. import checks
from .base import PeftConfig, PeftMethod
from .registry import register_peft_method

__all__ = ["PromptPeftConfig", "PromptMethod"]


@dataclass
class PromptPeftConfig(PeftConfig):
    name: str = "prompt"
    prompt_tokens: int = 10  # per block

    def __post_init__(self) -> None:
        checks.integer("peft.prompt_tokens", self.prompt_tokens, 1)


@register_peft_method("prompt", PromptPeftConfig)
class PromptMethod(PeftMethod):
    """Baseline: deep prompt tuning, fresh learnable tokens before every block.

    Tokenizer, cls, final norm and head train as in every method."""

    def inject(self, model) -> None:
        source = model.source
        model.prompts = nn.Parameter(torch.randn(source.depth, self.config.prompt_tokens, source.width) * 0.02)

    def run_block(self, model, i: int, block: nn.Module, x: torch.Tensor, context) -> torch.Tensor:
        P = model.prompts.shape[1]
        prompts = model.prompts[i].to(x.dtype).expand(x.shape[0], -1, -1)
        y = block(torch.cat([x[:, :1], prompts, x[:, 1:]], dim=1))
        return torch.cat([y[:, :1], y[:, 1 + P:]], dim=1)
