"""The 3D tokenizer: a parametric Point-PN that turns a cloud into G tokens of the source's
width D plus their 3D centres.

Per stage: FPS picks centres, kNN groups neighbours, offsets are normalised, features are
concat(neighbour, centre) (channels double), a sinusoidal encoding of the offsets is added,
residual 1x1 bottleneck blocks run on the grouped features, and a max over the neighbours
gives the next stage's features.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from .ops import furthest_point_sample, gather_points, knn
from .recompute import run_maybe_recomputed

__all__ = ["TokenizerConfig", "PointTokenizer"]


@dataclass
class TokenizerConfig:
    """Sizes of the tokenizer; the defaults are the paper's (1024 -> 512 -> 256 -> 128, k=81)."""

    # Centres picked per stage; null halves the point count at every stage (1024 in ->
    # 512, 256, 128), so the tokenizer follows data.num_points. A list fixes the sizes.
    centres: list[int] | None = None
    stages: int = 3
    k: int = 81
    blocks: list[int] = field(default_factory=lambda: [2, 1, 1])
    # Hidden width of each stage's bottleneck blocks; null means half the stage width.
    bottleneck: list[int | None] = field(default_factory=lambda: [None, None, 32])
    alpha: float = 1000.0
    beta: float = 100.0
    # 'scan': divide offsets by the group's max |offset| per axis (ScanObjectNN);
    # 'modelnet': divide by the std of the cloud's offsets + 1e-5 (ModelNet40).
    normalize: str = "scan"


def _wide(x: torch.Tensor) -> torch.Tensor:
    """``x`` in float32 when it is a narrower float (geometry never runs in half precision)."""
    return x if x.dtype in (torch.float32, torch.float64) else x.float()


class SinusoidalOffsetEncoding(nn.Module):
    """sin/cos(beta * offset / alpha^(i/F)) per axis, F = C/6 frequencies -> C channels."""

    def __init__(self, channels: int, alpha: float, beta: float):
        super().__init__()
        if channels % 6:
            raise ValueError(f"the offset encoding needs a width divisible by 6, got {channels}")
        freqs = channels // 6
        inv = beta / alpha ** (torch.arange(freqs, dtype=torch.float32) / freqs)
        self.register_buffer("inv_freq", inv, persistent=False)

    def forward(self, offsets: torch.Tensor) -> torch.Tensor:  # (..., 3) -> (..., C) float32
        # angles reach beta * max|offset| (~100 rad): float32 even under autocast (bf16 keeps
        # 8 significant bits, an error of ~0.5 rad at 100 rad)
        with torch.autocast(device_type=offsets.device.type, enabled=False):
            angles = _wide(offsets).unsqueeze(-1) * self.inv_freq.to(_wide(offsets).dtype)  # (..., 3, F)
            return torch.cat([angles.sin(), angles.cos()], dim=-1).flatten(-2)


class Bottleneck(nn.Module):
    """Residual pointwise block C -> m -> C with BatchNorm, on channels-last rows (R, C).

    A pointwise (1x1) convolution is a Linear on channels-last rows; this layout runs the
    matmuls and BatchNorms about twice as fast on CPU as Conv1d on (B, C, L)."""

    def __init__(self, channels: int, hidden: int):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(channels, hidden, bias=False), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True),
            nn.Linear(hidden, channels, bias=False), nn.BatchNorm1d(channels),
        )
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(x + self.net(x))


class TokenizerStage(nn.Module):
    def __init__(self, in_channels: int, k: int, num_blocks: int, hidden: int | None,
                 alpha: float, beta: float, normalize: str):
        super().__init__()
        if normalize not in ("scan", "modelnet"):
            raise ValueError(f"tokenizer.normalize must be 'scan' or 'modelnet', got {normalize!r}")
        self.k, self.normalize = k, normalize
        # Recompute grouped_features in backward instead of storing its activations.
        self.activation_checkpointing = False
        out = 2 * in_channels
        self.encode = SinusoidalOffsetEncoding(out, alpha, beta)
        self.blocks = nn.Sequential(*[Bottleneck(out, hidden or out // 2) for _ in range(num_blocks)])

    def forward(self, xyz: torch.Tensor, feats: torch.Tensor, num_centres: int) -> tuple[torch.Tensor, torch.Tensor]:
        B = feats.shape[0]
        centre_idx, centres, group_idx = self.group(xyz, num_centres)
        offsets = gather_points(_wide(xyz), group_idx) - centres.unsqueeze(2)
        if self.normalize == "scan":
            offsets = offsets / offsets.abs().amax(dim=2, keepdim=True).clamp_min(1e-5)
        else:  # per cloud, so a cloud's tokens never depend on the rest of the batch
            offsets = offsets / (offsets.flatten(1).std(dim=1).view(B, 1, 1, 1) + 1e-5)
        pooled = run_maybe_recomputed(self.activation_checkpointing, self, self.grouped_features,
                                      feats, centre_idx, group_idx, offsets)
        return centres, pooled

    def group(self, xyz: torch.Tensor, num_centres: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The stage's geometry: FPS centres (indices (B, G) and points (B, G, 3)) and the indices
        of each centre's k nearest points (B, G, k). Distances in float32 even under autocast
        (a bf16 matmul would pick other neighbours)."""
        if not 0 < self.k <= xyz.shape[1]:
            raise ValueError(f"model.tokenizer.k={self.k} neighbours, but this stage groups {xyz.shape[1]} points: "
                             f"k must be between 1 and the points grouped")
        with torch.autocast(device_type=xyz.device.type, enabled=False):
            xyz = _wide(xyz)
            centre_idx = furthest_point_sample(xyz, num_centres)
            centres = gather_points(xyz, centre_idx)
            return centre_idx, centres, knn(centres, xyz, self.k)

    def grouped_features(self, feats: torch.Tensor, centre_idx: torch.Tensor, group_idx: torch.Tensor,
                         offsets: torch.Tensor) -> torch.Tensor:
        """concat(neighbour, centre) + offset encoding -> blocks -> max over the k neighbours:
        (B, G, 2C). The stage's largest activations (G x k x 2C per cloud) all live in here."""
        B, G, k = group_idx.shape
        C = feats.shape[-1]
        centre_feats = gather_points(feats, centre_idx)  # (B, G, C)
        grouped = torch.cat([gather_points(feats, group_idx),
                             centre_feats.unsqueeze(2).expand(-1, -1, k, -1)], dim=-1)
        grouped = grouped + self.encode(offsets).to(grouped.dtype)  # (B, G, k, 2C)
        h = grouped.view(-1, 2 * C)  # (B*G*k, 2C)
        for block in self.blocks:
            # nested in the stage's own recomputation: in backward only one block's internals
            # are alive at a time, next to the block inputs
            h = run_maybe_recomputed(self.activation_checkpointing, block, block, h)
        return h.view(B, G, k, 2 * C).amax(dim=2)


class PointTokenizer(nn.Module):
    """(B, N, 3) points -> tokens (B, G, width) and their centres (B, G, 3)."""

    def __init__(self, width: int, config: TokenizerConfig | None = None, **overrides):
        super().__init__()
        cfg = config or TokenizerConfig()
        if overrides:
            cfg = TokenizerConfig(**{**cfg.__dict__, **overrides})
        stages = cfg.stages
        if cfg.centres is not None and len(cfg.centres) != stages:
            raise ValueError(f"tokenizer.centres needs one entry per stage ({stages}), got {list(cfg.centres)}")
        if not (len(cfg.blocks) == len(cfg.bottleneck) == stages):
            raise ValueError(f"tokenizer.blocks and tokenizer.bottleneck need one entry per stage ({stages})")
        if width % 2 ** stages:
            raise ValueError(f"width {width} must be divisible by 2**stages = {2 ** stages}")
        self.config, self.width = cfg, width
        raw = width // 2 ** stages
        self.embed = nn.Sequential(nn.Linear(3, raw), nn.BatchNorm1d(raw), nn.ReLU(inplace=True))
        self.stages = nn.ModuleList()
        channels = raw
        for blocks, hidden in zip(cfg.blocks, cfg.bottleneck):
            self.stages.append(TokenizerStage(channels, cfg.k, blocks, hidden, cfg.alpha, cfg.beta, cfg.normalize))
            channels *= 2

    def centres_for(self, num_points: int) -> list[int]:
        """Centres per stage for clouds of ``num_points`` points."""
        if self.config.centres is not None:
            return list(self.config.centres)
        return [num_points >> (i + 1) for i in range(self.config.stages)]

    def geometry(self, points: torch.Tensor) -> list[torch.Tensor]:
        """FPS and kNN of every stage without the learned layers (what the benches time):
        each stage's centres (B, G, 3)."""
        xyz, out = points, []
        for stage, n in zip(self.stages, self.centres_for(points.shape[1])):
            xyz = stage.group(xyz, n)[1]
            out.append(xyz)
        return out

    def forward(self, points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if points.dim() != 3 or points.shape[-1] != 3:
            raise ValueError(f"the tokenizer expects points of shape (B, N, 3), got {tuple(points.shape)}")
        centres = self.centres_for(points.shape[1])
        if centres[0] > points.shape[1] or min(centres) < 1 or sorted(centres, reverse=True) != centres:
            raise ValueError(f"clouds have {points.shape[1]} points; the tokenizer cannot pick {centres} centres "
                             f"(each stage needs at most as many centres as the previous one has points)")
        xyz = points
        B, N, _ = points.shape
        feats = self.embed(points.reshape(B * N, 3)).view(B, N, -1)
        for stage, n in zip(self.stages, centres):
            xyz, feats = stage(xyz, feats, n)
        return feats, xyz

