"""One cloud -> the PNG files of every picture, for the command line and for scripts."""
from __future__ import annotations

from pathlib import Path

from matplotlib.figure import Figure

from .figures import plot_cloud, plot_pe, plot_topk, plot_view_weights, plot_views
from .options import ShowOptions
from .scene import Scene, pe_colours
from .trained import Trained

__all__ = ["save_figure", "write_pictures"]


def save_figure(fig: Figure, path: Path, options: ShowOptions) -> Path:
    fig.savefig(path, dpi=options.dpi)
    return path


def write_pictures(scene: Scene, out: str | Path, stem: str, options: ShowOptions | None = None,
                   trained: Trained | None = None) -> list[Path]:
    """Writes ``<stem>_cloud.png``, ``_views.png``, ``_pe.png`` and, for a trained model,
    ``_weights.png`` (when it has a guided ensemble) and ``_topk.png`` into ``out``."""
    options = options or ShowOptions()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    colours = pe_colours(scene)
    written = [save_figure(plot_cloud(scene, options), out / f"{stem}_cloud.png", options),
               save_figure(plot_views(scene, options, colours), out / f"{stem}_views.png", options),
               save_figure(plot_pe(scene, options, colours), out / f"{stem}_pe.png", options)]
    if trained is not None:
        if trained.weights is not None:
            written.append(save_figure(plot_view_weights(scene, trained, options), out / f"{stem}_weights.png",
                                       options))
        written.append(save_figure(plot_topk(trained, options), out / f"{stem}_topk.png", options))
    return written
