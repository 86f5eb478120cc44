"""Virtual-projection positional encoding: each 3D token gets the mean, over M views, of the
source's own (frozen) position embedding at the place the token projects to.

Works for any source from its ``PositionTable`` description: 1D tables are read along line
directions, 2D grids through a perspective projection onto the source's canvas. The
``learned`` kind is the ablation without virtual projection (an MLP on the 3D centre).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from any2point import checks
from any2point.backbones.base import PositionTable
from any2point.errors import ConfigError

from .sampling import sample_grid, sample_rows
from .views import cube_rotations, face_diagonals, pixels_to_grid, project_1d, project_2d

__all__ = ["ProjectionConfig", "ViewPositions", "VirtualProjection", "LearnedPositionEncoding", "KINDS",
           "INJECT_MODES"]

KINDS = ("virtual", "learned")  # ProjectionConfig.kind
INJECT_MODES = ("input", "every", "input_and_every", "none")  # ProjectionConfig.inject


@dataclass
class ProjectionConfig:
    """How 3D token centres find their place in the source's position space."""

    # 'virtual': read the source's table; 'learned': ablation, a 3D position MLP instead.
    # The per-view positions are computed either way (the guided adapter's cells use them).
    kind: str = "virtual"
    # 'input' (once) | 'every' (before every block, the input included) | 'input_and_every' (at the input
    # and again before every block: the first block sees it twice, as the release's CLIP ScanObjectNN run)
    # | 'none'
    inject: str = "every"
    views: int = 6  # M: 2D sources use the first M cube views, 1D sources the first M lines
    translation: float = -1.8  # 2D: camera pushed back by t (ScanObjectNN -1.8, ModelNet -1.4)
    directions: list[list[float]] | None = None  # 1D line directions; default: the cube's face diagonals
    length: int | None = None  # 1D: how many table rows the lines span (default: all rows)

    def __post_init__(self) -> None:
        key = "model.projection."
        checks.one_of(key + "kind", self.kind, KINDS)
        checks.one_of(key + "inject", self.inject, INJECT_MODES)
        checks.integer(key + "views", self.views, 1)  # the upper bound is the source's (VirtualProjection)
        checks.number(key + "translation", self.translation)
        if self.directions is not None and (len(self.directions) != self.views
                                            or any(len(d) != 3 for d in self.directions)):
            raise ConfigError(f"{key}directions={list(map(list, self.directions))} must be null (the cube's face "
                              f"diagonals) or {self.views} 3-vectors ({key}views={self.views})")
        checks.optional_integer(key + "length", self.length, 2, "all rows of the table")


@dataclass(frozen=True)
class ViewPositions:
    """Per-view positions of the token centres, computed once per forward pass.

    ``source_units``: (B, M, G, 2) canvas pixels (row, col) for 2D sources, (B, M, G, 1)
    table rows for 1D sources. ``table_coords``: the same positions as continuous table
    indices, (B, M, G, 2) grid (row, col) or (B, M, G) rows."""

    kind: str
    source_units: torch.Tensor
    table_coords: torch.Tensor


class VirtualProjection(nn.Module):
    def __init__(self, position: PositionTable, config: ProjectionConfig):
        super().__init__()
        self.position, self.config = position, config
        if position.kind == "2d":
            rots = cube_rotations()
            if not 1 <= config.views <= len(rots):
                raise ValueError(f"projection.views must be in [1, {len(rots)}] for a 2D source, got {config.views}")
            self.register_buffer("rotations", rots[: config.views], persistent=False)
        else:
            dirs = (torch.tensor(config.directions, dtype=torch.float32) if config.directions is not None
                    else face_diagonals()[: config.views])
            if len(dirs) != config.views:  # more views than the default directions
                raise ValueError(f"model.projection.views={config.views}: a 1D source has {len(dirs)} default line "
                                 f"directions; give model.projection.directions for more")
            dirs = dirs / dirs.norm(dim=-1, keepdim=True).clamp_min(1e-12)
            if torch.unique(dirs.round(decimals=5), dim=0).shape[0] != len(dirs):
                raise ValueError("projection.directions must be distinct lines")
            self.register_buffer("directions", dirs, persistent=False)
            rows = position.shape[0]
            self.length = config.length or rows
            if not 2 <= self.length <= rows:
                raise ValueError(f"projection.length must be in [2, {rows}] (the table's rows), got {self.length}")

    def positions(self, centres: torch.Tensor) -> ViewPositions:
        if self.position.kind == "2d":
            pix = project_2d(centres.float(), self.rotations, self.config.translation, self.position.canvas)
            return ViewPositions("2d", pix, pixels_to_grid(pix, self.position.canvas, self.position.shape))
        rows = project_1d(centres.float(), self.directions, self.length)
        return ViewPositions("1d", rows.unsqueeze(-1), rows)

    def encode(self, table: torch.Tensor, where: ViewPositions) -> torch.Tensor:
        """Mean over views of the table read at each token's positions -> (B, G, D)."""
        sampled = sample_grid(table, where.table_coords) if where.kind == "2d" else sample_rows(table, where.table_coords)
        return sampled.mean(dim=1)


class LearnedPositionEncoding(nn.Module):
    """Ablation: a small MLP from the 3D centre to a position embedding (trainable)."""

    def __init__(self, width: int, hidden: int = 128):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(3, hidden), nn.GELU(), nn.Linear(hidden, width))

    def forward(self, centres: torch.Tensor) -> torch.Tensor:
        return self.mlp(centres)

