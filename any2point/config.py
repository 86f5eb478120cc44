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
import logging
import warnings
from dataclasses import dataclass, field
from typing import Any, Dict

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

from . import checks
from .backbones.registry import source_preset
from .data import DataOptions, check_data_options
from .distributed import ACCELERATORS, BACKENDS, STRATEGIES
from .engine import PRECISIONS
from .errors import ConfigError
from .model import ModelConfig
from .peft import PeftConfig, load_peft_methods
from .run.splits import EVAL_SPLITS
from .tokenizer import NORMALIZE_MODES, check_cloud_size

__all__ = ["job_dirname", "SourceConfig", "DataConfig", "TrainConfig", "TrainerConfig", "TrainAppConfig", "EvalOptions",
           "ExpectConfig", "EvalAppConfig", "register_configs", "check_required", "check_train_settings",
           "check_eval_settings", "check_data_values", "CONFIG_MODULE"]

CONFIG_MODULE = "any2point.conf"

log = logging.getLogger(__name__)


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
    normalize: bool | None = MISSING  # null: the format's default (data/base.yaml)
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

    def __post_init__(self) -> None:
        for key in ("epochs", "batch_size", "eval_batch_size", "val_every"):
            checks.integer(f"train.{key}", getattr(self, key), 1)
        checks.number("train.lr", self.lr, above=0)
        # the schedule: a linear warm-up from warmup_lr up to lr, then a cosine down to min_lr
        checks.number("train.warmup_epochs", self.warmup_epochs, at_least=0)
        checks.number("train.warmup_lr", self.warmup_lr, at_least=0, at_most=self.lr)
        checks.number("train.min_lr", self.min_lr, at_least=0, at_most=self.lr)
        checks.number("train.weight_decay", self.weight_decay, at_least=0)
        if len(self.betas) != 2:
            raise ConfigError(f"train.betas={list(self.betas)} must be two numbers in [0, 1) (AdamW's beta1, beta2)")
        for i, beta in enumerate(self.betas):
            checks.number(f"train.betas[{i}]", beta, at_least=0, below=1)
        if self.grad_clip is not None:
            checks.number("train.grad_clip", self.grad_clip, above=0)
        checks.fraction("train.label_smoothing", self.label_smoothing)


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

    def __post_init__(self) -> None:
        checks.one_of("trainer.accelerator", self.accelerator, ACCELERATORS)
        checks.one_of("trainer.strategy", self.strategy, STRATEGIES)
        checks.one_of("trainer.backend", self.backend, BACKENDS)
        checks.one_of("trainer.precision", self.precision, PRECISIONS)
        checks.integer("trainer.num_workers", self.num_workers, 0)
        checks.optional_integer("trainer.threads", self.threads, 1, "torch's default")


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

    def __post_init__(self) -> None:
        checks.one_of("eval.split", self.split, EVAL_SPLITS)
        checks.integer("eval.batch_size", self.batch_size, 1)
        checks.integer("eval.votes", self.votes, 1)
        if len(self.vote_scale) != 2:
            raise ConfigError(f"eval.vote_scale={list(self.vote_scale)} must be two numbers [low, high]")
        checks.number("eval.vote_scale[0]", self.vote_scale[0], above=0)
        checks.number("eval.vote_scale[1]", self.vote_scale[1], at_least=self.vote_scale[0])
        checks.optional_integer("eval.num_points", self.num_points, 1, "the checkpoint's")
        if self.normalize is not None:
            checks.one_of("eval.normalize", self.normalize, NORMALIZE_MODES)


@dataclass
class ExpectConfig:
    """What the checkpoint must have been trained on; null accepts the checkpoint's (a mismatch fails)."""

    source: str | None = None
    weights_tag: str | None = None


@dataclass
class EvalAppConfig:
    checkpoint: str = MISSING  # a run directory, or a .safetensors / .json checkpoint file
    expect: ExpectConfig = field(default_factory=ExpectConfig)
    weights: str | None = None  # the source's weights file or folder, needed when training read a local copy
    data: DataConfig | None = None  # null: the data config the checkpoint was trained on
    # keys changed in the checkpoint's data config (data.KEY=VALUE without data=NAME lands here)
    data_overrides: Dict[str, Any] = field(default_factory=dict)
    text_weights: str | None = None  # local copy of a contrastive head's text encoder weights
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
    # conf/train.yaml's defaults list: model: ${a2p_preset:${source}} (the source option's preset)
    OmegaConf.register_new_resolver("a2p_preset", source_preset, replace=True)


register_configs()

# Keys whose absence the code that reads them explains better than a generic message.
_EXPLAINED_ELSEWHERE = {"data.root"}


def check_required(cfg: DictConfig) -> None:
    """Fail with the names of required keys (``???``) that are still unset."""
    missing = sorted(k for k in OmegaConf.missing_keys(cfg) if k not in _EXPLAINED_ELSEWHERE)
    if missing:
        raise ConfigError("missing required config values: " + ", ".join(missing)
                         + " (set them on the command line, e.g. " + f"{missing[0]}=...)")


def check_data_values(data: DictConfig) -> DataOptions:
    """The ``data`` section, converted to its format's options (:func:`any2point.data.check_data_options`:
    the keys every format shares, then the format's own); nothing is read. The run reads the
    options returned, so the section is converted once."""
    return check_data_options(data)


def _build_sections(cfg: DictConfig, sections: tuple[str, ...]) -> dict[str, Any]:
    """Each typed section of a composed config as its dataclass: building it runs the
    dataclass's ``__post_init__``, which refuses a bad value by its full key."""
    return {key: OmegaConf.to_object(cfg[key]) for key in sections if cfg.get(key) is not None}


def check_train_settings(cfg: DictConfig) -> DataOptions:
    """Refuse any value of a composed training config that cannot give a meaningful run, naming
    its key, before any data is read: the model, peft, train and trainer sections build as
    their dataclasses, the data section is checked, then the rules across sections. Returns
    the data section as its format's options (the run reads these, not ``cfg.data``)."""
    built = _build_sections(cfg, ("model", "peft", "train", "trainer"))
    data = check_data_values(cfg.data)
    train: TrainConfig = built["train"]
    model: ModelConfig = built["model"]
    check_cloud_size(model.tokenizer, data.num_points)  # one rule with the tokenizer's own check
    if train.batch_size < 2 and model.head.hidden:
        raise ConfigError(f"train.batch_size={train.batch_size} must be at least 2: the head's BatchNorm layers "
                          f"(model.head.hidden={list(model.head.hidden)}) need two samples per training batch")
    if train.warmup_epochs > train.epochs:
        log.warning("train.warmup_epochs=%s is longer than train.epochs=%s: the learning rate never reaches "
                    "train.lr=%s", train.warmup_epochs, train.epochs, train.lr)
    from .heads import get_head

    selection = data.class_selection()
    if selection is not None and selection.unseen and not get_head(model.head.name).open_vocabulary:
        raise ConfigError("data.classes.eval holds out unseen classes, which only a head that scores classes by their "
                          f"names can classify; set model.head.name=contrastive (got {model.head.name!r})")
    return data


def check_eval_settings(cfg: DictConfig) -> None:
    """The same for a composed evaluation config: its eval and trainer sections, and its data
    section when one is chosen (null: the checkpoint's, checked when the checkpoint is read)."""
    _build_sections(cfg, ("eval", "trainer"))
    if cfg.data is not None:
        check_data_values(cfg.data)
