"""One writer per run directory: an exclusive lock held for the life of a run.

The lock is ``fcntl.flock`` on ``<run dir>/.any2point.lock`` (``msvcrt.locking`` on Windows),
which the kernel releases when the process ends however it ends, so a killed run leaves no
stale lock and can be resumed. The file holds the PID of the holder, for the message a
second process gets. Locks are reentrant within a process (the Hydra callback takes the lock
before Hydra writes ``.hydra/``, and :func:`any2point.train.run_training` takes it again).
Under DDP only rank 0 locks: the ranks share one run.
"""
from __future__ import annotations

import logging
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from ..errors import RunDirectoryLockedError

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None
    import msvcrt

__all__ = ["LOCK_FILE", "acquire", "release", "run_directory_lock", "LockRunDirectory"]

log = logging.getLogger(__name__)

LOCK_FILE = ".any2point.lock"
_held: dict[Path, list] = {}  # resolved run dir -> [fd, count]


def _try_lock(fd: int) -> bool:
    try:
        if fcntl is not None:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        else:
            os.lseek(fd, 0, os.SEEK_SET)
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
        return True
    except OSError:
        return False


def _holder(path: Path) -> str:
    try:
        text = path.read_text().strip()
    except OSError:
        return "unknown"
    return text if text.isdigit() else "unknown"


def acquire(run_dir: str | os.PathLike) -> None:
    """Lock ``run_dir`` for this process (creating it), or raise :class:`RunDirectoryLockedError`
    naming the directory and the PID that holds it."""
    run_dir = Path(run_dir).resolve()
    if run_dir in _held:
        _held[run_dir][1] += 1
        return
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / LOCK_FILE
    try:  # never through a planted symlink: the file is truncated below
        fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o644)
    except OSError as exc:
        raise RunDirectoryLockedError(f"cannot open the lock file {path} of the run directory {run_dir} ({exc}); "
                                      f"remove it if it is not a plain file, or choose another hydra.run.dir") from None
    if not _try_lock(fd):
        os.close(fd)
        raise RunDirectoryLockedError(
            f"the run directory {run_dir} is in use by another any2point process (PID {_holder(path)}); wait for "
            f"it to finish, or choose another directory with hydra.run.dir=...")
    if fcntl is not None:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    _held[run_dir] = [fd, 1]


def release(run_dir: str | os.PathLike) -> None:
    """Undo one :func:`acquire`; the last one unlocks (the file stays: removing it would race)."""
    run_dir = Path(run_dir).resolve()
    entry = _held.get(run_dir)
    if entry is None:
        return
    entry[1] -= 1
    if entry[1] == 0:
        del _held[run_dir]
        os.close(entry[0])  # closing the descriptor releases the lock


@contextmanager
def run_directory_lock(run_dir: str | os.PathLike, enabled: bool = True) -> Iterator[None]:
    """Hold the lock on ``run_dir`` inside the block (``enabled=False``: no lock, e.g. DDP ranks > 0)."""
    if not enabled:
        yield
        return
    acquire(run_dir)
    try:
        yield
    finally:
        release(run_dir)


def _is_rank_zero() -> bool:
    return os.environ.get("RANK", "0") == "0"


try:
    from hydra.experimental.callback import Callback
except ImportError:  # pragma: no cover - hydra is a dependency
    Callback = object


class LockRunDirectory(Callback):
    """Hydra callback: lock the run directory before Hydra writes ``.hydra/`` and the log
    (``on_run_start``), and each sweep job's directory for its job; release at the end."""

    def __init__(self) -> None:
        self._locked: list[Path] = []

    def _lock(self, directory: str, config: Any) -> None:
        from ..errors import user_errors_exit

        if not _is_rank_zero():
            return
        with user_errors_exit(f"any2point-{config.hydra.job.name}"):  # Hydra would print a traceback
            acquire(directory)
        self._locked.append(Path(directory))

    def _unlock(self) -> None:
        if self._locked:
            release(self._locked.pop())

    def on_run_start(self, config: Any, **kwargs: Any) -> None:
        self._lock(os.path.abspath(str(config.hydra.run.dir)), config)

    def on_run_end(self, config: Any, **kwargs: Any) -> None:
        self._unlock()

    def on_job_start(self, config: Any, **kwargs: Any) -> None:
        if config.hydra.mode is not None and str(config.hydra.mode) == "RunMode.MULTIRUN":
            self._lock(str(config.hydra.runtime.output_dir), config)

    def on_job_end(self, config: Any, **kwargs: Any) -> None:
        if config.hydra.mode is not None and str(config.hydra.mode) == "RunMode.MULTIRUN":
            self._unlock()
