"""See what the source sees: pictures of the virtual projection, the cells and the view
weights for any cloud and any registered source (``any2point-show``).

From Python (a notebook shows the returned matplotlib Figures)::

    from any2point import show
    model = show.model_from_overrides(["source=dinov2", "source.pretrained=false"])
    scene = show.compute_scene(model, show.read_cloud("chair.off", 1024))
    show.plot_views(scene)
"""
from .figures import cell_colours, plot_cloud, plot_pe, plot_topk, plot_view_weights, plot_views
from .inputs import compose_train_config, load_trained, model_from_config, model_from_overrides, read_cloud
from .options import PICTURES, ShowOptions
from .page import write_page
from .render import write_pictures
from .scene import PEColours, Scene, compute_scene, pe_colours
from .trained import Trained, ViewWeights, run_trained, view_weights

__all__ = ["ShowOptions", "PICTURES", "Scene", "PEColours", "Trained", "ViewWeights", "compute_scene", "pe_colours",
           "run_trained", "view_weights", "cell_colours", "plot_cloud", "plot_views", "plot_pe", "plot_view_weights",
           "plot_topk", "write_pictures", "write_page", "read_cloud", "compose_train_config", "model_from_config",
           "model_from_overrides", "load_trained"]
