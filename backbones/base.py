"""What every source model exposes to the Any2Point composition.

A source is a frozen stack of transformer blocks plus the facts the method needs about it:
its width/depth/heads, its position table (1D rows, or a 2D grid with the canvas and patch
geometry it was trained on), its cls token and cls position if it has them, and its final
norm. Each block runs batch-first on (B, T, D) and accepts an ``ffn_hook``: a callable that
receives the block's FFN output ``f`` and returns a tensor added beside it (the guided
adapter's bottleneck acts there). A post-LN block (BERT) ends with a LayerNorm over its residual sum; it splits
its forward at that norm (``residual``, ``output_norm``), so that terms meant for the
residual stream can join the sum before it is normalised. Family files in this package
only translate a library model into this shape.
"""
from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import Callable, ClassVar, Optional

import torch
from torch import nn

FFNHook = Optional[Callable[[torch.Tensor], torch.Tensor]]

__all__ = ["with_ffn", "PositionTable", "SourceBlock", "FrozenSource", "FFNHook", "SourceMismatchError", "linear_targets"]


class SourceMismatchError(ValueError):
    """A library model that does not have the shape Any2Point needs (said with the reason)."""


def linear_targets(block: nn.Module, attention: str) -> dict[str, tuple[str, ...]]:
    """LoRA targets read from one library block: the names of its ``nn.Linear`` modules,
    split into 'attention' (names under ``attention``) and 'mlp' (the rest)."""
    fused = [n for n, m in block.named_modules() if isinstance(m, nn.MultiheadAttention)]
    # nn.MultiheadAttention reads its out_proj weight directly: a wrapped out_proj would never run
    names = [n for n, m in block.named_modules()
             if isinstance(m, nn.Linear) and n and not any(n.startswith(f + ".") for f in fused)]
    return {"attention": tuple(n for n in names if n.startswith(attention + ".")),
            "mlp": tuple(n for n in names if not n.startswith(attention + "."))}


@dataclass(frozen=True)
class PositionTable:
    """Where a source's position embeddings live and what they mean.

    ``kind`` is '1d' (rows indexed by token position) or '2d' (a grid of ``grid`` =
    (rows, cols) patch positions, stored row by row, on a canvas of ``canvas`` = (height,
    width) pixels cut into patches of ``patch`` = (height, width) pixels). ``cls``: the
    source stores a position row of its own for a cls token beside the table (ViTs); the
    registry renders these facts as text, so they are written once, as values.
    """

    kind: str
    shape: tuple[int, ...]  # (L,) for 1d, (rows, cols) for 2d
    canvas: tuple[int, int] | None = None
    patch: tuple[int, int] | None = None
    cls: bool = False

    def __post_init__(self):
        if self.kind not in ("1d", "2d"):
            raise ValueError(f"position kind must be '1d' or '2d', got {self.kind!r}")
        if self.kind == "2d" and (len(self.shape) != 2 or self.canvas is None or self.patch is None):
            raise ValueError("a 2d position table needs shape=(rows, cols), canvas and patch")
        if self.kind == "1d" and len(self.shape) != 1:
            raise ValueError("a 1d position table needs shape=(length,)")

    def describe(self) -> str:
        """The table as people write it: '77 rows', '37x37 (+cls) on 518x518 px'."""
        cls = " (+cls)" if self.cls else ""
        if self.kind == "1d":
            return f"{self.shape[0]} rows{cls}"
        return f"{self.shape[0]}x{self.shape[1]}{cls} on {self.canvas[0]}x{self.canvas[1]} px"


def with_ffn(h: torch.Tensor, f: torch.Tensor, ffn_hook: FFNHook = None) -> torch.Tensor:
    """The block's residual sum h + f, plus the hook's output on the FFN output f when given
    (the guided adapter's bottleneck runs parallel to the FFN)."""
    return h + f if ffn_hook is None else h + f + ffn_hook(f)


class SourceBlock(nn.Module, abc.ABC):
    """One frozen transformer block, batch-first, with an optional FFN hook.

    ``post_norm``: the block ends with a LayerNorm over its residual sum (post-LN: BERT,
    RoBERTa, MiniLM, e5), so ``forward(x) == output_norm(residual(x))``; such blocks override
    both. A pre-LN block (CLIP, ViT, ImageBind) has no output norm: its residual sum is its
    output, and the next block normalises it."""

    post_norm: ClassVar[bool] = False

    @abc.abstractmethod
    def forward(self, x: torch.Tensor, ffn_hook: FFNHook = None) -> torch.Tensor:
        """(B, T, D) -> (B, T, D); with no hook, equal to the library block's own output."""

    def residual(self, x: torch.Tensor, ffn_hook: FFNHook = None) -> torch.Tensor:
        """The block's residual sum before its output norm (a pre-LN block's output)."""
        return self(x, ffn_hook)

    def output_norm(self, r: torch.Tensor) -> torch.Tensor:
        """The LayerNorm a post-LN block ends with, on a residual sum (identity when pre-LN)."""
        return r


class FrozenSource(nn.Module, abc.ABC):
    """A frozen source model in the shape the composition needs.

    Attributes set by family files: ``name``, ``width``, ``depth``, ``heads``,
    ``position`` (a PositionTable), ``weights_tag`` (where the weights came from, e.g.
    ``openai`` or ``random``), ``weights_sha256`` (the SHA-256 identity of the weights
    file(s) it loaded, see any2point.backbones.weights; None for random weights), ``stem`` (what the source applies to its input embeddings
    before the first block, e.g. BERT's embedding LayerNorm; identity for most),
    ``blocks`` (ModuleList of SourceBlock) and ``final_norm``.

    ``lora_targets`` names, per part ('attention', 'mlp'), the module-name suffixes inside
    the source that the LoRA baseline adapts (HF peft ``target_modules``).
    """

    lora_targets: ClassVar[dict[str, tuple[str, ...]]] = {}  # families read theirs from the model
    weights_sha256: str | None = None  # set by the family file that loaded the weights

    def __init__(self, name: str, width: int, heads: int, position: PositionTable,
                 blocks: nn.ModuleList, final_norm: nn.Module, weights_tag: str,
                 stem: nn.Module | None = None):
        super().__init__()
        self.name, self.width, self.heads = name, width, heads
        self.position, self.weights_tag = position, weights_tag
        self.stem = stem if stem is not None else nn.Identity()
        self.blocks, self.final_norm = blocks, final_norm

    @property
    def depth(self) -> int:
        return len(self.blocks)

    # Family files implement these to point at the library model's own tensors.
    @abc.abstractmethod
    def position_table(self) -> torch.Tensor:
        """(L, D) for 1d sources, (rows, cols, D) for 2d sources; frozen."""

    def cls_position(self) -> torch.Tensor | None:
        """(D,) position embedding of the source's cls token, or None."""
        return None

    def cls_token(self) -> torch.Tensor | None:
        """(D,) the source's cls token embedding, or None."""
        return None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Stem, all blocks, then the final norm on (B, T, D) embeddings (reference path)."""
        x = self.stem(x)
        for block in self.blocks:
            x = block(x)
        return self.final_norm(x)

    def freeze(self) -> "FrozenSource":
        for p in self.parameters():
            p.requires_grad_(False)
        return self
