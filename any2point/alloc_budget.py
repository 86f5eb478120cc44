"""A cap on the tensors a block of code may create, checked from the requested sizes before
anything is allocated.

Loading a received checkpoint builds a model from sizes its description gives (class count,
head widths, adapter rank, ...). Everything the model adds around its frozen source is saved in
the checkpoint, so building it may not ask for much more than the checkpoint's own tensors:
:class:`AllocationBudget` sums the sizes asked of torch's tensor factories (``torch.empty``,
``zeros``, ``full``, ``Tensor.new_zeros``, ...) and raises before the one that crosses the
limit runs. Pretrained weights loaded on the way (a frozen source, a text encoder) are sized by
their verified files, not by the description: their loaders run inside :func:`unbudgeted`.
"""
from __future__ import annotations

import contextlib
import contextvars
from typing import Callable, Iterator

import torch

__all__ = ["AllocationBudget", "unbudgeted", "MAX_CREATIONS"]

MAX_CREATIONS = 20_000  # tensors created around a source: a 12-block model creates a few hundred
_PAUSED = contextvars.ContextVar("any2point_allocation_budget_paused", default=False)


@contextlib.contextmanager
def unbudgeted() -> Iterator[None]:
    """Tensors created inside are not counted (loading weights sized by their own files)."""
    token = _PAUSED.set(True)
    try:
        yield
    finally:
        _PAUSED.reset(token)


class AllocationBudget(torch.overrides.TorchFunctionMode):
    """Raises ``error(limit)`` when tensor creations together ask for more than ``limit`` bytes
    or more than :data:`MAX_CREATIONS` tensors."""

    _FACTORIES = {torch.empty, torch.zeros, torch.ones, torch.full, torch.rand, torch.randn, torch.randint,
                  torch.randperm, torch.eye, torch.empty_strided}
    _METHODS = {torch.Tensor.new_empty, torch.Tensor.new_zeros, torch.Tensor.new_ones, torch.Tensor.new_full}

    def __init__(self, limit: int, error: Callable[[int], Exception]):
        super().__init__()
        self.limit, self.error, self.used, self.calls = limit, error, 0, 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if not _PAUSED.get() and (func in self._FACTORIES or func in self._METHODS):
            if func in self._METHODS:  # x.new_zeros(size, ...): the size follows the tensor
                func_like, sized = (torch.full if func is torch.Tensor.new_full else torch.empty), args[1:]
            else:
                func_like, sized = func, args
            self.used += self.requested_bytes(func_like, sized, kwargs)
            self.calls += 1
            if self.used > self.limit or self.calls > MAX_CREATIONS:
                raise self.error(self.limit)
        return func(*args, **kwargs)

    @staticmethod
    def requested_bytes(func, args, kwargs) -> int:
        """Bytes ``func(*args, **kwargs)`` would allocate, from its size arguments."""
        if func is torch.eye:
            n = args[0] if args else kwargs.get("n", 0)
            m = args[1] if len(args) > 1 and isinstance(args[1], int) else kwargs.get("m", n)
            dims = [n, m]
        elif func is torch.randperm:
            dims = [args[0] if args else kwargs.get("n", 0)]
        elif func is torch.randint:
            dims = list(kwargs.get("size", next((a for a in args if isinstance(a, (tuple, list, torch.Size))), ())))
        elif func is torch.full:
            dims = list(args[0] if args else kwargs.get("size", ()))
        else:
            size = args[0] if len(args) == 1 and isinstance(args[0], (tuple, list, torch.Size)) else args
            dims = [d for d in (size or kwargs.get("size", ())) if isinstance(d, int)]
        count = 1
        for d in dims:
            count *= max(int(d), 0)
        dtype = kwargs.get("dtype") or torch.get_default_dtype()
        return count * (torch.empty((), dtype=dtype).element_size() if isinstance(dtype, torch.dtype) else 8)
