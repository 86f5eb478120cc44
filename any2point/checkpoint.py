"""The checkpoint format: only what trained, in safetensors, plus a JSON that can rebuild the model.

Layout of a checkpoint ``<stem>``:

- ``<stem>.safetensors``: the trained tensors (:func:`trained_state_dict`);
- ``<stem>.json``: how to rebuild the rest: the source (name, pretrained, weights, options,
  and the ``weights_tag`` it loaded), the model and peft configs, the class names, the
  number of points, the resolved run config and the any2point version.

"Only what trained" is every state-dict entry outside ``source.`` (tokenizer, cls, adapters,
norm, head and their BatchNorm buffers), plus the ``source.`` entries whose parameters have
``requires_grad`` (LoRA, full fine-tuning), plus the whole source when its weights are
``random`` (random weights cannot be re-created from a name).

A checkpoint may come from someone else, so reading one runs nothing: the JSON is plain data
checked field by field against :data:`INFO_FIELDS` (unknown keys refused by name, no
OmegaConf interpolation: a string holding ``${`` is refused), the tensors are safetensors.
Every problem is a :class:`CheckpointError` naming the file and what to do.
"""
from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import torch
from omegaconf import OmegaConf
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from .atomic import atomic_write, atomic_write_json
from .config import check_tokenizer_fits
from .errors import Any2PointError, CheckpointError, CheckpointMismatchError, CheckpointNotFoundError, ConfigError
from .factory import create_model
from .heads import HeadConfig
from .model import Any2PointModel, ModelConfig
from .peft import peft_config
from .plain_data import PlainDataError, check_type, from_plain, refuse_interpolations

__all__ = ["CHECKPOINT", "BEST_VAL", "FORMAT", "INFO_FIELDS", "OPTIONAL_INFO_FIELDS", "SourceInfo",
           "trained_state_dict", "trained_keys", "save_checkpoint", "load_checkpoint",
           "LoadedCheckpoint", "resolve_checkpoint", "read_checkpoint_info"]

CHECKPOINT = "checkpoint"  # the final model: checkpoint.safetensors + checkpoint.json
BEST_VAL = "best_val"  # best epoch on the validation split (never chosen on test)
FORMAT = 1
MAX_INFO_BYTES = 16 << 20  # a checkpoint.json is a few KB; a larger one is refused before it is read
MAX_NUM_POINTS = 1 << 20  # points per cloud a checkpoint may ask for (the paper's runs: 1,024)


@dataclass
class SourceInfo:
    """The source section of ``checkpoint.json``."""

    name: str
    pretrained: bool
    weights: str | None  # where the weights were read from in training (read only, never written)
    options: dict[str, Any]
    weights_tag: str


# checkpoint.json: every key with its type (ModelConfig checked field by field; ``peft`` by the
# config dataclass of the method its ``name`` selects, in parse_checkpoint_info).
INFO_FIELDS: dict[str, Any] = {
    "format": int, "any2point_version": str, "source": SourceInfo, "model": ModelConfig, "peft": dict[str, Any],
    "class_names": list[str], "num_points": int, "tensors": int, "config": dict[str, Any] | None,
}
# Keys a writer may add (``save_checkpoint(extra=...)``).
OPTIONAL_INFO_FIELDS: dict[str, Any] = {
    "epoch": int, "val_oa": float | None, "val_macc": float | None, "metrics": dict[str, Any],
    "unseen_class_names": list[str],  # a zero-shot run's held-out classes (data.classes.eval)
}


# ----------------------------------------------------------------------------- what trained

def _source_fully_saved(model: Any2PointModel) -> bool:
    return getattr(model.source, "weights_tag", None) == "random"


def trained_keys(model: Any2PointModel, state: Mapping[str, torch.Tensor] | None = None) -> set[str]:
    """State-dict keys a checkpoint of ``model`` holds."""
    state = model.state_dict() if state is None else state
    if _source_fully_saved(model):
        return set(state)
    trainable_source = {f"source.{name}" for name, p in model.source.named_parameters(remove_duplicate=False)
                        if p.requires_grad}
    return {k for k in state if not k.startswith("source.") or k in trainable_source}


def trained_state_dict(model: Any2PointModel) -> dict[str, torch.Tensor]:
    """The trained tensors of ``model`` (detached CPU copies, shared tensors duplicated)."""
    state = model.state_dict()
    keys = trained_keys(model, state)
    return {k: v.detach().to("cpu", copy=True).contiguous() for k, v in state.items() if k in keys}


# ----------------------------------------------------------------------------- writing

def _jsonable(value: Any) -> Any:
    if dataclasses.is_dataclass(value):
        return dataclasses.asdict(value)
    if OmegaConf.is_config(value):
        return OmegaConf.to_container(value, resolve=True)
    return value


def _without_local_paths(model_config: ModelConfig) -> ModelConfig:
    """The model config as a checkpoint records it: the text encoder by name, never where its
    weights were on this machine (``model.head.text_weights``; given again where it is used)."""
    return dataclasses.replace(model_config, head=dataclasses.replace(model_config.head, text_weights=None))


def _run_config_without_local_paths(config: Any) -> Any:
    config = _jsonable(config)
    head = ((config or {}).get("model") or {}).get("head") if isinstance(config, dict) else None
    if isinstance(head, dict) and head.get("text_weights") is not None:
        head["text_weights"] = None
    return config


def save_checkpoint(model: Any2PointModel, stem: str | Path, *, source: Mapping[str, Any], class_names: list[str],
                    num_points: int, config: Any = None, extra: Mapping[str, Any] | None = None) -> Path:
    """Write ``<stem>.safetensors`` and ``<stem>.json``; returns the safetensors path.

    ``source``: the source section used to build the model (name, pretrained, weights, options);
    ``extra``: keys of :data:`OPTIONAL_INFO_FIELDS` (epoch, validation accuracy, metrics)."""
    from . import __version__

    unknown = sorted(set(extra or {}) - set(OPTIONAL_INFO_FIELDS))
    if unknown:
        raise ValueError(f"unknown checkpoint.json keys {unknown}; known extras: {sorted(OPTIONAL_INFO_FIELDS)}")
    stem = Path(stem)
    tensors = trained_state_dict(model)
    info = {
        "format": FORMAT,
        "any2point_version": __version__,
        "source": {"name": str(source["name"]), "pretrained": bool(source.get("pretrained", True)),
                   "weights": None if source.get("weights") is None else str(source["weights"]),
                   "options": dict(source.get("options") or {}), "weights_tag": model.source.weights_tag},
        "model": _jsonable(_without_local_paths(model.config)),
        "peft": _jsonable(model.peft_config),
        "class_names": list(class_names),
        "num_points": int(num_points),
        "tensors": len(tensors),
        **dict(extra or {}),
        "config": _run_config_without_local_paths(config),
    }
    weights = stem.with_name(stem.name + ".safetensors")
    atomic_write(weights, lambda tmp: save_file(tensors, tmp, metadata={"format": str(FORMAT)}))
    atomic_write_json(stem.with_name(stem.name + ".json"), info)
    return weights


# ----------------------------------------------------------------------------- reading

def resolve_checkpoint(path: str | Path) -> Path:
    """The ``.safetensors`` file of a checkpoint given as a run directory, a ``.safetensors``
    or a ``.json`` path."""
    p = Path(os.path.expanduser(str(path)))
    if p.is_dir():
        candidate = p / f"{CHECKPOINT}.safetensors"
        if not candidate.is_file():
            raise CheckpointNotFoundError(f"no {CHECKPOINT}.safetensors in the run directory {p} (has the run finished? "
                                  f"pass a checkpoint file such as {p / (BEST_VAL + '.safetensors')} instead)")
        return candidate
    if p.suffix == ".json":
        p = p.with_suffix(".safetensors")
    if p.suffix != ".safetensors":
        raise CheckpointError(f"a checkpoint is a run directory, a .safetensors or a .json file, got {path}")
    if not p.is_file():
        raise CheckpointNotFoundError(f"checkpoint not found: {p}")
    if not p.with_suffix(".json").is_file():
        raise CheckpointNotFoundError(f"checkpoint {p} has no {p.with_suffix('.json').name} beside it (it says how to "
                              f"rebuild the model)")
    return p


_REDO = "copy the checkpoint again from where it was made, or retrain"


def parse_checkpoint_info(text: str, where: str) -> dict:
    """``checkpoint.json`` text -> its checked fields (``model``/``peft`` as dataclasses,
    ``source`` as :class:`SourceInfo`). Raises :class:`CheckpointError` naming ``where``."""
    try:
        raw = json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
        raise CheckpointError(f"{where} is not valid JSON ({exc}); {_REDO}") from None
    if not isinstance(raw, dict):
        raise CheckpointError(f"{where} must hold a JSON object, got {type(raw).__name__}; {_REDO}")
    if raw.get("format") != FORMAT:
        raise CheckpointMismatchError(f"{where}: checkpoint format {raw.get('format')!r:.40}, this any2point reads "
                                      f"format {FORMAT}")
    _upgrade_head(raw)
    fields = {**INFO_FIELDS, **OPTIONAL_INFO_FIELDS}
    unknown = sorted(set(raw) - set(fields))
    missing = sorted(set(INFO_FIELDS) - set(raw))
    try:
        if unknown:
            raise PlainDataError(f"unknown keys {unknown}")
        if missing:
            raise PlainDataError(f"missing keys {missing}")
        refuse_interpolations(raw, "checkpoint")
        info = {key: check_type(value, fields[key], key) for key, value in raw.items()}
        if not info["class_names"] or len(set(info["class_names"])) != len(info["class_names"]):
            raise PlainDataError("class_names: expected a non-empty list of distinct names")
        if not 1 <= info["num_points"] <= MAX_NUM_POINTS:
            raise PlainDataError(f"num_points: expected a count in [1, {MAX_NUM_POINTS}], got {info['num_points']}")
        try:  # a checkpoint whose tokenizer cannot group its own clouds would fail deep in predict
            check_tokenizer_fits(info["model"].tokenizer, info["num_points"], where="num_points")
        except ConfigError as exc:
            raise PlainDataError(str(exc)) from None
        try:  # interpolations were refused above: the method's typed config sees plain data only
            info["peft"] = peft_config(info["peft"])
        except ValueError as exc:
            raise PlainDataError(f"peft: {exc}") from None
    except PlainDataError as exc:
        raise CheckpointError(f"{where} is not a valid any2point checkpoint description: {exc}; {_REDO}") from None
    except RecursionError:
        raise CheckpointError(f"{where} is nested too deeply to be a checkpoint description; {_REDO}") from None
    return info


def _upgrade_head(raw: dict) -> None:
    """Checkpoints written before heads were registered units hold ``model.head`` as
    ``{hidden, dropout}`` only: that head is today's classifier with its defaults (same tensors)."""
    head = raw.get("model", {}).get("head") if isinstance(raw.get("model"), dict) else None
    if isinstance(head, dict) and set(head) == {"hidden", "dropout"}:
        raw["model"]["head"] = {**dataclasses.asdict(HeadConfig()), **head}


def _read_info(weights_path: Path) -> dict:
    json_path = weights_path.with_suffix(".json")
    try:
        size = json_path.stat().st_size
        if size > MAX_INFO_BYTES:
            raise CheckpointError(f"{json_path} is {size} bytes, more than the {MAX_INFO_BYTES} a checkpoint "
                                  f"description can be; {_REDO}")
        text = json_path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"cannot read {json_path}: {exc}") from None
    return parse_checkpoint_info(text, str(json_path))


def read_checkpoint_info(path: str | Path) -> dict:
    """The ``checkpoint.json`` of a checkpoint as plain JSON data, after every check of
    :func:`parse_checkpoint_info`."""
    return info_as_plain(_read_info(resolve_checkpoint(path)))


def info_as_plain(info: Mapping[str, Any]) -> dict:
    """A checked info dict back to plain JSON data (dataclasses as dicts)."""
    return {k: dataclasses.asdict(v) if dataclasses.is_dataclass(v) else v for k, v in info.items()}


def _tensor_header(path: Path) -> dict[str, tuple[str, list[int]]]:
    """Names, dtypes and shapes in a safetensors file (the header only: nothing is loaded)."""
    try:
        with safe_open(str(path), framework="pt") as f:
            return {k: (str(f.get_slice(k).get_dtype()), list(f.get_slice(k).get_shape())) for k in f.keys()}
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"{path} is not a readable safetensors file ({exc}); it may be truncated or "
                              f"damaged: {_REDO}") from None


@dataclass
class LoadedCheckpoint:
    model: Any2PointModel
    info: dict
    path: Path

    @property
    def class_names(self) -> list[str]:
        return list(self.info["class_names"])

    @property
    def num_points(self) -> int:
        return int(self.info["num_points"])

    @property
    def unseen_class_names(self) -> list[str]:
        """A zero-shot run's held-out classes (empty for other runs)."""
        return list(self.info.get("unseen_class_names") or [])


def _check_expectations(info: dict, path: Path, source: str | None, weights_tag: str | None,
                        class_names: list[str] | None) -> None:
    saved: SourceInfo = info["source"]
    if source is not None and source != saved.name:
        raise CheckpointMismatchError(f"{path} was trained on source {saved.name!r}, not {source!r}")
    if weights_tag is not None and weights_tag != saved.weights_tag:
        raise CheckpointMismatchError(f"{path} was trained on {saved.name} weights {saved.weights_tag!r}, "
                                      f"not {weights_tag!r}")
    if class_names is not None and list(class_names) != list(info["class_names"]):
        theirs, ours = list(info["class_names"]), list(class_names)
        missing, extra = [c for c in theirs if c not in ours], [c for c in ours if c not in theirs]
        if missing or extra:
            detail = (f"classes only in the checkpoint: {missing}; " if missing else "") + \
                     (f"classes only in the data: {extra}" if extra else "")
        else:
            first = next(i for i, (a, b) in enumerate(zip(theirs, ours)) if a != b)
            detail = f"same classes in another order (position {first}: {theirs[first]!r} vs {ours[first]!r})"
        raise CheckpointMismatchError(f"class list differs from {path} ({len(theirs)} classes) vs the data "
                                      f"({len(ours)} classes): {detail.rstrip('; ')}")


def load_checkpoint(path: str | Path, *, source: str | None = None, weights_tag: str | None = None,
                    class_names: list[str] | None = None, weights: str | None = None,
                    model_overrides: Mapping[str, Mapping[str, Any]] | None = None,
                    map_location: str | torch.device = "cpu", text_weights: str | None = None) -> LoadedCheckpoint:
    """Rebuild the model a checkpoint was trained as and load its tensors.

    ``source`` / ``weights_tag`` / ``class_names``: what the caller expects; any difference
    raises :class:`CheckpointMismatchError` saying which. ``weights``: a local copy of the
    source's weights when they are no longer where the checkpoint says. ``model_overrides``:
    model sections to change (e.g. ``{"tokenizer": {"normalize": "modelnet"}}``); they must
    not change tensor shapes. ``text_weights``: a local copy of the contrastive head's text
    encoder weights (a checkpoint names the encoder, never where its weights are); the head
    checks that it gives the training classes' embeddings the run trained with. ``info`` of
    the result is plain JSON data."""
    weights_path = resolve_checkpoint(path)
    info = _read_info(weights_path)
    _check_expectations(info, weights_path, source, weights_tag, class_names)
    header = _tensor_header(weights_path)  # a damaged file fails before any model is built
    saved: SourceInfo = info["source"]
    options = dict(saved.options)
    if weights is not None or saved.weights:
        options["weights"] = str(weights if weights is not None else saved.weights)
    model_cfg: ModelConfig = info["model"]
    model_cfg = dataclasses.replace(model_cfg, head=dataclasses.replace(model_cfg.head, text_weights=text_weights))
    for section, values in (model_overrides or {}).items():
        if not hasattr(model_cfg, section):
            raise ValueError(f"unknown model section {section!r} in model_overrides")
        model_cfg = dataclasses.replace(model_cfg, **{section: dataclasses.replace(getattr(model_cfg, section),
                                                                                   **dict(values))})
    try:
        model = create_model(saved.name, len(info["class_names"]),
                             pretrained=saved.pretrained and saved.weights_tag != "random",  # random: all saved
                             peft=info["peft"], source_options=options, model=model_cfg)
    except Any2PointError:
        raise
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{weights_path.with_suffix('.json')} describes a model that cannot be built: "
                              f"{exc}") from None
    if model.source.weights_tag != saved.weights_tag:
        raise CheckpointMismatchError(
            f"{weights_path} was trained on {saved.name} weights {saved.weights_tag!r} but they now load as "
            f"{model.source.weights_tag!r}; point source.weights (eval: weights=...) at the weights used in training")

    expected = trained_keys(model)
    missing, unexpected = sorted(expected - set(header)), sorted(set(header) - expected)
    if missing or unexpected:
        raise CheckpointMismatchError(
            f"{weights_path} does not fit the model it describes: missing {missing[:8]}"
            f"{' ...' if len(missing) > 8 else ''}, unexpected {unexpected[:8]}{' ...' if len(unexpected) > 8 else ''}")
    state = model.state_dict()
    wrong = [f"{k} {shape} (model: {list(state[k].shape)})" for k, (_, shape) in header.items()
             if list(state[k].shape) != shape]
    if wrong:
        raise CheckpointMismatchError(f"{weights_path}: tensors do not fit the model: {', '.join(wrong[:8])}")
    try:
        tensors = load_file(str(weights_path), device=str(map_location))
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"{weights_path} could not be read ({exc}); {_REDO}") from None
    model.load_state_dict(tensors, strict=False)  # key sets and shapes were compared above
    model.to(map_location)
    model.head.restore_classes(info["class_names"], where=str(weights_path))
    return LoadedCheckpoint(model=model.eval(), info=info_as_plain(info), path=weights_path)
