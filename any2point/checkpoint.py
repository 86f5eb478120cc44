"""Checkpoints: only what trained, in safetensors, plus a JSON that can rebuild the model.

Layout of a checkpoint ``<stem>``:

- ``<stem>.safetensors``: the trained tensors (:func:`trained_state_dict`);
- ``<stem>.json``: how to rebuild the rest: the source (name, pretrained, weights, options,
  and the ``weights_tag`` it loaded), the model and peft configs, the class names, the
  number of points, the resolved run config and the any2point version.

"Only what trained" is every state-dict entry outside ``source.`` (tokenizer, cls, adapters,
norm, head and their BatchNorm buffers), plus the ``source.`` entries whose parameters have
``requires_grad`` (LoRA, full fine-tuning), plus the whole source when its weights are
``random`` (random weights cannot be re-created from a name).

The resumable training state (``last.pt``: trained tensors, optimizer, scheduler, epoch, RNG
states, best-validation tracking) is written with the same atomic replace.
"""
from __future__ import annotations

import dataclasses
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import torch
from omegaconf import OmegaConf
from safetensors.torch import load_file, save_file

from .errors import CheckpointMismatchError
from .model import Any2PointModel, ModelConfig
from .peft import PeftConfig, peft_config
from .registry import create_source

__all__ = ["CHECKPOINT", "BEST_VAL", "TRAINING_STATE", "FORMAT", "trained_state_dict", "trained_keys",
           "build_model", "save_checkpoint", "load_checkpoint", "LoadedCheckpoint", "resolve_checkpoint",
           "read_checkpoint_info", "atomic_write", "save_training_state", "load_training_state"]

CHECKPOINT = "checkpoint"  # the final model: checkpoint.safetensors + checkpoint.json
BEST_VAL = "best_val"  # best epoch on the validation split (never chosen on test)
TRAINING_STATE = "last.pt"  # everything needed to resume, rewritten after every epoch
FORMAT = 1
_UMASK = os.umask(0o022)
os.umask(_UMASK)


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


# ----------------------------------------------------------------------------- building

def _source_kwargs(source: Mapping[str, Any]) -> dict:
    kwargs = dict(source.get("options") or {})
    if source.get("weights"):
        kwargs["weights"] = str(source["weights"])
    return kwargs


def build_model(source: Mapping[str, Any], num_classes: int, model: ModelConfig | Mapping[str, Any],
                peft: PeftConfig | Mapping[str, Any]) -> Any2PointModel:
    """An Any2Point model from config sections: ``source`` (name, pretrained, weights, options),
    ``model`` (a ModelConfig or its dict) and ``peft`` (a PeftConfig or its dict)."""
    if not isinstance(model, ModelConfig):
        model = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(ModelConfig), OmegaConf.create(dict(model))))
    peft = peft_config(peft)  # the method's own config dataclass, chosen by peft["name"]
    built = create_source(str(source["name"]), pretrained=bool(source.get("pretrained", True)),
                          **_source_kwargs(source))
    return Any2PointModel(built, num_classes, model, peft)


# ----------------------------------------------------------------------------- files

def atomic_write(path: Path, write: Callable[[str], None]) -> None:
    """``write(tmp_path)`` then ``os.replace`` onto ``path``: readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600 files; give the usual permissions
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _atomic_text(path: Path, text: str) -> None:
    def write(tmp: str) -> None:
        with open(tmp, "w") as f:
            f.write(text)

    atomic_write(path, write)


def _jsonable(value: Any) -> Any:
    if dataclasses.is_dataclass(value):
        return dataclasses.asdict(value)
    if OmegaConf.is_config(value):
        return OmegaConf.to_container(value, resolve=True)
    return value


def save_checkpoint(model: Any2PointModel, stem: str | Path, *, source: Mapping[str, Any], class_names: list[str],
                    num_points: int, config: Any = None, extra: Mapping[str, Any] | None = None) -> Path:
    """Write ``<stem>.safetensors`` and ``<stem>.json``; returns the safetensors path.

    ``source``: the source section used to build the model (name, pretrained, weights, options)."""
    from . import __version__

    stem = Path(stem)
    tensors = trained_state_dict(model)
    info = {
        "format": FORMAT,
        "any2point_version": __version__,
        "source": {"name": str(source["name"]), "pretrained": bool(source.get("pretrained", True)),
                   "weights": source.get("weights"), "options": dict(source.get("options") or {}),
                   "weights_tag": model.source.weights_tag},
        "model": _jsonable(model.config),
        "peft": _jsonable(model.peft_config),
        "class_names": list(class_names),
        "num_points": int(num_points),
        "tensors": len(tensors),
        **dict(extra or {}),
        "config": _jsonable(config),
    }
    weights = stem.with_name(stem.name + ".safetensors")
    atomic_write(weights, lambda tmp: save_file(tensors, tmp, metadata={"format": str(FORMAT)}))
    _atomic_text(stem.with_name(stem.name + ".json"), json.dumps(info, indent=2, default=str) + "\n")
    return weights


def resolve_checkpoint(path: str | Path) -> Path:
    """The ``.safetensors`` file of a checkpoint given as a run directory, a ``.safetensors``
    or a ``.json`` path."""
    p = Path(os.path.expanduser(str(path)))
    if p.is_dir():
        candidate = p / f"{CHECKPOINT}.safetensors"
        if not candidate.is_file():
            raise FileNotFoundError(f"no {CHECKPOINT}.safetensors in the run directory {p} (has the run finished? "
                                    f"pass a checkpoint file such as {p / (BEST_VAL + '.safetensors')} instead)")
        return candidate
    if p.suffix == ".json":
        p = p.with_suffix(".safetensors")
    if p.suffix != ".safetensors":
        raise ValueError(f"a checkpoint is a run directory, a .safetensors or a .json file, got {path}")
    if not p.is_file():
        raise FileNotFoundError(f"checkpoint not found: {p}")
    if not p.with_suffix(".json").is_file():
        raise FileNotFoundError(f"checkpoint {p} has no {p.with_suffix('.json').name} beside it (it says how to "
                                f"rebuild the model)")
    return p


def read_checkpoint_info(path: str | Path) -> dict:
    weights = resolve_checkpoint(path)
    info = json.loads(weights.with_suffix(".json").read_text())
    if info.get("format") != FORMAT:
        raise CheckpointMismatchError(f"{weights.with_suffix('.json')}: checkpoint format {info.get('format')!r}, "
                                      f"this any2point reads format {FORMAT}")
    return info


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


def _check_expectations(info: dict, path: Path, source: str | None, weights_tag: str | None,
                        class_names: list[str] | None) -> None:
    saved = info["source"]
    if source is not None and source != saved["name"]:
        raise CheckpointMismatchError(f"{path} was trained on source {saved['name']!r}, not {source!r}")
    if weights_tag is not None and weights_tag != saved["weights_tag"]:
        raise CheckpointMismatchError(f"{path} was trained on {saved['name']} weights {saved['weights_tag']!r}, "
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
                    map_location: str | torch.device = "cpu") -> LoadedCheckpoint:
    """Rebuild the model a checkpoint was trained as and load its tensors.

    ``source`` / ``weights_tag`` / ``class_names``: what the caller expects; any difference
    raises :class:`CheckpointMismatchError` saying which. ``weights``: a local copy of the
    source's weights when they are no longer where the checkpoint says. ``model_overrides``:
    model sections to change (e.g. ``{"tokenizer": {"normalize": "modelnet"}}``); they must
    not change tensor shapes."""
    weights_path = resolve_checkpoint(path)
    info = read_checkpoint_info(weights_path)
    _check_expectations(info, weights_path, source, weights_tag, class_names)
    saved = info["source"]
    source_cfg = dict(saved)
    if weights is not None:
        source_cfg["weights"] = weights
    if saved["weights_tag"] == "random":
        source_cfg["pretrained"] = False  # the checkpoint holds the whole source
    model_cfg = OmegaConf.merge(OmegaConf.structured(ModelConfig), OmegaConf.create(info["model"]))
    if model_overrides:
        model_cfg = OmegaConf.merge(model_cfg, OmegaConf.create({k: dict(v) for k, v in model_overrides.items()}))
    model = build_model(source_cfg, len(info["class_names"]), OmegaConf.to_object(model_cfg), info["peft"])
    if model.source.weights_tag != saved["weights_tag"]:
        raise CheckpointMismatchError(
            f"{weights_path} was trained on {saved['name']} weights {saved['weights_tag']!r} but they now load as "
            f"{model.source.weights_tag!r}; point source.weights (eval: weights=...) at the weights used in training")

    tensors = load_file(str(weights_path), device=str(map_location))
    expected = trained_keys(model)
    missing, unexpected = sorted(expected - set(tensors)), sorted(set(tensors) - expected)
    if missing or unexpected:
        raise CheckpointMismatchError(
            f"{weights_path} does not fit the model it describes: missing {missing[:8]}"
            f"{' ...' if len(missing) > 8 else ''}, unexpected {unexpected[:8]}{' ...' if len(unexpected) > 8 else ''}")
    try:
        model.load_state_dict(tensors, strict=False)  # the key sets were compared above
    except RuntimeError as exc:  # shape mismatches
        raise CheckpointMismatchError(f"{weights_path}: tensors do not fit the model: {exc}") from exc
    model.to(map_location)
    return LoadedCheckpoint(model=model.eval(), info=info, path=weights_path)


# ----------------------------------------------------------------------------- resumable state

def save_training_state(path: str | Path, state: dict) -> None:
    """Atomically write the resumable state (torch.save to a temporary file, then os.replace)."""
    atomic_write(Path(path), lambda tmp: torch.save(state, tmp))


def load_training_state(path: str | Path) -> dict | None:
    p = Path(path)
    if not p.is_file():
        return None
    return torch.load(p, map_location="cpu", weights_only=False)
