"""The checkpoint format: only what trained, in safetensors, plus a JSON that can rebuild the model.

Layout of a checkpoint ``<stem>``:

- ``<stem>.safetensors``: the trained tensors (:func:`trained_state_dict`);
- ``<stem>.json``: how to rebuild the rest: the source (name, pretrained, options, the
  ``weights_tag`` it loaded and the ``weights_sha256`` identity of the weights file(s)), the
  model and peft configs, the class names, the number of points, the resolved run config, the
  any2point version and the SHA-256 of the ``.safetensors`` file written with it
  (``tensors_sha256``).

The two files are replaced one after the other, so a run killed between the two renames
leaves a new ``.safetensors`` beside the previous ``.json``: the digest tells the pair apart,
and :func:`load_checkpoint` refuses a pair whose tensors are not the ones its JSON describes.

"Only what trained" is every state-dict entry outside ``source.`` (tokenizer, cls, the PEFT
method's parts, norm, head and their BatchNorm buffers), plus the ``source.`` entries whose parameters have
``requires_grad`` (LoRA, full fine-tuning), plus the whole source when its weights are
``random`` (random weights cannot be re-created from a name).

A checkpoint may come from someone else, so reading one runs nothing: the JSON is plain data
checked field by field against :data:`INFO_FIELDS` (unknown keys refused by name, no
OmegaConf interpolation: a string holding ``${`` is refused), the tensors are safetensors.
Every problem is a :class:`CheckpointError` naming the file and what to do.

A checkpoint records which weights its source was trained on (name, tag, SHA-256), never where
to read them: a source trained on a local weights file (tag ``file:<name>``, or an ``hf:``
folder) is rebuilt only from weights the user passes (``weights=``), and their digest must be the
recorded one. Official weights (an installed package, the verified hub cache) need no path. An
older checkpoint's ``source.weights`` path is ignored, never followed.
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import torch
from omegaconf import OmegaConf
from safetensors import SafetensorError, safe_open
from safetensors.torch import load as load_safetensors

from .alloc_budget import MAX_CREATIONS, AllocationBudget
from .atomic import atomic_write_json, atomic_write_safetensors
from .errors import (Any2PointError, CheckpointError, CheckpointMismatchError, CheckpointNotFoundError, ConfigError,
                     WeightsUnavailableError)
from .factory import create_model
from .heads import HeadConfig
from .backbones.registry import create_source
from .model import Any2PointModel, ModelConfig
from .peft import peft_config
from .plain_data import PlainDataError, check_type, refuse_interpolations
from .recorded import settings_as_today
from .tokenizer import check_cloud_size

__all__ = ["CHECKPOINT", "BEST_VAL", "FORMAT", "INFO_FIELDS", "OPTIONAL_INFO_FIELDS", "SourceInfo",
           "trained_state_dict", "trained_keys", "save_checkpoint", "load_checkpoint",
           "LoadedCheckpoint", "resolve_checkpoint", "read_checkpoint_info", "current_state_key"]

CHECKPOINT = "checkpoint"  # the final model: checkpoint.safetensors + checkpoint.json
BEST_VAL = "best_val"  # best epoch on the validation split (never chosen on test)
FORMAT = 1
MAX_INFO_BYTES = 16 << 20  # a checkpoint.json is a few KB; a larger one is refused before it is read
MAX_NUM_POINTS = 1 << 20  # points per cloud a checkpoint may ask for (the paper's runs: 1,024)
_SHA256 = re.compile(r"[0-9a-f]{64}")
_MAX_NAME_CHARS = 512  # a source name or weights tag (hf:/a/long/folder/path included)


@dataclass
class SourceInfo:
    """The source section of ``checkpoint.json``."""

    name: str
    pretrained: bool
    options: dict[str, Any]
    weights_tag: str
    # SHA-256 identity of the weights file(s) the source loaded (any2point.backbones.weights); None for
    # random weights, a source that records none, or a checkpoint older than the field
    weights_sha256: str | None


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
# Written by every save; a checkpoint written before the digest was recorded lacks it.
DIGEST_FIELD = "tensors_sha256"


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

    ``source``: the source section used to build the model (name, pretrained, options; a
    ``weights`` path in it is not recorded: the source's weights identity is);
    ``extra``: keys of :data:`OPTIONAL_INFO_FIELDS` (epoch, validation accuracy, metrics)."""
    from . import __version__

    unknown = sorted(set(extra or {}) - set(OPTIONAL_INFO_FIELDS))
    if unknown:
        raise ValueError(f"unknown checkpoint.json keys {unknown}; known extras: {sorted(OPTIONAL_INFO_FIELDS)}")
    stem = Path(stem)
    tensors = trained_state_dict(model)
    options = {k: v for k, v in dict(source.get("options") or {}).items() if k != "weights"}  # a path: never recorded
    info = {
        "format": FORMAT,
        "any2point_version": __version__,
        "source": {"name": str(source["name"]), "pretrained": bool(source.get("pretrained", True)),
                   "options": options, "weights_tag": model.source.weights_tag,
                   "weights_sha256": getattr(model.source, "weights_sha256", None)},
        "model": _jsonable(_without_local_paths(model.config)),
        "peft": _jsonable(model.peft_config),
        "class_names": list(class_names),
        "num_points": int(num_points),
        "tensors": len(tensors),
        **dict(extra or {}),
        "config": _run_config_without_local_paths(config),
    }
    weights = stem.with_name(stem.name + ".safetensors")
    info[DIGEST_FIELD] = atomic_write_safetensors(weights, tensors, {"format": str(FORMAT)})
    atomic_write_json(stem.with_name(stem.name + ".json"), info)  # after the tensors: see the module docstring
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
    fields = {**INFO_FIELDS, **OPTIONAL_INFO_FIELDS, DIGEST_FIELD: str}
    if isinstance(raw.get("source"), dict):  # older checkpoints: a weights path (ignored), no digest
        source = {k: v for k, v in raw["source"].items() if k != "weights"}
        source.setdefault("weights_sha256", None)
        raw = {**raw, "source": source}
    unknown = sorted(set(raw) - set(fields))
    missing = sorted(set(INFO_FIELDS) - set(raw))
    try:
        if unknown:
            raise PlainDataError(f"unknown keys {unknown}")
        if missing:
            raise PlainDataError(f"missing keys {missing}")
        refuse_interpolations(raw, "checkpoint")
        _settings_as_today(raw)
        try:  # the model section builds as ModelConfig, whose sections refuse bad values by key
            info = {key: check_type(value, fields[key], key) for key, value in raw.items()}
        except ConfigError as exc:
            raise PlainDataError(str(exc)) from None
        digest = info["source"].weights_sha256
        if digest is not None and not _SHA256.fullmatch(digest):
            raise PlainDataError(f"source.weights_sha256: expected 64 lowercase hex digits, got {digest!r:.80}")
        recorded = info.get(DIGEST_FIELD)
        if recorded is not None and not _SHA256.fullmatch(recorded):
            raise PlainDataError(f"{DIGEST_FIELD}: expected 64 lowercase hex digits, got {recorded!r:.80}")
        for key in ("name", "weights_tag"):
            text = getattr(info["source"], key)
            if not 0 < len(text) <= _MAX_NAME_CHARS or not text.isprintable():
                raise PlainDataError(f"source.{key}: expected 1 to {_MAX_NAME_CHARS} printable characters, got "
                                     f"{text!r:.80}")
        if "weights" in info["source"].options:
            raise PlainDataError("source.options.weights: a checkpoint never names weights to read (pass them "
                                 "explicitly: --weights / weights=)")
        if not info["class_names"] or len(set(info["class_names"])) != len(info["class_names"]):
            raise PlainDataError("class_names: expected a non-empty list of distinct names")
        if not 1 <= info["num_points"] <= MAX_NUM_POINTS:
            raise PlainDataError(f"num_points: expected a count in [1, {MAX_NUM_POINTS}], got {info['num_points']}")
        try:  # a checkpoint whose tokenizer cannot group its own clouds would fail deep in predict
            check_cloud_size(info["model"].tokenizer, info["num_points"], where="num_points")
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


def _settings_as_today(raw: dict) -> None:
    """A checkpoint's ``model.adapter`` and ``peft`` sections as today's settings of the same run
    (:func:`any2point.recorded.settings_as_today`, in place): before the post-LN seam existed the
    aggregation sat after the output LayerNorm (``after_norm``); ``peft.name=adapter`` and
    ``model.adapter.guided`` (removed in issue 27) are the method they are today. Its tensors
    are renamed on loading (:data:`_RENAMED_KEYS`)."""
    model, peft = raw.get("model"), raw.get("peft")
    adapter = model.get("adapter") if isinstance(model, dict) else None
    if not (isinstance(adapter, dict) and isinstance(peft, dict)):
        return
    recorded = {**{f"model.adapter.{k}": v for k, v in adapter.items()}, **{f"peft.{k}": v for k, v in peft.items()}}
    today = settings_as_today(recorded)
    if "model.adapter.guided" in today:
        raise PlainDataError(f"model.adapter.guided=false with peft={peft.get('name')} "
                             f"(bottlenecks only, a setting removed in issue 27) has no equivalent method")
    adapter.clear()
    adapter.update({k[len("model.adapter."):]: v for k, v in today.items() if k.startswith("model.adapter.")})
    peft.clear()
    peft.update({k[len("peft."):]: v for k, v in today.items() if k.startswith("peft.")})


# State-dict keys a method's parts were saved under before a rename, per method (today's name):
# (old key pattern, its key now). The bottleneck baseline's bottlenecks were
# ``adapters.blocks.<i>.bottleneck.*`` before issue 27, ``bottlenecks.<i>.*`` since.
_RENAMED_KEYS = {"bottleneck": ((re.compile(r"adapters\.blocks\.(\d+)\.bottleneck\."), r"bottlenecks.\1."),)}


def current_state_key(method: str, key: str) -> str:
    """State-dict ``key`` saved by a model of ``method`` (today's name) as today's model names it."""
    for old, new in _RENAMED_KEYS.get(method, ()):
        if old.match(key):
            return old.sub(new, key, count=1)
    return key


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


def _read_described_tensors(weights_path: Path, info: dict) -> dict[str, torch.Tensor]:
    """The tensors of ``weights_path``, read once and checked against the digest its JSON
    recorded: a file replaced after the JSON was read, or a pair left by a save killed between
    its two renames, is refused rather than loaded under another file's description."""
    try:
        data = weights_path.read_bytes()
    except OSError as exc:
        raise CheckpointError(f"{weights_path} could not be read ({exc}); {_REDO}") from None
    recorded = info.get(DIGEST_FIELD)
    if recorded is not None and hashlib.sha256(data).hexdigest() != recorded:
        raise CheckpointError(f"{weights_path} is not the tensors file {weights_path.with_suffix('.json').name} "
                              f"describes (its SHA-256 differs from the one recorded when the pair was written: a "
                              f"save was interrupted between the two files, or one of them was replaced); use a "
                              f"pair written together (rerun the training to rewrite it)")
    try:
        return load_safetensors(data)
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"{weights_path} could not be read ({exc}); {_REDO}") from None


_CONSTRUCTION_SLACK = 256 << 20  # bytes the model may create beyond its checkpoint's tensors (buffers, tables)


def _header_bytes(header: Mapping[str, tuple[str, list[int]]]) -> int:
    total = 0
    for dtype, shape in header.values():
        count = 1
        for d in shape:
            count *= d
        total += count * _ITEM_BYTES.get(dtype.replace("torch.", "").lower(), 8)
    return total


_ITEM_BYTES = {"bool": 1, "uint8": 1, "int8": 1, "float16": 2, "bfloat16": 2, "int16": 2, "float32": 4, "int32": 4,
               "float64": 8, "int64": 8, "complex64": 8, "complex128": 16}


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


def _needs_weights(saved: SourceInfo) -> str | None:
    """Why rebuilding ``saved`` needs weights the user passes (None when it does not): a local
    weights file in training, or an ``hf:`` folder (the name is never opened)."""
    digest = f"SHA-256 {saved.weights_sha256}" if saved.weights_sha256 else "no digest recorded"
    local = saved.pretrained and saved.weights_tag.startswith("file:")
    if saved.name.startswith("hf:"):
        from .backbones.hf import names_folder

        if names_folder(saved.name[len("hf:"):]):
            return ("the local transformers folder " + (f"{saved.weights_tag[len('file:'):]!r} ({digest})" if local
                                                       else "(its config.json; random weights)"))
    if local:
        return f"the local weights file {saved.weights_tag[len('file:'):]!r} ({digest})"
    return None


def _check_weights_identity(saved: SourceInfo, model: Any2PointModel, path: Path, given: str | None) -> None:
    """The weights just loaded are the ones of training: same SHA-256 when both are known, else
    the same ``weights_tag``."""
    recorded, now = saved.weights_sha256, getattr(model.source, "weights_sha256", None)
    if recorded is not None and now is not None and model.source.weights_tag != "random":
        if recorded != now:
            where = (f"the weights given ({given})" if given is not None
                     else f"the weights found ({model.source.weights_tag})")
            raise CheckpointMismatchError(
                f"{path} was trained on {saved.name} weights with SHA-256 {recorded}, but {where} have SHA-256 {now}; "
                f"pass the weights used in training (--weights / weights=)")
        return
    if model.source.weights_tag != saved.weights_tag:
        raise CheckpointMismatchError(
            f"{path} was trained on {saved.name} weights {saved.weights_tag!r} but they now load as "
            f"{model.source.weights_tag!r}; pass the weights used in training (--weights / weights=)")


def load_checkpoint(path: str | Path, *, source: str | None = None, weights_tag: str | None = None,
                    class_names: list[str] | None = None, weights: str | None = None,
                    model_overrides: Mapping[str, Mapping[str, Any]] | None = None,
                    map_location: str | torch.device = "cpu", text_weights: str | None = None) -> LoadedCheckpoint:
    """Rebuild the model a checkpoint was trained as and load its tensors.

    ``source`` / ``weights_tag`` / ``class_names``: what the caller expects; any difference
    raises :class:`CheckpointMismatchError` saying which. ``weights``: the source's weights
    (file or folder), needed when training read them from a local path (the checkpoint records
    their SHA-256, never a path; a different file is refused); official weights need none.
    ``model_overrides``: model sections to change (e.g. ``{"tokenizer": {"normalize":
    "modelnet"}}``); they must not change tensor shapes. ``text_weights``: a local copy of the
    contrastive head's text encoder weights (a checkpoint names the encoder, never where its
    weights are); the head checks that it gives the training classes' embeddings the run
    trained with. ``info`` of the result is plain JSON data."""
    weights_path = resolve_checkpoint(path)
    info = _read_info(weights_path)
    _check_expectations(info, weights_path, source, weights_tag, class_names)
    header = _tensor_header(weights_path)  # a damaged file fails before any model is built
    method = info["peft"].name
    header = {current_state_key(method, k): v for k, v in header.items()}
    saved: SourceInfo = info["source"]
    options = dict(saved.options)
    needed = _needs_weights(saved)
    if weights is None and needed is not None:
        raise WeightsUnavailableError(
            f"{weights_path.with_suffix('.json')}: {saved.name} was trained on {needed}; a checkpoint never says where "
            f"to read weights from (an older checkpoint's recorded path is ignored): pass them explicitly "
            f"(any2point-predict / any2point-show: --weights PATH; any2point-eval: weights=PATH)")
    if weights is not None and (needed is not None or saved.weights_tag != "random"):  # random: all saved
        options["weights"] = str(weights)
    model_cfg: ModelConfig = info["model"]
    model_cfg = dataclasses.replace(model_cfg, head=dataclasses.replace(model_cfg.head, text_weights=text_weights))
    for section, values in (model_overrides or {}).items():
        if not hasattr(model_cfg, section):
            raise ValueError(f"unknown model section {section!r} in model_overrides")
        model_cfg = dataclasses.replace(model_cfg, **{section: dataclasses.replace(getattr(model_cfg, section),
                                                                                   **dict(values))})
    random_source = saved.weights_tag == "random"  # its tensors are all saved
    # every tensor the model adds around the source (and a random source itself) is in the checkpoint:
    # sizes asked for beyond that (a description with a huge head, rank, class count or random source)
    # are refused before they are allocated
    where = weights_path.with_suffix(".json")
    budget = AllocationBudget(_header_bytes(header) * 2 + _CONSTRUCTION_SLACK, lambda limit: CheckpointError(
        f"{where} describes a model that would allocate more than {limit} bytes or {MAX_CREATIONS} tensors beside its "
        f"source, far more than the checkpoint's tensors; its sizes (class_names, model.*) do not fit the tensors it "
        f"was saved with; {_REDO}"))
    try:
        with budget if random_source else contextlib.nullcontext():
            built = create_source(saved.name, pretrained=saved.pretrained and not random_source, **options)
        with budget:
            model = create_model(built, len(info["class_names"]), peft=info["peft"], model=model_cfg)
    except Any2PointError:
        raise
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{weights_path.with_suffix('.json')} describes a model that cannot be built: "
                              f"{exc}") from None
    _check_weights_identity(saved, model, weights_path, None if weights is None else str(weights))

    expected = trained_keys(model)
    missing, unexpected = sorted(expected - set(header)), sorted(set(header) - expected)
    if missing or unexpected:
        raise CheckpointMismatchError(
            f"{weights_path} does not fit the model it describes: missing {missing[:8]}"
            f"{' ...' if len(missing) > 8 else ''}, unexpected {unexpected[:8]}{' ...' if len(unexpected) > 8 else ''}")
    if info["tensors"] != len(header):
        raise CheckpointMismatchError(f"{weights_path.with_suffix('.json')} describes {info['tensors']} tensors but "
                                      f"{weights_path.name} holds {len(header)}; use a pair written together")
    state = model.state_dict()
    wrong = [f"{k} {shape} (model: {list(state[k].shape)})" for k, (_, shape) in header.items()
             if list(state[k].shape) != shape]
    if wrong:
        raise CheckpointMismatchError(f"{weights_path}: tensors do not fit the model: {', '.join(wrong[:8])}")
    tensors = {current_state_key(method, k): v for k, v in _read_described_tensors(weights_path, info).items()}
    model.load_state_dict(tensors, strict=False)  # key sets and shapes were compared above
    model.to(map_location)
    model.head.restore_classes(info["class_names"], where=str(weights_path))
    return LoadedCheckpoint(model=model.eval(), info=info_as_plain(info), path=weights_path)
