"""Errors any2point raises on purpose; each message says what was expected and where."""
from __future__ import annotations

__all__ = ["Any2PointError", "UnknownSourceError", "WeightsUnavailableError", "DataError",
           "CheckpointMismatchError"]


class Any2PointError(Exception):
    """Base class of the errors any2point raises on purpose."""


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


class CheckpointMismatchError(Any2PointError, ValueError):
    """A checkpoint was loaded against a different source, class list or model layout."""
