"""The virtual views: where each 3D token centre lands in a source's position space.

No image is rendered. For a 2D source each view is a camera frame (a signed permutation of
the axes) followed by a perspective projection onto the canvas the source was trained on;
for a 1D source each view is a line direction, and a centre's position on the line is its
rank between the cloud's extremes along that line. Either way the result is a continuous
position in "source units": pixels (row, col) for 2D, table rows for 1D.

Geometry is computed in float32 even under autocast: pixel coordinates on a 518 px canvas
need more than bf16's 8 significant bits.
"""
from __future__ import annotations

import torch

__all__ = ["CAMERA_FRAMES", "cube_rotations", "face_diagonals", "project_2d", "project_1d", "pixels_to_grid",
           "float32_geometry"]

# The release's six views (docs/method.md#virtual-projection): Euler angles (x, y, z) with R = Rx Ry Rz, p' = R p,
# for (0,0,pi/2), (pi/2,0,pi/2), (pi,0,pi/2), (3pi/2,0,pi/2), (0,-pi/2,pi/2), (0,pi/2,pi/2).
# Written out, each row of a frame is one camera axis as a signed point axis:
# (image u, image v, depth). u runs along the canvas width (columns), v along its height (rows).
CAMERA_FRAMES: tuple[tuple[str, str, str], ...] = (
    ("-y", "x", "z"),
    ("-y", "-z", "x"),
    ("-y", "-x", "-z"),
    ("-y", "z", "-x"),
    ("-z", "x", "-y"),
    ("z", "x", "y"),
)

_AXIS = {"x": 0, "y": 1, "z": 2}


def _frame_matrix(frame: tuple[str, str, str]) -> torch.Tensor:
    rot = torch.zeros(3, 3)
    for row, axis in enumerate(frame):
        sign = -1.0 if axis.startswith("-") else 1.0
        rot[row, _AXIS[axis.lstrip("-")]] = sign
    return rot


def cube_rotations() -> torch.Tensor:
    """(6, 3, 3): the camera frames as rotation matrices, rows (u, v, depth)."""
    mats = torch.stack([_frame_matrix(f) for f in CAMERA_FRAMES])
    if not torch.allclose(torch.linalg.det(mats), torch.ones(len(mats))):
        raise AssertionError("every camera frame must be a proper rotation")
    return mats


def face_diagonals() -> torch.Tensor:
    """(6, 3): six distinct unit line directions, the cube's face diagonals."""
    d = torch.tensor([[1, 1, 0], [1, -1, 0], [1, 0, 1], [1, 0, -1], [0, 1, 1], [0, 1, -1]], dtype=torch.float32)
    return d / d.norm(dim=-1, keepdim=True)


def float32_geometry(device_type: str):
    """A context in which autocast is off, so geometry stays in float32."""
    return torch.autocast(device_type=device_type, enabled=False)


def project_2d(centres: torch.Tensor, rotations: torch.Tensor, translation: float,
               canvas: tuple[int, int], eps: float = 1e-2) -> torch.Tensor:
    """Perspective projection of centres (B, G, 3) -> pixel positions (B, M, G, 2) as (row, col).

    The release's camera: p' = R p, depth d = z' - t (t < 0 pushes the camera back),
    u = (x'/d + 1) * W/2 - 0.5 (column), v = (y'/d + 1) * H/2 - 0.5 (row). Positions are
    clamped to the canvas [0, W-1] x [0, H-1] (the release wrapped them with a modulo), and
    a point at or behind the camera plane is treated as lying just in front of it (depth
    clamped to ``eps``) so nothing becomes infinite.
    """
    H, W = canvas
    with float32_geometry(centres.device.type):
        p = torch.einsum("mij,bgj->bmgi", rotations.to(centres.device, torch.float32), centres.float())
        depth = (p[..., 2] - translation).clamp_min(eps)
        col = (p[..., 0] / depth + 1) * (W / 2) - 0.5
        row = (p[..., 1] / depth + 1) * (H / 2) - 0.5
        return torch.stack([row.clamp(0, H - 1), col.clamp(0, W - 1)], dim=-1)


def pixels_to_grid(pixels: torch.Tensor, canvas: tuple[int, int], grid: tuple[int, int]) -> torch.Tensor:
    """Pixel positions (..., 2) as (row, col) -> continuous grid coordinates (..., 2).

    The release's mapping (``grid_sample`` with ``align_corners=True`` on the pixel position
    normalised by the canvas size - 1): the canvas corners land on the corner entries of the
    table, pixel u -> column u * (cols - 1) / (W - 1), pixel v -> row v * (rows - 1) / (H - 1)."""
    H, W = canvas
    rows, cols = grid
    r = pixels[..., 0] * ((rows - 1) / max(H - 1, 1))
    c = pixels[..., 1] * ((cols - 1) / max(W - 1, 1))
    return torch.stack([r.clamp(0, rows - 1), c.clamp(0, cols - 1)], dim=-1)


def project_1d(centres: torch.Tensor, directions: torch.Tensor, length: int) -> torch.Tensor:
    """Centres (B, G, 3) -> table rows (B, M, G) in [0, length-1], min-max normalised per
    cloud and line (never across the batch)."""
    with float32_geometry(centres.device.type):
        c = centres.float()
        rel = c - c.mean(dim=1, keepdim=True)
        s = torch.einsum("bgj,mj->bmg", rel, directions.to(c.device, torch.float32))
        lo = s.amin(dim=-1, keepdim=True)
        hi = s.amax(dim=-1, keepdim=True)
        return (s - lo) / (hi - lo).clamp_min(1e-6) * (length - 1)
