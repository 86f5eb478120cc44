"""The one way any2point writes a file: to a temporary file beside it, then ``os.replace``.

A reader (or a resumed run after a crash) sees the old file or the new one, never half a
file. Every writer of run outputs (checkpoints, resumable state, JSON and CSV results) goes
through :func:`atomic_write`. A write that fails (a full disk, a quota, no permission) leaves
the previous file as it was and raises :class:`~any2point.errors.OutputWriteError`, whose
one-line message names the file.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping

from .errors import Any2PointError, OutputWriteError

if TYPE_CHECKING:
    import torch

__all__ = ["atomic_write", "atomic_write_text", "atomic_write_json", "atomic_write_safetensors", "file_sha256"]

_UMASK = os.umask(0o022)
os.umask(_UMASK)


def _write_error(path: Path, exc: BaseException) -> OutputWriteError:
    reason = getattr(exc, "strerror", None) or str(exc)
    return OutputWriteError(f"cannot write {path}: {reason}; {path.name} is as it was before (free some disk space "
                            f"or write to another folder, then run again)")


def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> None:
    """``write(tmp_path)`` then ``os.replace`` onto ``path``: readers never see half a file."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
    except OSError as exc:
        raise _write_error(path, exc) from None
    try:
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600 files; give the usual permissions
        write(tmp)
        os.replace(tmp, path)
    except BaseException as exc:
        if os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(exc, OSError) and not isinstance(exc, Any2PointError):
            raise _write_error(path, exc) from None
        raise


def file_sha256(path: str | os.PathLike) -> str:
    """The SHA-256 of a file's bytes, hex."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def atomic_write_safetensors(path: str | os.PathLike, tensors: Mapping[str, "torch.Tensor"],
                             metadata: Mapping[str, str] | None = None) -> str:
    """``tensors`` as a safetensors file, written as :func:`atomic_write` does; returns the
    SHA-256 of the bytes written (what a description of the file can record)."""
    from safetensors import SafetensorError
    from safetensors.torch import save_file

    digest = {}

    def write(tmp: str) -> None:
        try:
            save_file(dict(tensors), tmp, metadata=dict(metadata) if metadata else None)
        except SafetensorError as exc:  # safetensors reports a failed write (ENOSPC, EFBIG) as its own error
            code = re.search(r"I/O error: .*\(os error (\d+)\)", str(exc))
            if code is None:  # not a failed write: a bug, with its traceback
                raise
            raise OSError(int(code.group(1)), os.strerror(int(code.group(1)))) from None
        digest["sha256"] = file_sha256(tmp)

    atomic_write(path, write)
    return digest["sha256"]


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    def write(tmp: str) -> None:
        with open(tmp, "w", newline="") as f:
            f.write(text)

    atomic_write(path, write)


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    """Strict JSON (a NaN or infinity is written as null, never as a bare ``NaN``), indented."""
    atomic_write_text(path, json.dumps(_finite(obj), indent=2, default=str, allow_nan=False) + "\n")


def _finite(obj: Any) -> Any:
    if isinstance(obj, float):
        return obj if obj == obj and obj not in (float("inf"), float("-inf")) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj
