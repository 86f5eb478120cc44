"""The virtual projection against the release's formulas, written out here independently
(docs/method.md#virtual-projection): Euler angles with R = Rx Ry Rz, p' = R p, depth d = z' - t,
u = (x'/d + 1) * W/2 - 0.5, v = (y'/d + 1) * H/2 - 0.5, clamped to the canvas (our fix),
the PE grid sampled by ``grid_sample(align_corners=True)``, cells floor(u/g), floor(v/g).
A view turned by 90 degrees, a swapped row/column or a half-pixel shift fails here."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import any2point
from any2point.adapters import view_cells
from any2point.backbones.base import PositionTable
from any2point.projections import ProjectionConfig, VirtualProjection

EULER = [(0, 0, math.pi / 2), (math.pi / 2, 0, math.pi / 2), (math.pi, 0, math.pi / 2),
         (3 * math.pi / 2, 0, math.pi / 2), (0, -math.pi / 2, math.pi / 2), (0, math.pi / 2, math.pi / 2)]

# (canvas (H, W), grid (rows, cols), patch, translation, cell g): DINOv2, ImageBind audio, tiny_2d
CANVASES = {
    "dinov2": ((518, 518), (37, 37), (14, 14), -1.8, 26),
    "imagebind_audio": ((192, 304), (12, 19), (16, 16), -1.4, 16),
    "tiny_2d": ((64, 96), (8, 12), (8, 8), -1.4, 16),
}


def _euler(ax: float, ay: float, az: float) -> np.ndarray:
    cx, sx, cy, sy, cz, sz = math.cos(ax), math.sin(ax), math.cos(ay), math.sin(ay), math.cos(az), math.sin(az)
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rx @ ry @ rz


def _clouds(b: int = 3, g: int = 40, seed: int = 0) -> torch.Tensor:
    """Token centres inside the unit ball, deliberately not symmetric."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(b, g, 3)) * np.array([0.9, 0.5, 0.3]) + np.array([0.1, -0.05, 0.02])
    x /= max(1.0, np.linalg.norm(x, axis=-1).max())
    return torch.from_numpy(x.astype(np.float32))


def _release_pixels(centres: torch.Tensor, canvas, t: float, half_pixel: float = 0.5, turn: bool = False):
    """(B, M, G) u (column) and v (row) pixels by the release's formulas, in float64."""
    H, W = canvas
    p = centres.double().numpy()
    us, vs = [], []
    for angles in EULER:
        q = p @ _euler(*angles).T  # p' = R p
        if turn:  # the same view turned by 90 degrees in the image plane
            q = np.stack([-q[..., 1], q[..., 0], q[..., 2]], axis=-1)
        d = q[..., 2] - t
        us.append(np.clip((q[..., 0] / d + 1) * W / 2 - half_pixel, 0, W - 1))
        vs.append(np.clip((q[..., 1] / d + 1) * H / 2 - half_pixel, 0, H - 1))
    return torch.from_numpy(np.stack(us, 1)), torch.from_numpy(np.stack(vs, 1))


def _release_pe(table: torch.Tensor, u: torch.Tensor, v: torch.Tensor, canvas) -> torch.Tensor:
    """Mean over views of grid_sample(align_corners=True) of the (rows, cols, D) table: (B, G, D)."""
    H, W = canvas
    B, M, G = u.shape
    grid = torch.stack([2 * u / (W - 1) - 1, 2 * v / (H - 1) - 1], dim=-1).reshape(1, B * M * G, 1, 2)
    image = table.double().permute(2, 0, 1).unsqueeze(0)  # (1, D, rows, cols)
    sampled = F.grid_sample(image, grid, mode="bilinear", padding_mode="zeros", align_corners=True)
    return sampled[0, :, :, 0].t().reshape(B, M, G, -1).mean(dim=1)


def _projection(name: str) -> tuple[VirtualProjection, torch.Tensor, tuple]:
    canvas, grid, patch, t, cell = CANVASES[name]
    table = torch.randn(*grid, 16, generator=torch.Generator().manual_seed(1))
    pos = PositionTable("2d", grid, canvas=canvas, patch=patch)
    return VirtualProjection(pos, ProjectionConfig(views=6, translation=t)), table, CANVASES[name]


@pytest.mark.parametrize("name", sorted(CANVASES))
def test_pixels_and_sampled_pe_follow_the_release(name):
    proj, table, (canvas, grid, _, t, _) = _projection(name)
    centres = _clouds()
    where = proj.positions(centres)
    u, v = _release_pixels(centres, canvas, t)
    torch.testing.assert_close(where.source_units[..., 1].double(), u, atol=2e-3, rtol=0)  # column = u
    torch.testing.assert_close(where.source_units[..., 0].double(), v, atol=2e-3, rtol=0)  # row = v
    reference = _release_pe(table, u, v, canvas)
    ours = proj.encode(table, where).double()
    torch.testing.assert_close(ours, reference, atol=1e-4, rtol=1e-4)

    # the test can tell: a half-pixel shift, a view turned by 90 degrees, rows and columns swapped
    shifted = _release_pe(table, *_release_pixels(centres, canvas, t, half_pixel=0.0), canvas)
    turned = _release_pe(table, *_release_pixels(centres, canvas, t, turn=True), canvas)
    swapped = _release_pe(table, *reversed(_release_pixels(centres, canvas, t)), canvas) if grid[0] == grid[1] else None
    for wrong in (shifted, turned, swapped):
        if wrong is not None:
            assert (ours - wrong).abs().max() > 1e-3


@pytest.mark.parametrize("name", sorted(CANVASES))
def test_cells_are_the_release_grid_cells(name):
    proj, _, (canvas, _, _, t, cell) = _projection(name)
    centres = _clouds(seed=2)
    ours = view_cells(proj.positions(centres), cell, canvas)  # (B, M, G)
    u, v = _release_pixels(centres, canvas, t)
    cols = (canvas[1] + cell - 1) // cell
    release = (u / cell).floor().long() + (v / cell).floor().long() * cols
    # the same partition of every (cloud, view): two tokens share a cell in ours iff in the release's
    same_ours = ours.unsqueeze(-1) == ours.unsqueeze(-2)
    same_release = release.unsqueeze(-1) == release.unsqueeze(-2)
    assert torch.equal(same_ours, same_release)
    assert same_release.sum() > same_release[..., 0].numel()  # more pairs than the diagonal: cells are shared


def test_1d_positions_follow_method_formula():
    """1D (docs/method.md#virtual-projection, with the fixes of #release-defects-and-our-fixes): s = (p - centroid) . n_j, min-max per cloud to [0, L-1],
    linear between rows floor(q) and floor(q) + 1, mean over the six face diagonals."""
    L, D = 77, 8
    table = torch.randn(L, D, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    proj = VirtualProjection(PositionTable("1d", (L,)), ProjectionConfig())
    centres = _clouds(seed=4)
    dirs = np.array([[1, 1, 0], [1, -1, 0], [1, 0, 1], [1, 0, -1], [0, 1, 1], [0, 1, -1]], dtype=np.float64)
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    p = centres.double().numpy()
    s = np.einsum("bgj,mj->bmg", p - p.mean(axis=1, keepdims=True), dirs)
    q = (s - s.min(-1, keepdims=True)) / (s.max(-1, keepdims=True) - s.min(-1, keepdims=True)) * (L - 1)
    lo = np.minimum(np.floor(q), L - 2).astype(int)
    f = torch.from_numpy(q - lo).unsqueeze(-1)
    lo = torch.from_numpy(lo)
    reference = (table[lo] * (1 - f) + table[lo + 1] * f).mean(dim=1)
    where = proj.positions(centres)
    torch.testing.assert_close(where.table_coords.double(), torch.from_numpy(q), atol=1e-4, rtol=0)
    torch.testing.assert_close(proj.encode(table.float(), where).double(), reference, atol=1e-5, rtol=1e-5)


def test_the_model_adds_the_release_pe_to_its_tokens():
    torch.manual_seed(0)
    model = any2point.create_model("tiny_2d", num_classes=3, projection={"inject": "input", "translation": -1.4})
    model.eval()
    points = _clouds(b=2, g=256, seed=5)
    with torch.no_grad():
        tokens, centres = model.tokenizer(points)
        x, _ = model.embed(points)
    canvas = model.source.position.canvas
    u, v = _release_pixels(centres, canvas, -1.4)
    pe = _release_pe(model.source.position_table().detach(), u, v, canvas).float()
    torch.testing.assert_close(x[:, 1:] - tokens, pe, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(x[:, 0], (model.cls_token + model.cls_position).expand(2, -1))
