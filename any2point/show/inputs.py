"""Where the pictures' inputs come from: a cloud read from a file, a model built from the train
config (plus the user's overrides) or loaded from a checkpoint.

Every import from other parts of the package that may move (file readers, checkpoint
format, model builder) happens here and nowhere else in ``any2point.show``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from omegaconf import DictConfig

from any2point.checkpoint import LoadedCheckpoint, load_checkpoint
from any2point.data import read_points
from any2point.factory import create_model_from_config
from any2point.model import Any2PointModel

__all__ = ["read_cloud", "compose_train_config", "model_from_config", "model_from_overrides", "load_trained",
           "LoadedCheckpoint", "as_points"]

# The head is never run without a checkpoint (the pictures need no logits): any class count does.
_UNTRAINED_CLASSES = 1


def read_cloud(path: str | Path, num_points: int, seed: int = 0) -> np.ndarray:
    """(num_points, 3) float32, centred and scaled to the unit sphere, as any2point-predict reads it."""
    return read_points(path, num_points=num_points, seed=seed)


def compose_train_config(overrides: Sequence[str] = ()) -> DictConfig:
    """The training app's config (``conf/train.yaml``) with command-line style ``overrides``,
    composed with Hydra's compose API as ``any2point-train`` composes it (``source.name=...``
    chooses its model preset: :func:`any2point.hydra_app.source_preset_overrides`): a misspelt
    key fails here with its name."""
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    import any2point.config  # noqa: F401  (registers the structured schemas the train config names)
    from any2point.hydra_app import refuse_old_spellings, source_preset_overrides

    GlobalHydra.instance().clear()
    try:
        with initialize_config_module(config_module=any2point.config.CONFIG_MODULE, version_base="1.3"):
            return compose("train", overrides=source_preset_overrides(refuse_old_spellings(list(overrides))))
    finally:
        GlobalHydra.instance().clear()


def model_from_config(cfg: DictConfig) -> Any2PointModel:
    """The model a training run of ``cfg`` would start from (source weights as configured). Seeded
    with ``cfg.seed`` first, so random weights (test sources, ``source.pretrained=false``) and
    therefore the pictures are the same from run to run."""
    torch.manual_seed(int(cfg.seed))
    model = create_model_from_config(cfg, _UNTRAINED_CLASSES)
    return model.eval()


def model_from_overrides(overrides: Sequence[str] = ()) -> Any2PointModel:
    """Shortcut for notebooks: ``model_from_overrides(["source=dinov2", "source.pretrained=false"])``."""
    return model_from_config(compose_train_config(overrides))


def load_trained(path: str | Path, model_overrides: dict | None = None, weights: str | None = None) -> LoadedCheckpoint:
    """A trained run's checkpoint on the CPU; ``model_overrides`` change settings that keep tensor
    shapes (e.g. ``{"adapter": {"cell": 16}}``)."""
    loaded = load_checkpoint(path, weights=weights, model_overrides=model_overrides, map_location="cpu")
    loaded.model.eval()
    return loaded


def as_points(cloud: np.ndarray | torch.Tensor) -> torch.Tensor:
    """One cloud (N, 3) -> a batch of one (1, N, 3) float32 tensor."""
    points = torch.as_tensor(np.asarray(cloud, dtype=np.float32))
    if points.dim() != 2 or points.shape[-1] != 3:
        raise ValueError(f"a cloud must be (N, 3) points, got shape {tuple(points.shape)}")
    return points.unsqueeze(0)
