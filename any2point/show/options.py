"""Defaults of the pictures and of ``any2point-show`` (the command line's options start here)."""
from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["ShowOptions", "PICTURES"]

# Every picture by name; "weights" and "topk" need a trained model (--checkpoint).
PICTURES = ("cloud", "views", "pe", "weights", "topk")


@dataclass
class ShowOptions:
    points: int = 1024  # points read from a file when no checkpoint says how many (the paper's N)
    seed: int = 0  # mesh surface sampling
    block: int = -1  # the block whose view weights are shown (-1: the last)
    topk: int = 5
    dpi: int = 80  # modest: with the palette below a picture stays under 150 KB
    palette: int | None = 256  # colours of the saved PNGs; None: full colour (three times the size)
    elev: float = 20.0  # the fixed camera of the 3D pictures (degrees)
    azim: float = -60.0
    pictures: tuple[str, ...] = field(default_factory=lambda: PICTURES)  # which pictures to write
    point_size: float = 2.0
    token_size: float = 18.0
