"""Defaults of the pictures and of ``any2point-show`` (the command line's options start here)."""
from __future__ import annotations

from dataclasses import dataclass

__all__ = ["ShowOptions"]


@dataclass
class ShowOptions:
    points: int = 1024  # points read from a file when no checkpoint says how many (the paper's N)
    seed: int = 0  # mesh surface sampling
    block: int = -1  # the block whose view weights are shown (-1: the last)
    topk: int = 5
    dpi: int = 80  # modest: a picture stays well under 150 KB
    elev: float = 20.0  # the fixed camera of the 3D pictures (degrees)
    azim: float = -60.0
    point_size: float = 2.0
    token_size: float = 18.0
