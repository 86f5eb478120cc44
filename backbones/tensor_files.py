"""Reading a weights file into tensors without running anything it carries.

Two formats are read: safetensors (plain tensors, nothing to run) and ``torch.save`` files
through ``torch.load(weights_only=True)``, torch's restricted unpickler that builds tensors and
containers only. TorchScript archives are refused before torch sees them: loading one
(``torch.jit.load``) runs code the archive carries. A payload the restricted unpickler refuses
becomes a one-line :class:`WeightsUnavailableError` naming the file and what to use instead.
"""
from __future__ import annotations

import os
import re
import zipfile
from pathlib import Path
from typing import Any

import torch

from any2point.errors import WeightsUnavailableError

__all__ = ["is_torchscript", "refuse_torchscript", "torch_load", "read_state_dict", "pickle_refused", "first_line",
           "check_weights_values", "USE_INSTEAD"]

USE_INSTEAD = ("a state dict saved with safetensors (safetensors.torch.save_file(model.state_dict(), ...)); for "
               "OpenAI CLIP, open_clip's open_clip_model.safetensors from the Hugging Face hub "
               "(e.g. timm/vit_large_patch14_clip_224.openai)")


def is_torchscript(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a TorchScript archive: a zip whose records hold ``constants.pkl`` or
    ``code/`` (the marks torch itself uses; a plain ``torch.save`` zip has neither). Only the zip
    directory is read."""
    try:
        if not zipfile.is_zipfile(path):
            return False
        with zipfile.ZipFile(path) as z:
            records = [n.split("/", 1)[-1] for n in z.namelist()]
    except (OSError, zipfile.BadZipFile, ValueError):
        return False  # not a readable zip: torch.load will say what it is
    return any(r == "constants.pkl" or r.startswith("code/") for r in records)


def refuse_torchscript(path: str | os.PathLike, source: str) -> None:
    if is_torchscript(path):
        raise WeightsUnavailableError(
            f"{source}: {path} is a TorchScript archive; any2point never loads TorchScript (loading one runs the "
            f"code it carries). Use {USE_INSTEAD}")


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (at most 200 characters), or its type's name."""
    text = next((line.strip() for line in str(exc).splitlines() if line.strip()), "")
    return text[:200] or type(exc).__name__


def _refusal(exc: BaseException) -> str:
    text = str(exc)
    found = re.search(r"GLOBAL ([\w.]+)", text)
    if found:
        return f"it asks for the Python object {found.group(1)}, which is not a tensor"
    return f"{type(exc).__name__}: {first_line(exc)}"


def torch_load(path: str | os.PathLike, source: str, mmap: bool = True) -> Any:
    """``torch.load(path, weights_only=True)`` on the CPU (memory-mapped when the file allows),
    after refusing TorchScript; what torch refuses is a one-line error naming the file."""
    refuse_torchscript(path, source)
    try:
        try:
            return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
        except RuntimeError as exc:
            if not mmap or "mmap" not in str(exc):
                raise
            return torch.load(path, map_location="cpu", weights_only=True)  # legacy (non-zip) files cannot be mapped
    except Exception as exc:  # noqa: BLE001 - whatever torch.load raised, the file is not plain tensors
        raise pickle_refused(path, source, exc) from None


def pickle_refused(path: str | os.PathLike, source: str, exc: BaseException) -> WeightsUnavailableError:
    """The one-line error for a ``torch.save`` file that ``torch.load(weights_only=True)`` refused."""
    return WeightsUnavailableError(
        f"{source}: {path} cannot be read as plain tensors with torch.load(weights_only=True): {_refusal(exc)}. "
        f"any2point never unpickles anything else; use {USE_INSTEAD}")


def read_state_dict(path: str | os.PathLike, source: str) -> dict[str, torch.Tensor]:
    """The tensors of a weights file (safetensors by its suffix, else a ``torch.save`` file),
    unwrapped from ``{"state_dict": ...}`` / ``{"model": ...}`` and a ``module.`` prefix."""
    path = Path(path)
    refuse_torchscript(path, source)  # whatever its name says
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
            raise WeightsUnavailableError(f"{source}: {path} is not a readable safetensors file "
                                          f"({first_line(exc)})") from None
    state = torch_load(path, source)
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
            break
    if isinstance(state, dict):  # entries beside the tensors (an epoch count, ...) are not weights
        state = {k: v for k, v in state.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}
    if not isinstance(state, dict) or not state:
        raise WeightsUnavailableError(f"{source}: {path} does not hold a state dict (names -> tensors); "
                                      f"found {type(state).__name__ if not isinstance(state, dict) else 'no tensor'}")
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


def check_weights_values(tensors, where: str | os.PathLike, source: str) -> None:
    """Refuse weights that would silently give garbage: a tensor of a non-floating dtype (an
    integer tensor would be cast without a word) or holding NaN or infinity (every prediction
    would be NaN). ``tensors``: (name, tensor) pairs, e.g. ``state.items()`` or
    ``module.named_parameters()``."""
    for name, value in tensors:
        if not (value.is_floating_point()):
            raise WeightsUnavailableError(f"{source}: {where} has tensor {name} of dtype {value.dtype}; expected "
                                          f"floating-point weights")
        if not bool(torch.isfinite(value).all()):
            raise WeightsUnavailableError(f"{source}: {where} has non-finite values (NaN or infinity) in {name}; "
                                          f"expected finite weights")
