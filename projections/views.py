"""The virtual views: where each 3D token centre lands in a source's position space.

No image is rendered. For a 2D source each view is a rotation of the cloud followed by a
perspective projection onto the canvas the source was trained on; for a 1D source each view
is a line direction, and a centre's position on the line is its rank between the cloud's
extremes along that line. Either way the result is a continuous position in "source units":
pixels (row, col) for 2D, table rows for 1D.
"""
from __future__ import annotations

import math

import torch

__all__ = ["cube_rotations", "face_diagonals", "project_2d", "project_1d", "pixels_to_grid"]


def _rot_x(a: float) -> torch.Tensor:
    c, s = math.cos(a), math.sin(a)
    return torch.tensor([[1.0, 0.0, 0.0], [0.0, c, -s], [0.0, s, c]])


def _rot_y(a: float) -> torch.Tensor:
    c, s = math.cos(a), math.sin(a)
    return torch.tensor([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])


def cube_rotations() -> torch.Tensor:
    """(6, 3, 3): the six axis-aligned cube views (front, back, right, left, top, bottom)."""
    h = math.pi / 2
    mats = [torch.eye(3), _rot_y(math.pi), _rot_y(h), _rot_y(-h), _rot_x(h), _rot_x(-h)]
    return torch.stack(mats).round(decimals=6)


def face_diagonals() -> torch.Tensor:
    """(6, 3): six distinct unit line directions, the cube's face diagonals."""
    d = torch.tensor([[1, 1, 0], [1, -1, 0], [1, 0, 1], [1, 0, -1], [0, 1, 1], [0, 1, -1]], dtype=torch.float32)
    return d / d.norm(dim=-1, keepdim=True)


def project_2d(centres: torch.Tensor, rotations: torch.Tensor, translation: float,
               canvas: tuple[int, int], eps: float = 1e-2) -> torch.Tensor:
    """Perspective projection of centres (B, G, 3) -> pixel positions (B, M, G, 2) as (row, col).

    The camera sits at distance -``translation`` behind the origin looking along +z; the
    projected positions are clamped to the canvas (the release wrapped them with a modulo),
    and a point at or behind the camera plane is treated as lying on it (depth clamped to
    ``eps``) so nothing becomes infinite.
    """
    H, W = canvas
    p = torch.einsum("mij,bgj->bmgi", rotations.to(centres), centres)  # (B, M, G, 3)
    depth = (p[..., 2] - translation).clamp_min(eps)
    col = p[..., 0] / depth * (W / 2) + W / 2
    row = p[..., 1] / depth * (H / 2) + H / 2
    return torch.stack([row.clamp(0, H - 1e-4), col.clamp(0, W - 1e-4)], dim=-1)


def pixels_to_grid(pixels: torch.Tensor, patch: tuple[int, int], grid: tuple[int, int]) -> torch.Tensor:
    """Pixel positions (..., 2) -> continuous grid coordinates (..., 2), patch centres at integers.

    Patch (i, j) covers pixels [i*ph, (i+1)*ph); its centre maps to exactly (i, j). Results
    are clamped to [0, rows-1] x [0, cols-1]."""
    ph, pw = patch
    rows, cols = grid
    r = (pixels[..., 0] / ph - 0.5).clamp(0, rows - 1)
    c = (pixels[..., 1] / pw - 0.5).clamp(0, cols - 1)
    return torch.stack([r, c], dim=-1)


def project_1d(centres: torch.Tensor, directions: torch.Tensor, length: int) -> torch.Tensor:
    """Centres (B, G, 3) -> table rows (B, M, G) in [0, length-1], min-max normalised per
    cloud and line (never across the batch)."""
    rel = centres - centres.mean(dim=1, keepdim=True)
    s = torch.einsum("bgj,mj->bmg", rel, directions.to(centres))
    lo = s.amin(dim=-1, keepdim=True)
    hi = s.amax(dim=-1, keepdim=True)
    return (s - lo) / (hi - lo).clamp_min(1e-6) * (length - 1)
