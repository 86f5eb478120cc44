"""Structured-config schemas of the Hydra apps, registered in Hydra's ConfigStore.

``conf/train.yaml`` and ``conf/eval.yaml`` start their defaults lists with ``train_schema`` /
``eval_schema``, so every composed config is typed: a misspelt key or a value of the wrong
type fails at start-up with the key's name. Importing this module registers the schemas
(the apps import it; so must code that composes the configs with Hydra's compose API).

- ``model`` is :class:`any2point.model.ModelConfig` itself; ``peft`` is typed by the chosen
  method's own config dataclass (a subclass of :class:`any2point.peft.PeftConfig`, stored in
  the ConfigStore when the method registers), so the schema follows the model code.
- ``data`` is strict and typed for the keys every dataset config has; dataset-specific keys
  (``samples_per_class``, ``variant``, ``mesh_points``, ...) are accepted as they are, but a
  key that the chosen data config does not define still cannot be set by an override.
"""
from __future__ import annotations

import hashlib
import warnings
from dataclasses import dataclass, field
from typing import Any, Dict

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

from .errors import ConfigError
from .model import ModelConfig
from .peft import PeftConfig, load_peft_methods

__all__ = ["job_dirname", "SourceConfig", "DataConfig", "TrainConfig", "TrainerConfig", "TrainAppConfig", "EvalOptions",
           "ExpectConfig", "EvalAppConfig", "register_configs", "check_required", "check_train_settings",
           "CONFIG_MODULE"]

CONFIG_MODULE = "any2point.conf"


@dataclass
class SourceConfig:
    name: str = MISSING
    pretrained: bool = True
    weights: str | None = None  # local file or folder of the source's weights
    options: dict[str, Any] = field(default_factory=dict)  # extra arguments of the source's factory


# OmegaConf's way to type some keys of a node and accept others is a structured config that
# subclasses Dict; it warns that this may change in a later major version (omegaconf#663).
warnings.filterwarnings("ignore", message="Class `DataConfig` subclasses `Dict`", category=UserWarning)


@dataclass
class DataConfig(Dict[str, Any]):
    """The keys every dataset config defines (all required); dataset-specific keys pass through."""

    name: str = MISSING
    format: str = MISSING
    root: str | None = MISSING
    num_points: int = MISSING
    val_fraction: float = MISSING
    class_names: list[str] | None = MISSING
    normalize: bool = MISSING
    up_axis: str = MISSING
    protocol: dict[str, Any] = MISSING
    augment: list[dict[str, Any]] | None = MISSING
    cache: bool = MISSING
    cache_dir: str | None = MISSING


@dataclass
class TrainConfig:
    epochs: int = 300
    batch_size: int = 32  # per process
    eval_batch_size: int = 64
    lr: float = 5e-4
    min_lr: float = 1e-6
    warmup_epochs: float = 10.0
    warmup_lr: float = 1e-6
    weight_decay: float = 0.05
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    grad_clip: float | None = 10.0  # max gradient norm; null: no clipping
    label_smoothing: float = 0.0
    val_every: int = 1  # validate every N epochs (and always after the last)
    resume: bool = True  # continue from <run dir>/last.safetensors when it exists


@dataclass
class TrainerConfig:
    name: str = "cpu"
    accelerator: str = "cpu"  # cpu | cuda | auto
    strategy: str = "single"  # single | ddp
    backend: str = "auto"  # auto | gloo | nccl
    precision: str = "32"  # 32 | bf16 (CUDA autocast)
    num_workers: int = 0
    threads: int | None = None
    deterministic: bool = True
    progress: bool = True
    compile: bool = False  # torch.compile the training forward (the saved/evaluated model stays eager)
    activation_checkpointing: bool = False  # recompute tokenizer stages, blocks+adapters in backward: less memory
    reuse_host_memory: bool = True  # glibc: recycle freed activation memory (any2point.runtime)
    host_memory_budget_mb: int | None = None  # with reuse_host_memory: resident MB kept; null: half the machine


@dataclass
class TrainAppConfig:
    source: SourceConfig = field(default_factory=SourceConfig)
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    peft: PeftConfig = field(default_factory=PeftConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    seed: int = 0


@dataclass
class EvalOptions:
    split: str = "auto"  # auto (test if the data has one, else val) | test | val | train
    batch_size: int = 64
    votes: int = 1  # > 1: average the softmax of the plain pass and votes - 1 rescaled passes
    vote_scale: list[float] = field(default_factory=lambda: [0.85, 1.15])  # per-axis scale range of the voting passes
    num_points: int | None = None  # null: the checkpoint's
    normalize: str | None = None  # tokenizer offset normalisation (scan | modelnet); null: the checkpoint's


@dataclass
class ExpectConfig:
    """What the checkpoint must have been trained on; null accepts the checkpoint's (a mismatch fails)."""

    source: str | None = None
    weights_tag: str | None = None


@dataclass
class EvalAppConfig:
    checkpoint: str = MISSING  # a run directory, or a .safetensors / .json checkpoint file
    expect: ExpectConfig = field(default_factory=ExpectConfig)
    weights: str | None = None  # local copy of the source weights if they moved since training
    data: DataConfig | None = None  # null: the data config the checkpoint was trained on
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    eval: EvalOptions = field(default_factory=EvalOptions)
    seed: int | None = None  # null: the training seed (it decides the validation split)


def job_dirname(overrides: str, limit: int = 120) -> str:
    """A sweep job's folder name from its overrides (``hydra.job.override_dirname``): slashes
    become ``_`` (no nested folders) and a name longer than ``limit`` is cut and given a short
    hash of the whole, so that many overrides never exceed the file-name limit."""
    name = overrides.replace("/", "_").replace("\\", "_")
    if len(name) <= limit:
        return name
    return f"{name[:limit - 9]}~{hashlib.sha1(overrides.encode()).hexdigest()[:8]}"


def register_configs() -> None:
    cs = ConfigStore.instance()
    cs.store(name="train_schema", node=TrainAppConfig)
    cs.store(name="eval_schema", node=EvalAppConfig)
    load_peft_methods()  # third-party methods become options of the peft group
    OmegaConf.register_new_resolver("a2p_dirname", job_dirname, replace=True)


register_configs()

# Keys whose absence the code that reads them explains better than a generic message.
_EXPLAINED_ELSEWHERE = {"data.root"}


def check_required(cfg: DictConfig) -> None:
    """Fail with the names of required keys (``???``) that are still unset."""
    missing = sorted(k for k in OmegaConf.missing_keys(cfg) if k not in _EXPLAINED_ELSEWHERE)
    if missing:
        raise ConfigError("missing required config values: " + ", ".join(missing)
                         + " (set them on the command line, e.g. " + f"{missing[0]}=...)")


def _tokenizer_pools(tokenizer, num_points: int) -> list[int]:
    """How many points each tokenizer stage groups from: the cloud, then the previous stage's
    centres (null centres halve the count per stage, as ``PointTokenizer.centres_for``)."""
    centres = list(tokenizer.centres) if tokenizer.centres is not None else \
        [num_points >> (i + 1) for i in range(int(tokenizer.stages))]
    return [num_points] + centres[:-1]


def check_tokenizer_fits(tokenizer, num_points: int, where: str = "data.num_points") -> None:
    """Refuse a tokenizer ``k`` outside [1, the fewest points a stage groups], naming the key."""
    k = tokenizer.k
    pools = _tokenizer_pools(tokenizer, num_points)
    if k <= 0 or k > min(pools):
        raise ConfigError(f"model.tokenizer.k={k} must be between 1 and the fewest points a tokenizer stage groups "
                          f"({min(pools)}: stages group {pools} points with {where}={num_points})")


def check_train_settings(cfg: DictConfig) -> None:
    """Refuse settings that cannot give a meaningful run, naming the key, before any data is read."""
    t = cfg.train
    for key in ("epochs", "batch_size", "eval_batch_size", "val_every"):
        if t[key] is None or t[key] <= 0:
            raise ConfigError(f"train.{key} must be a positive integer, got {t[key]}")
    if not t.lr > 0:
        raise ConfigError(f"train.lr must be positive, got {t.lr}")
    num_points = cfg.data.num_points
    if num_points is None or num_points <= 0:
        raise ConfigError(f"data.num_points must be a positive integer, got {num_points}")
    check_tokenizer_fits(cfg.model.tokenizer, int(num_points))
