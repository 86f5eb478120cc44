"""The resumable training state, stored so that loading it cannot run code.

One safetensors file (``last.safetensors`` in the run directory), replaced atomically after
every epoch, holds

- tensors: ``model/<key>`` (the trained tensors), ``optimizer/<param index>/<name>`` (the
  optimizer's per-parameter tensors, e.g. Adam's moments and step), ``rng/<rank>/torch`` and
  ``rng/<rank>/cuda/<device>`` (the generators' byte states);
- in its metadata, one JSON document: epoch, best-validation tracking, elapsed seconds, the
  settings fingerprint, the optimizer's parameter groups, the scheduler's state and the
  Python / NumPy generator states as lists of integers.

safetensors and JSON are data formats: a crafted file can fail to load, never execute. The
older pickled ``last.pt`` is refused without being opened. Every check of a state read
back (types, key sets, shapes, against the live model, optimizer and scheduler) ends in a
:class:`~any2point.errors.CheckpointError` naming the file and saying that
``train.resume=false`` starts the directory over.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
from safetensors import SafetensorError, safe_open

from .. import runtime
from ..atomic import atomic_write_safetensors
from ..errors import CheckpointError
from ..plain_data import PlainDataError, from_plain

__all__ = ["TRAINING_STATE", "LEGACY_TRAINING_STATE", "STATE_FORMAT", "TrainingState", "save_training_state",
           "read_training_state", "restore_training_state", "refuse_legacy_state"]

TRAINING_STATE = "last.safetensors"  # everything needed to resume, rewritten after every epoch
LEGACY_TRAINING_STATE = "last.pt"  # the pickled state of older versions: never loaded
STATE_FORMAT = 1
_METADATA_KEY = "any2point_training_state"


def _start_over(path: Path) -> str:
    return (f"set train.resume=false to start the run directory {path.parent} over (its resumable state is then "
            f"replaced), or use another hydra.run.dir")


@dataclass
class BestVal:
    oa: float | None
    macc: float | None
    epoch: int | None


@dataclass
class RngInfo:
    python: list[Any]  # [version, [625 ints], gauss_next or null]
    numpy: list[Any]  # ["MT19937", [624 ints], pos, has_gauss, cached_gaussian]
    cuda_devices: int


@dataclass
class StateInfo:
    """The JSON part of the state, checked field by field when read."""

    format: int
    epoch: int
    best: BestVal
    seconds: float
    fingerprint: dict[str, Any]
    optimizer_groups: list[dict[str, Any]]
    optimizer_values: dict[str, dict[str, Any]]  # per-parameter state entries that are not tensors
    scheduler: dict[str, Any]
    rng: list[RngInfo]


@dataclass
class TrainingState:
    """A state read back from disk, checked for types but not yet against the live run."""

    path: Path
    info: StateInfo
    tensors: dict[str, torch.Tensor]

    @property
    def epoch(self) -> int:
        return self.info.epoch

    @property
    def best(self) -> dict:
        return {"oa": self.info.best.oa, "macc": self.info.best.macc, "epoch": self.info.best.epoch}

    @property
    def seconds(self) -> float:
        return self.info.seconds

    @property
    def fingerprint(self) -> dict:
        return self.info.fingerprint


# ----------------------------------------------------------------------------- writing

def _rng_entry(rank: int, state: Mapping[str, Any], tensors: dict[str, torch.Tensor]) -> dict:
    version, internal, gauss = state["python"]
    name, keys, pos, has_gauss, cached = state["numpy"]
    tensors[f"rng/{rank}/torch"] = state["torch"].clone()
    cuda = list(state.get("cuda") or [])
    for i, t in enumerate(cuda):
        tensors[f"rng/{rank}/cuda/{i}"] = t.clone()
    return {"python": [int(version), [int(v) for v in internal], gauss],
            "numpy": [str(name), [int(v) for v in np.asarray(keys).tolist()], int(pos), int(has_gauss),
                      float(cached)],
            "cuda_devices": len(cuda)}


def save_training_state(path: str | Path, *, epoch: int, model: Mapping[str, torch.Tensor],
                        optimizer: Mapping[str, Any], scheduler: Mapping[str, Any], rng: list[Mapping[str, Any]],
                        best: Mapping[str, Any], seconds: float, fingerprint: Mapping[str, Any]) -> None:
    """Atomically write the resumable state. ``optimizer`` / ``scheduler``: their
    ``state_dict()``; ``rng``: :func:`any2point.runtime.rng_state` of every rank."""
    tensors: dict[str, torch.Tensor] = {f"model/{k}": v.detach().to("cpu").contiguous() for k, v in model.items()}
    values: dict[str, dict[str, Any]] = {}
    for pid, entries in optimizer["state"].items():
        for name, value in entries.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optimizer/{pid}/{name}"] = value.detach().to("cpu", copy=True).contiguous()
            else:
                values.setdefault(str(pid), {})[name] = value
    info = {"format": STATE_FORMAT, "epoch": int(epoch), "best": dict(best), "seconds": float(seconds),
            "fingerprint": dict(fingerprint), "optimizer_groups": list(optimizer["param_groups"]),
            "optimizer_values": values, "scheduler": dict(scheduler),
            "rng": [_rng_entry(rank, state, tensors) for rank, state in enumerate(rng)]}
    metadata = {_METADATA_KEY: json.dumps(info)}
    atomic_write_safetensors(Path(path), tensors, metadata)


# ----------------------------------------------------------------------------- reading

def refuse_legacy_state(run_dir: str | Path) -> None:
    """Refuse a pickled ``last.pt`` in ``run_dir`` without opening it."""
    legacy = Path(run_dir) / LEGACY_TRAINING_STATE
    if legacy.exists():
        raise CheckpointError(
            f"{legacy} is a resumable state in the old pickle format (or a file of unknown origin); any2point no "
            f"longer loads pickles, since loading one can run code. {_start_over(legacy)}")


def read_training_state(path: str | Path) -> TrainingState | None:
    """The state at ``path`` (None when there is none), its JSON checked for types. A file
    that is not a state written by this version is a :class:`CheckpointError`."""
    path = Path(path)
    if not path.exists():
        return None
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            metadata = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"{path} is not a readable resumable state ({exc}); it may be truncated or damaged. "
                              f"{_start_over(path)}") from None
    if _METADATA_KEY not in metadata:
        raise CheckpointError(f"{path} is a safetensors file without an any2point training state. {_start_over(path)}")
    try:
        raw = json.loads(metadata[_METADATA_KEY])
        if isinstance(raw, dict) and raw.get("format") != STATE_FORMAT:
            raise PlainDataError(f"format {raw.get('format')!r:.40}, this any2point reads format {STATE_FORMAT}")
        info = from_plain(StateInfo, raw, "state")
    except (json.JSONDecodeError, RecursionError) as exc:
        raise CheckpointError(f"{path}: its training state is not valid JSON ({exc}). {_start_over(path)}") from None
    except PlainDataError as exc:
        raise CheckpointError(f"{path}: not a training state this version can resume: {exc}. "
                              f"{_start_over(path)}") from None
    return TrainingState(path=path, info=info, tensors=tensors)


def _like(saved: Any, live: Any, where: str) -> Any:
    """``saved`` (plain JSON data) shaped like ``live`` (same keys, lengths and scalar kinds),
    with tuples where ``live`` has tuples."""
    if isinstance(live, Mapping):
        if not isinstance(saved, dict) or set(saved) != set(live):
            got = sorted(saved) if isinstance(saved, dict) else type(saved).__name__
            raise PlainDataError(f"{where}: expected the keys {sorted(live)}, got {got}")
        return {k: _like(saved[k], live[k], f"{where}.{k}") for k in live}
    if isinstance(live, (list, tuple)):
        if not isinstance(saved, list) or len(saved) != len(live):
            raise PlainDataError(f"{where}: expected a list of {len(live)}, got {saved!r:.60}")
        items = [_like(s, v, f"{where}[{i}]") for i, (s, v) in enumerate(zip(saved, live))]
        return tuple(items) if isinstance(live, tuple) else items
    if isinstance(live, bool) or live is None or isinstance(live, str):
        ok = type(saved) is type(live)
    elif isinstance(live, int):
        ok = isinstance(saved, int) and not isinstance(saved, bool)
    elif isinstance(live, float):
        ok = isinstance(saved, (int, float)) and not isinstance(saved, bool)
        saved = float(saved) if ok else saved
    else:
        raise PlainDataError(f"{where}: the live value {type(live).__name__} has no plain-data form")
    if not ok:
        raise PlainDataError(f"{where}: expected {type(live).__name__}, got {saved!r:.60}")
    return saved


def _probe_entry(optimizer: torch.optim.Optimizer, group: Mapping[str, Any]) -> dict[str, Any] | None:
    """The per-parameter state this optimizer type keeps with ``group``'s settings, read off a
    throwaway copy after one step on a 2-element parameter (so per-element tensors are told
    apart from scalars); None when the type cannot be probed that way (e.g. needs a closure)."""
    first = group["params"][0]
    probe = torch.zeros(2, dtype=first.dtype, device=first.device, requires_grad=True)
    options = {k: v for k, v in group.items() if k != "params"}
    try:
        copy = type(optimizer)([{"params": [probe], **options}])
        probe.grad = torch.ones_like(probe)
        copy.step()
    except Exception:  # noqa: BLE001 - an optimizer we cannot probe is checked for consistency instead
        return None
    return dict(copy.state[probe])


def _check_entries(per_param: dict[int, dict[str, Any]], optimizer: torch.optim.Optimizer,
                   params: list[torch.Tensor]) -> None:
    """Every saved per-parameter entry is complete for the live optimizer: exactly the names its
    type keeps (a missing moment would otherwise be a KeyError inside ``step`` after data was
    read), tensors where it keeps tensors, per-element ones shaped like the parameter, scalars
    scalar, floating where it keeps floating point."""
    group_of = {}
    index = 0
    for g, group in enumerate(optimizer.param_groups):
        for _ in group["params"]:
            group_of[index] = g
            index += 1
    probes = [_probe_entry(optimizer, group) if group["params"] else None for group in optimizer.param_groups]
    for pid in sorted(per_param):
        entry, probe = per_param[pid], probes[group_of[pid]]
        if probe is None:  # names must agree with the first entry saved for the same group
            probe = next(per_param[q] for q in sorted(per_param) if group_of[q] == group_of[pid])
            if set(entry) != set(probe):
                raise PlainDataError(f"optimizer entry {pid} holds {sorted(entry)}, entry of its group holds "
                                     f"{sorted(probe)}")
            continue
        if set(entry) != set(probe):
            missing, extra = sorted(set(probe) - set(entry)), sorted(set(entry) - set(probe))
            raise PlainDataError(f"optimizer entry {pid} is incomplete or foreign for {type(optimizer).__name__}: "
                                 f"missing {missing}, unexpected {extra} (expected exactly {sorted(probe)})")
        for name, model in probe.items():
            value, key = entry[name], f"optimizer/{pid}/{name}"
            if not isinstance(model, torch.Tensor):
                if isinstance(value, torch.Tensor):
                    raise PlainDataError(f"{key}: a tensor where {type(optimizer).__name__} keeps a plain value")
                continue
            if not isinstance(value, torch.Tensor):
                raise PlainDataError(f"{key} is missing (a plain value where {type(optimizer).__name__} keeps a "
                                     "tensor)")
            shape = tuple(params[pid].shape) if model.dim() > 0 else ()
            if tuple(value.shape) != shape:
                raise PlainDataError(f"tensor {key!r} has shape {tuple(value.shape)}, expected {shape}")
            if value.is_floating_point() != model.is_floating_point():
                kind = "floating point" if model.is_floating_point() else f"{model.dtype}"
                raise PlainDataError(f"tensor {key!r} has dtype {value.dtype}, expected {kind}")


def _optimizer_state(state: TrainingState, optimizer: torch.optim.Optimizer) -> dict:
    live = optimizer.state_dict()
    groups = _like(state.info.optimizer_groups, live["param_groups"], "optimizer_groups")
    params = [p for group in optimizer.param_groups for p in group["params"]]
    per_param: dict[int, dict[str, Any]] = {}
    for key, tensor in state.tensors.items():
        if not key.startswith("optimizer/"):
            continue
        parts = key.split("/")
        if len(parts) != 3 or not parts[1].isdigit() or int(parts[1]) >= len(params):
            raise PlainDataError(f"tensor {key!r}: expected optimizer/<parameter index below {len(params)}>/<name>")
        pid = int(parts[1])
        if tensor.dim() > 0 and tuple(tensor.shape) != tuple(params[pid].shape):
            raise PlainDataError(f"tensor {key!r} has shape {tuple(tensor.shape)}, its parameter "
                                 f"{tuple(params[pid].shape)}")
        per_param.setdefault(pid, {})[parts[2]] = tensor
    for pid, entries in state.info.optimizer_values.items():
        if not pid.isdigit() or int(pid) >= len(params):
            raise PlainDataError(f"optimizer_values.{pid}: not a parameter index below {len(params)}")
        per_param.setdefault(int(pid), {}).update(entries)
    _check_entries(per_param, optimizer, params)
    return {"state": per_param, "param_groups": groups}


def _restore_rng(info: RngInfo, tensors: Mapping[str, torch.Tensor], rank: int) -> None:
    """The saved lists back to the forms :func:`any2point.runtime.set_rng_state` takes."""
    version, internal, gauss = info.python
    name, keys, pos, has_gauss, cached = info.numpy
    state = {"python": (version, tuple(internal), gauss),
             "numpy": (name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached),
             "torch": tensors[f"rng/{rank}/torch"]}
    if info.cuda_devices:
        state["cuda"] = [tensors[f"rng/{rank}/cuda/{i}"] for i in range(info.cuda_devices)]
    runtime.set_rng_state(state)


def restore_training_state(state: TrainingState, *, model: torch.nn.Module, model_keys: set[str],
                           optimizer: torch.optim.Optimizer, scheduler: Any, rank: int) -> None:
    """Load ``state`` into the live run after checking it fits: the model's trained tensors
    (``model_keys``), the optimizer's groups and per-parameter shapes, the scheduler's
    state, this rank's generators."""
    path = state.path
    try:
        weights = {k[len("model/"):]: v for k, v in state.tensors.items() if k.startswith("model/")}
        if set(weights) != model_keys:
            missing, extra = sorted(model_keys - set(weights)), sorted(set(weights) - model_keys)
            raise PlainDataError(f"it holds other tensors than this model trains (missing {missing[:5]}, "
                                 f"unexpected {extra[:5]})")
        live = model.state_dict()
        wrong = [k for k in weights if weights[k].shape != live[k].shape]
        if wrong:
            raise PlainDataError(f"tensors of other shapes than the model's: {wrong[:5]}")
        optimizer_state = _optimizer_state(state, optimizer)
        scheduler_state = _like(state.info.scheduler, scheduler.state_dict(), "scheduler")
        if not 0 <= rank < len(state.info.rng):
            raise PlainDataError(f"no generator state for rank {rank} ({len(state.info.rng)} saved)")
        rng = state.info.rng[rank]
        for i in range(rng.cuda_devices):
            if f"rng/{rank}/cuda/{i}" not in state.tensors:
                raise PlainDataError(f"tensor rng/{rank}/cuda/{i} is missing")
        if f"rng/{rank}/torch" not in state.tensors:
            raise PlainDataError(f"tensor rng/{rank}/torch is missing")
    except PlainDataError as exc:
        raise CheckpointError(f"{path} does not fit this run: {exc}. {_start_over(path)}") from None
    try:
        model.load_state_dict(weights, strict=False)  # the key set was compared above
        optimizer.load_state_dict(optimizer_state)
        scheduler.load_state_dict(scheduler_state)
        _restore_rng(rng, state.tensors, rank)
    except (ValueError, TypeError, OverflowError, RuntimeError, KeyError, IndexError) as exc:
        raise CheckpointError(f"{path} could not be restored ({type(exc).__name__}: {exc}). "
                              f"{_start_over(path)}") from None
