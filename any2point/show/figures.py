"""The pictures, as matplotlib Figures (no pyplot, no display: they save anywhere, and a
notebook shows a returned Figure as it is).

Each function draws one ``Scene`` (and ``Trained``) and nothing else: the colours of tokens
come from ``cell_colours(scene.cells)`` and ``pe_colours(scene)``, so what a picture shows is
the data the model computed.
"""
from __future__ import annotations

import colorsys
import math

import numpy as np
from matplotlib import colormaps
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from .options import ShowOptions
from .scene import PEColours, Scene, pe_colours
from .trained import Trained

__all__ = ["cell_colours", "plot_cloud", "plot_views", "plot_pe", "plot_view_weights", "plot_topk"]

_GOLDEN = (math.sqrt(5) - 1) / 2


def cell_colours(cells: np.ndarray) -> np.ndarray:
    """RGBA (..., 4) per cell id: hues spread by the golden ratio, so cells with nearby ids
    (neighbours along a line or a row of the canvas) get clearly different colours."""
    ids = np.asarray(cells, dtype=np.int64)
    hue = np.mod(ids * _GOLDEN, 1.0)
    value = np.where(ids % 2 == 0, 0.95, 0.7)
    rgb = np.array([colorsys.hsv_to_rgb(h, 0.85, v) for h, v in zip(hue.ravel(), value.ravel())]).reshape(*ids.shape, 3)
    return np.concatenate([rgb, np.ones((*ids.shape, 1))], axis=-1)


def _axes_3d(fig: Figure, rows: int, cols: int, k: int, scene: Scene, options: ShowOptions, title: str,
             detailed: bool = False):
    ax = fig.add_subplot(rows, cols, k, projection="3d")
    ax.view_init(elev=options.elev, azim=options.azim)
    ax.set_box_aspect((1, 1, 1))
    extent = float(np.abs(scene.points).max()) or 1.0
    for set_lim in (ax.set_xlim, ax.set_ylim, ax.set_zlim):
        set_lim(-extent, extent)
    ax.set_title(title, fontsize=9)
    if detailed:
        ax.tick_params(labelsize=6, pad=0)
    else:  # small panels: the shape matters, not the coordinates
        ax.set_xticklabels([])
        ax.set_yticklabels([])
        ax.set_zticklabels([])
    return ax


def plot_cloud(scene: Scene, options: ShowOptions | None = None) -> Figure:
    """The cloud from a fixed camera, with its token centres."""
    options = options or ShowOptions()
    fig = Figure(figsize=(5, 5))
    ax = _axes_3d(fig, 1, 1, 1, scene, options,
                  f"{len(scene.points)} points, {len(scene.centres)} token centres", detailed=True)
    p, c = scene.points, scene.centres
    ax.scatter(p[:, 0], p[:, 1], p[:, 2], s=options.point_size, c="0.55", alpha=0.5, depthshade=False,
               label="points")
    ax.scatter(c[:, 0], c[:, 1], c[:, 2], s=options.token_size, c="tab:red", edgecolors="k", linewidths=0.3,
               depthshade=False, label="token centres")
    ax.set_xlabel("x", fontsize=7)
    ax.set_ylabel("y", fontsize=7)
    ax.set_zlabel("z", fontsize=7)
    ax.legend(loc="upper left", fontsize=7)
    fig.tight_layout()
    return fig


def _title(scene: Scene) -> str:
    if scene.kind == "2d":
        rows, cols = scene.table.shape[:2]
        return (f"{scene.source}: six views on the {scene.canvas[0]}x{scene.canvas[1]} px canvas, "
                f"{rows}x{cols} table patches (thin lines, PE as colour), cells of {scene.cell_size:g} px "
                f"(dashed); tokens coloured by cell")
    return (f"{scene.source}: tokens along six lines over rows 0-{scene.length - 1} of the {len(scene.table)}-row "
            f"table (PE as colour), segments of {scene.cell_size:g} rows; tokens coloured by segment")


def _plot_views_2d(fig: Figure, scene: Scene, colours: PEColours, options: ShowOptions) -> None:
    H, W = scene.canvas
    ph, pw = scene.patch
    rows, cols = scene.table.shape[:2]
    grid_w, grid_h = cols * pw, rows * ph  # the patches' extent (the canvas, for every source here)
    cell_rgba = cell_colours(scene.cells)
    for m in range(scene.views):
        ax = fig.add_subplot(2, math.ceil(scene.views / 2), m + 1)
        ax.imshow(colours.table, extent=(0, grid_w, grid_h, 0), alpha=0.45, interpolation="nearest")
        ax.vlines(np.arange(0, grid_w + 1, pw), 0, grid_h, colors="white", linewidths=0.25)
        ax.hlines(np.arange(0, grid_h + 1, ph), 0, grid_w, colors="white", linewidths=0.25)
        g = scene.cell_size
        ax.vlines(np.arange(0, W + 1e-6, g), 0, H, colors="0.2", linewidths=0.4, linestyles="dashed")
        ax.hlines(np.arange(0, H + 1e-6, g), 0, W, colors="0.2", linewidths=0.4, linestyles="dashed")
        row, col = scene.positions[m, :, 0], scene.positions[m, :, 1]
        ax.scatter(col, row, c=cell_rgba[m], s=options.token_size, edgecolors="k", linewidths=0.3, zorder=3)
        ax.set_xlim(0, W)
        ax.set_ylim(H, 0)
        ax.set_aspect("equal")
        ax.set_title(f"{scene.view_labels[m]}: {len(np.unique(scene.cells[m]))} cells occupied", fontsize=8)
        ax.tick_params(labelsize=6)


def _plot_views_1d(fig: Figure, scene: Scene, colours: PEColours, options: ShowOptions) -> None:
    ax = fig.add_subplot(1, 1, 1)
    L, M = scene.length, scene.views
    strip = colours.table[None]  # (1, L, 3)
    cell_rgba = cell_colours(scene.cells)
    jitter = ((np.arange(scene.cells.shape[1]) % 5) - 2) * 0.07  # spread tokens that share a position
    for m in range(M):
        ax.imshow(strip, extent=(-0.5, L - 0.5, m + 0.35, m - 0.35), aspect="auto", alpha=0.55,
                  interpolation="nearest")
        ax.vlines(np.arange(0, L + 1e-6, scene.cell_size) - 0.5, m - 0.35, m + 0.35, colors="0.25", linewidths=0.4)
        ax.scatter(scene.positions[m], m + jitter, c=cell_rgba[m], s=options.token_size, edgecolors="k",
                   linewidths=0.3, zorder=3)
    ax.set_xlim(-0.5, L - 0.5)
    ax.set_ylim(M - 0.5, -0.5)
    ax.set_yticks(range(M), labels=[f"{label}\n{len(np.unique(scene.cells[m]))} segments"
                                    for m, label in enumerate(scene.view_labels)], fontsize=7)
    ax.set_xlabel("position-table row", fontsize=8)
    ax.tick_params(axis="x", labelsize=7)


def plot_views(scene: Scene, options: ShowOptions | None = None, colours: PEColours | None = None) -> Figure:
    """The six views: where each token lands in the source's position space, coloured by cell."""
    options = options or ShowOptions()
    colours = colours or pe_colours(scene)
    if scene.kind == "2d":
        aspect = scene.canvas[0] / scene.canvas[1]
        fig = Figure(figsize=(11, 7.6 * aspect + 0.6))
        _plot_views_2d(fig, scene, colours, options)
    else:
        fig = Figure(figsize=(11, 0.8 * scene.views + 1.2))
        _plot_views_1d(fig, scene, colours, options)
    fig.suptitle(_title(scene), fontsize=9)
    fig.tight_layout()
    return fig


def plot_pe(scene: Scene, options: ShowOptions | None = None, colours: PEColours | None = None) -> Figure:
    """The PE on the cloud: what each token reads in each view and the mean it receives, as the
    first three principal components (one basis for all panels)."""
    options = options or ShowOptions()
    colours = colours or pe_colours(scene)
    M = scene.views
    cols = math.ceil((M + 1) / 2)
    fig = Figure(figsize=(3 * cols, 6.4))
    c = scene.centres
    panels = [(scene.view_labels[m].split(":")[0], colours.views[m]) for m in range(M)]
    panels.append(("received: mean over views", colours.mean))
    for k, (title, rgb) in enumerate(panels):
        ax = _axes_3d(fig, 2, cols, k + 1, scene, options, title)
        ax.scatter(c[:, 0], c[:, 1], c[:, 2], c=rgb, s=options.token_size, edgecolors="k", linewidths=0.2,
                   depthshade=False)
    share = ", ".join(f"{100 * e:.0f}%" for e in colours.explained)
    fig.suptitle(f"{scene.source}: position encoding of each token as RGB = first 3 principal components "
                 f"({share} of the variance)" + (f"; {scene.pe_note}" if scene.pe_note else ""), fontsize=9)
    fig.tight_layout()
    return fig


def plot_view_weights(scene: Scene, trained: Trained, options: ShowOptions | None = None) -> Figure:
    """Per-token weights w_j of the guided ensemble in one block, and the view each token trusts most."""
    options = options or ShowOptions()
    if trained.weights is None:
        raise ValueError(f"no view weights to show: {trained.note}")
    w = trained.weights  # (G, M)
    M = w.shape[1]
    cols = math.ceil((M + 1) / 2)
    fig = Figure(figsize=(3 * cols + 1, 6.4), layout="constrained")
    c = scene.centres
    equal = 1.0 / M  # the weight of every view when the views agree equally with the 3D reference
    span = max(float(np.abs(w - equal).max()), 1e-6)
    image = None
    for m in range(M):
        ax = _axes_3d(fig, 2, cols, m + 1, scene, options, f"w of {scene.view_labels[m].split(':')[0]}")
        image = ax.scatter(c[:, 0], c[:, 1], c[:, 2], c=w[:, m], cmap="coolwarm", vmin=equal - span,
                           vmax=equal + span, s=options.token_size, edgecolors="k", linewidths=0.2, depthshade=False)
    ax = _axes_3d(fig, 2, cols, M + 1, scene, options, "most trusted view")
    best = w.argmax(axis=1)
    ax.scatter(c[:, 0], c[:, 1], c[:, 2], c=best, cmap="tab10", vmin=-0.5, vmax=9.5, s=options.token_size,
               edgecolors="k", linewidths=0.2, depthshade=False)
    palette = colormaps["tab10"]
    ax.legend(handles=[Line2D([], [], marker="o", linestyle="", color=palette(m), label=f"view {m + 1}")
                       for m in range(M)], fontsize=6, loc="upper left")
    fig.colorbar(image, ax=fig.axes[:M], shrink=0.6, label=f"w_j (sum 1 over views; {equal:.3f} = equal trust)")
    top = ", ".join(f"{name} {100 * p:.1f}%" for name, p in trained.topk[:3])
    fig.suptitle(f"{scene.source}: view weights of the guided ensemble in block {trained.block}; "
                 f"predicted {top}", fontsize=9)
    return fig


def plot_topk(trained: Trained, options: ShowOptions | None = None) -> Figure:
    """The top-k classes and their probabilities."""
    names = [name for name, _ in trained.topk][::-1]
    probs = [100 * p for _, p in trained.topk][::-1]
    fig = Figure(figsize=(5, 0.35 * len(names) + 1.0))
    ax = fig.add_subplot(1, 1, 1)
    ax.barh(names, probs, color="tab:blue")
    for y, p in enumerate(probs):
        ax.text(p, y, f" {p:.1f}%", va="center", fontsize=8)
    ax.set_xlim(0, 100)
    ax.set_xlabel("probability (%)", fontsize=8)
    ax.tick_params(labelsize=8)
    ax.set_title(f"top {len(names)} classes", fontsize=9)
    fig.tight_layout()
    return fig
