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

from . import checks
from .errors import ConfigError
from .ops import furthest_point_sample, gather_points, knn
from .recompute import run_maybe_recomputed

__all__ = ["TokenizerConfig", "PointTokenizer", "NORMALIZE_MODES", "centres_per_stage", "check_cloud_size"]

# how a group's offsets are scaled (TokenizerConfig.normalize)
NORMALIZE_MODES = ("scan", "modelnet")


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

    def __post_init__(self) -> None:
        checks.integer("model.tokenizer.stages", self.stages, 1)
        checks.integer("model.tokenizer.k", self.k, 1)
        if self.centres is not None:
            centres = list(self.centres)
            if len(centres) != self.stages or any(not isinstance(n, int) or n < 1 for n in centres) \
                    or sorted(centres, reverse=True) != centres:
                raise ConfigError(f"model.tokenizer.centres={centres} must be null (halve the points per stage) or "
                                  f"{self.stages} positive counts, one per stage (model.tokenizer.stages), never "
                                  f"increasing")
        for key in ("blocks", "bottleneck"):
            if len(getattr(self, key)) != self.stages:
                raise ConfigError(f"model.tokenizer.{key}={list(getattr(self, key))} must have one entry per stage "
                                  f"(model.tokenizer.stages={self.stages})")
        for i, n in enumerate(self.blocks):
            checks.integer(f"model.tokenizer.blocks[{i}]", n, 0)
        for i, n in enumerate(self.bottleneck):
            checks.optional_integer(f"model.tokenizer.bottleneck[{i}]", n, 1, "half the stage width")
        checks.number("model.tokenizer.alpha", self.alpha, above=0)
        checks.number("model.tokenizer.beta", self.beta, above=0)
        checks.one_of("model.tokenizer.normalize", self.normalize, NORMALIZE_MODES)


def centres_per_stage(config: TokenizerConfig, num_points: int) -> list[int]:
    """Centres each stage picks from clouds of ``num_points`` points: ``config.centres``, or
    (null) half of the points the stage groups (1024 -> 512, 256, 128)."""
    if config.centres is not None:
        return list(config.centres)
    return [num_points >> (i + 1) for i in range(config.stages)]


def check_cloud_size(config: TokenizerConfig, num_points: int, where: str | None = "data.num_points") -> None:
    """Refuse clouds the tokenizer cannot group: stage i picks between 1 and the points it groups
    (the cloud, then the previous stage's centres) and takes k of those as neighbours.
    ``where`` names the setting that gave ``num_points`` (None: the clouds at hand)."""
    subject = f"{where}={num_points}" if where else f"clouds have {num_points} points"
    centres = centres_per_stage(config, num_points)
    grouped = [num_points, *centres[:-1]]
    for stage, (picked, pool) in enumerate(zip(centres, grouped), start=1):
        if not 1 <= picked <= pool:
            raise ConfigError(f"{subject}, too few for the tokenizer: stage {stage} of {len(centres)} would pick "
                              f"{picked} centres from {pool} points (centres per stage {centres}, set by "
                              f"model.tokenizer.centres); use more points or fewer centres")
    for stage, pool in enumerate(grouped, start=1):
        if config.k > pool:
            raise ConfigError(f"model.tokenizer.k={config.k} neighbours, but this stage groups {pool} points (stage "
                              f"{stage} of {len(grouped)}; {subject}): k must be between 1 and the fewest points "
                              f"a stage groups ({min(grouped)})")


def _wide(x: torch.Tensor) -> torch.Tensor:
    """``x`` in float32 when it is a narrower float (geometry never runs in half precision)."""
    return x if x.dtype in (torch.float32, torch.float64) else x.float()


class SinusoidalOffsetEncoding(nn.Module):
    """sin/cos(beta * offset / alpha^(i/F)) of each axis of a 3D offset, written into C channels.

    Channel layout, for any C: the channels go to the axes in order x, y, z, C // 3 each, and
    the first C % 3 axes take one more. An axis given n channels uses F = ceil(n / 2)
    frequencies beta / alpha^(i/F), i = 0..F-1, and writes the sines of all F, then the
    cosines of the first n - F (all F when n is even). When C is divisible by 6 every axis
    gets n = C/3 = 2F channels, [sin f_0..f_F-1, cos f_0..f_F-1], axis after axis: the
    release's encoding (F = C/6 frequencies per axis), which every stage of a source whose
    width D is a multiple of 24 meets (the stages are D/4, D/2 and D wide: 384 and 768 for
    the paper's sources). Other widths (CLIP's 512-wide text tower: a 128-channel first
    stage; 1024-wide ViT-Ls) keep each axis's frequency range and differ by at most one
    channel between axes.
    """

    def __init__(self, channels: int, alpha: float, beta: float):
        super().__init__()
        if channels < 1:
            raise ValueError(f"the offset encoding needs at least one channel, got {channels}")
        per_axis = [channels // 3 + (axis < channels % 3) for axis in range(3)]
        counts = [(n + 1) // 2 for n in per_axis]  # frequencies of each axis
        most = max(counts)
        inv = torch.zeros(3, most)  # an axis with fewer frequencies leaves zeros: never selected below
        for axis, count in enumerate(counts):
            if count:
                inv[axis, :count] = beta / alpha ** (torch.arange(count, dtype=torch.float32) / count)
        self.register_buffer("inv_freq", inv, persistent=False)  # (3, F): one row of frequencies per axis
        # where each output channel sits in the full [sin F, cos F] x 3 layout; None: everywhere (C = 6F)
        keep = [axis * 2 * most + i for axis, (n, count) in enumerate(zip(per_axis, counts))
                for i in [*range(count), *range(most, most + n - count)]]
        index = None if keep == list(range(6 * most)) else torch.tensor(keep)
        self.register_buffer("channel_index", index, persistent=False)
        self.channels = channels

    def forward(self, offsets: torch.Tensor) -> torch.Tensor:  # (..., 3) -> (..., C) float32
        # angles reach beta * max|offset| (~100 rad): float32 even under autocast (bf16 keeps
        # 8 significant bits, an error of ~0.5 rad at 100 rad)
        with torch.autocast(device_type=offsets.device.type, enabled=False):
            angles = _wide(offsets).unsqueeze(-1) * self.inv_freq.to(_wide(offsets).dtype)  # (..., 3, F)
            encoded = torch.cat([angles.sin(), angles.cos()], dim=-1).flatten(-2)  # (..., 6F)
            return encoded if self.channel_index is None else encoded.index_select(-1, self.channel_index)


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
        (a bf16 matmul would pick other neighbours). The sizes are checked by the tokenizer
        (:func:`check_cloud_size`)."""
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
        stages = cfg.stages  # the config checked its own values (TokenizerConfig.__post_init__)
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
        """Centres per stage for clouds of ``num_points`` points (:func:`centres_per_stage`)."""
        return centres_per_stage(self.config, num_points)

    def geometry(self, points: torch.Tensor) -> list[torch.Tensor]:
        """FPS and kNN of every stage without the learned layers (what the benches time):
        each stage's centres (B, G, 3)."""
        check_cloud_size(self.config, points.shape[1], where=None)
        xyz, out = points, []
        for stage, n in zip(self.stages, self.centres_for(points.shape[1])):
            xyz = stage.group(xyz, n)[1]
            out.append(xyz)
        return out

    def forward(self, points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if points.dim() != 3 or points.shape[-1] != 3:
            raise ValueError(f"the tokenizer expects points of shape (B, N, 3), got {tuple(points.shape)}")
        check_cloud_size(self.config, points.shape[1], where=None)
        centres = self.centres_for(points.shape[1])
        xyz = points
        B, N, _ = points.shape
        feats = self.embed(points.reshape(B * N, 3)).view(B, N, -1)
        for stage, n in zip(self.stages, centres):
            xyz, feats = stage(xyz, feats, n)
        return feats, xyz

