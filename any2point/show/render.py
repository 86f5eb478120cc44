"""One cloud -> the PNG files of every picture, for the command line and for scripts."""
from __future__ import annotations

import io
from pathlib import Path

from matplotlib.figure import Figure

from .figures import plot_cloud, plot_pe, plot_topk, plot_view_weights, plot_views
from .options import PICTURES, ShowOptions
from .scene import Scene, pe_colours
from .trained import Trained

__all__ = ["save_figure", "write_pictures"]


def save_figure(fig: Figure, path: Path, options: ShowOptions) -> Path:
    """PNG at ``options.dpi``; with ``options.palette`` colours (no dithering), which keeps the
    pictures at a third of their size; the octree keeps the few saturated token colours apart"""
    if not options.palette:
        fig.savefig(path, dpi=options.dpi)
        return path
    from PIL import Image  # matplotlib's own dependency

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=options.dpi)
    buffer.seek(0)
    with Image.open(buffer) as image:
        image.convert("RGB").quantize(colors=options.palette, method=Image.Quantize.FASTOCTREE,
                                      dither=Image.Dither.NONE).save(path, optimize=True)
    return path


def write_pictures(scene: Scene, out: str | Path, stem: str, options: ShowOptions | None = None,
                   trained: Trained | None = None) -> list[Path]:
    """Writes ``<stem>_<picture>.png`` into ``out`` for each of ``options.pictures``: ``cloud``,
    ``views``, ``pe`` and, for a trained model, ``weights`` (when it has a guided ensemble) and
    ``topk``."""
    options = options or ShowOptions()
    unknown = sorted(set(options.pictures) - set(PICTURES))
    if unknown:
        raise ValueError(f"unknown pictures {unknown}; known: {list(PICTURES)}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    colours = pe_colours(scene)
    drawings = {"cloud": lambda: plot_cloud(scene, options), "views": lambda: plot_views(scene, options, colours),
                "pe": lambda: plot_pe(scene, options, colours)}
    if trained is not None:
        if trained.weights is not None:
            drawings["weights"] = lambda: plot_view_weights(scene, trained, options)
        drawings["topk"] = lambda: plot_topk(trained, options)
    return [save_figure(drawings[name](), out / f"{stem}_{name}.png", options)
            for name in PICTURES if name in options.pictures and name in drawings]
