"""Errors any2point raises on purpose; each message says what was expected and where.

Every one of them derives from :class:`Any2PointError`: a *user error* (a setting, a file, a
checkpoint or a run directory that is not what it must be), as opposed to a bug. The command
line tools print a user error's message alone and exit non-zero (:func:`exit_on_user_error`);
``HYDRA_FULL_ERROR=1`` shows the traceback as well.
"""
from __future__ import annotations

import functools
import os
import sys
from contextlib import contextmanager
from typing import Callable, Iterator, TypeVar

__all__ = ["Any2PointError", "UnknownSourceError", "WeightsUnavailableError", "DataError", "ConfigError",
           "CheckpointError", "CheckpointNotFoundError", "CheckpointMismatchError", "RunDirectoryLockedError", "TrainingDivergedError", "USER_ERROR_EXIT",
           "exit_on_user_error", "user_errors_exit", "OutputWriteError"]

USER_ERROR_EXIT = 1  # exit status of a command stopped by a user error


class Any2PointError(Exception):
    """Base class of the errors any2point raises on purpose (user errors, not bugs)."""


class UnknownSourceError(Any2PointError, KeyError):
    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class WeightsUnavailableError(Any2PointError, FileNotFoundError):
    """Pretrained weights are neither local, nor in an offline package, nor reachable."""


class DataError(Any2PointError, ValueError):
    """A data file or sample is missing, corrupt or not what was expected.

    ``path`` and ``index`` (when known) say which file and which sample."""

    def __init__(self, message: str, path: str | None = None, index: int | None = None):
        where = ""
        if path is not None:
            where = f"{path}"
            if index is not None:
                where += f" [sample {index}]"
            where += ": "
        super().__init__(where + message)
        self.path, self.index, self.reason = path, index, message


class ConfigError(Any2PointError, ValueError):
    """A setting is out of range or contradicts another; the message names the key."""


class CheckpointError(Any2PointError, ValueError):
    """A checkpoint or resumable state is missing, corrupt, foreign or refused; the message
    names the file and what to do."""


class CheckpointNotFoundError(CheckpointError, FileNotFoundError):
    """No checkpoint where one was named."""


class CheckpointMismatchError(CheckpointError):
    """A checkpoint was loaded against a different source, class list or model layout."""


class TrainingDivergedError(Any2PointError, FloatingPointError):
    """The training loss or the trained tensors stopped being finite (a learning rate too high,
    or bad data); nothing diverged was saved."""


class OutputWriteError(Any2PointError, OSError):
    """A file could not be written (a full disk, a quota, no permission); the previous version
    of the file, if any, is unchanged."""


class RunDirectoryLockedError(Any2PointError, RuntimeError):
    """Another process is writing to the run directory."""


def _full_error() -> bool:
    return os.environ.get("HYDRA_FULL_ERROR") == "1"


@contextmanager
def user_errors_exit(prog: str, status: int = USER_ERROR_EXIT) -> Iterator[None]:
    """Turn a user error raised inside into ``prog: error: <message>`` on stderr and
    ``SystemExit(status)``; other exceptions (bugs) pass with their traceback. With
    ``HYDRA_FULL_ERROR=1`` user errors pass too."""
    try:
        yield
    except Any2PointError as exc:
        if _full_error():
            raise
        print(f"{prog}: error: {exc}", file=sys.stderr, flush=True)
        raise SystemExit(status) from None


F = TypeVar("F", bound=Callable)


def exit_on_user_error(prog: str, status: int = USER_ERROR_EXIT) -> Callable[[F], F]:
    """Decorator form of :func:`user_errors_exit`, for the entry point of every command."""

    def wrap(fn: F) -> F:
        @functools.wraps(fn)
        def run(*args, **kwargs):
            with user_errors_exit(prog, status):
                return fn(*args, **kwargs)

        return run  # type: ignore[return-value]

    return wrap
