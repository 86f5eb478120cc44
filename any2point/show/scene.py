"""The data behind the pictures of one cloud, computed by the model's own functions.

Nothing here re-derives the geometry: token centres come from the model's tokenizer, view
positions from its projection (``model.views.positions``), cells from the adapters' own
``view_cells`` with the model's cell size, and the PE from ``model.views.encode`` reading the
source's table. A change to any of those shows up in the pictures as it does in training.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import torch

from any2point.adapters import view_cells
from any2point.model import Any2PointModel
from any2point.peft import guided_adapters

from .inputs import as_points

__all__ = ["Scene", "PEColours", "compute_scene", "pe_colours"]


@dataclass(frozen=True)
class Scene:
    """One cloud as the source sees it (numpy arrays; M views, G tokens, D width).

    ``positions``: (M, G, 2) canvas pixels as (row, col) for a 2D source, (M, G) table rows
    for a 1D source. ``cells``: (M, G) the cell of each token in each view, numbered within
    the view as the adapters number them. ``view_pe``: (M, G, D) what each token reads from
    the table in each view; ``pe``: (G, D) what it receives (the model's mean over views).
    ``table``: the source's position table, (L, D) rows or (R, C, D) grid."""

    source: str
    kind: str
    points: np.ndarray
    centres: np.ndarray
    positions: np.ndarray
    cells: np.ndarray
    cell_size: float
    view_pe: np.ndarray
    pe: np.ndarray
    table: np.ndarray
    canvas: tuple[int, int] | None = None  # 2D: (height, width) pixels
    patch: tuple[int, int] | None = None  # 2D: (height, width) pixels per table entry
    length: int | None = None  # 1D: table rows the lines span
    view_labels: tuple[str, ...] = ()
    pe_note: str = ""  # set when the model does not add this PE to its tokens (ablations)

    @property
    def views(self) -> int:
        return int(self.cells.shape[0])

    @property
    def used_table(self) -> np.ndarray:
        """The part of the table the views can reach: the first ``length`` rows, or the grid."""
        return self.table[: self.length] if self.kind == "1d" else self.table


def _view_labels(model: Any2PointModel, kind: str, views: int) -> tuple[str, ...]:
    """Short names of the views for titles: a 1D line's direction, a 2D view's number."""
    directions = getattr(model.views, "directions", None) if kind == "1d" else None
    if directions is None:
        return tuple(f"view {m + 1}" for m in range(views))
    return tuple(f"view {m + 1}: ({', '.join(f'{c:+.2f}' for c in d.tolist())})" for m, d in enumerate(directions))


def _pe_note(model: Any2PointModel) -> str:
    projection = model.config.projection
    if projection.inject == "none":
        return "not added by this model (projection.inject=none)"
    if projection.kind != "virtual":
        return f"not added by this model (projection.kind={projection.kind}: it learns its own)"
    return ""


@torch.no_grad()
def compute_scene(model: Any2PointModel, cloud: np.ndarray | torch.Tensor) -> Scene:
    """Everything the pictures show for one (N, 3) cloud, from ``model`` in eval mode."""
    model.eval()
    points = as_points(cloud).to(next(model.parameters()).device)
    _, centres = model.tokenizer(points)
    where = model.views.positions(centres)
    position = model.source.position
    adapters = guided_adapters(model)
    if adapters is not None:  # the model's own cell assignment
        cells = adapters.view_cells(where)  # (1, M, G)
    else:  # a method without guided adapters: the cells the adapter's settings would give
        cells = view_cells(where, model.config.adapter.cell, position.canvas, getattr(model.views, "length", None))
    table = model.source.position_table()
    views = cells.shape[1]
    view_pe = torch.stack([
        model.views.encode(table, dataclasses.replace(where, source_units=where.source_units[:, m:m + 1],
                                                      table_coords=where.table_coords[:, m:m + 1]))[0]
        for m in range(views)])  # (M, G, D): the mean over one view is that view's reading
    pe = model.views.encode(table, where)[0]
    units = where.source_units[0]
    kind = where.kind
    return Scene(
        source=model.source.name, kind=kind,
        points=points[0].cpu().numpy(), centres=centres[0].float().cpu().numpy(),
        positions=(units if kind == "2d" else units[..., 0]).float().cpu().numpy(),
        cells=cells[0].cpu().numpy(), cell_size=float(model.config.adapter.cell),
        view_pe=view_pe.float().cpu().numpy(), pe=pe.float().cpu().numpy(), table=table.float().cpu().numpy(),
        canvas=tuple(position.canvas) if position.canvas else None,
        patch=tuple(position.patch) if position.patch else None,
        length=getattr(model.views, "length", None) if kind == "1d" else None,
        view_labels=_view_labels(model, kind, views), pe_note=_pe_note(model))


@dataclass(frozen=True)
class PEColours:
    """PE vectors as RGB in [0, 1]: the first three principal components of the PE the tokens
    read in all views (one basis for every view, the mean and the table), each scaled by its
    range over the reachable table (every sampled PE interpolates table entries, so it stays
    inside that range)."""

    views: np.ndarray  # (M, G, 3)
    mean: np.ndarray  # (G, 3)
    table: np.ndarray  # (L, 3) or (R, C, 3): the reachable table
    explained: np.ndarray  # (3,) share of the sampled PE's variance each component carries


def pe_colours(scene: Scene) -> PEColours:
    sampled = scene.view_pe.reshape(-1, scene.view_pe.shape[-1]).astype(np.float64)
    centre = sampled.mean(axis=0)
    _, s, vt = np.linalg.svd(sampled - centre, full_matrices=False)
    basis = vt[:3]
    if basis.shape[0] < 3:  # a width under 3 (never for a real source): pad with zero components
        basis = np.vstack([basis, np.zeros((3 - basis.shape[0], basis.shape[1]))])
    # SVD signs are arbitrary: make each component's largest loading positive, so colours are stable
    signs = np.sign(basis[np.arange(3), np.abs(basis).argmax(axis=1)])
    basis = basis * np.where(signs == 0, 1.0, signs)[:, None]
    table = scene.used_table.astype(np.float64)
    project = lambda x: (x - centre) @ basis.T  # noqa: E731
    table_pc = project(table.reshape(-1, table.shape[-1]))
    lo, hi = table_pc.min(axis=0), table_pc.max(axis=0)
    scale = lambda pc: np.clip((pc - lo) / np.where(hi > lo, hi - lo, 1.0), 0.0, 1.0)  # noqa: E731
    variance = s ** 2
    explained = np.zeros(3)
    explained[: min(3, len(s))] = (variance / variance.sum())[:3] if variance.sum() > 0 else 0.0
    return PEColours(views=scale(project(scene.view_pe)), mean=scale(project(scene.pe)),
                     table=scale(table_pc).reshape(*table.shape[:-1], 3), explained=explained)
