"""any2point: make any frozen pretrained transformer a 3D point-cloud classifier by
training under 1 % of its parameters (Any2Point, arXiv 2404.07989)."""
from .backbones.registry import create_source, get_source_spec, list_sources, register_source
from .factory import create_model, model_config
from .params import parameter_report

__version__ = "0.1.0"

__all__ = ["register_source", "list_sources", "create_source", "get_source_spec", "create_model", "model_config",
           "parameter_report"]
