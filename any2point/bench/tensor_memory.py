"""Peak bytes of the tensors a block of code creates, on any device, independent of the
allocator: the CPU counterpart of ``torch.cuda.max_memory_allocated``.

A process's resident set says little about what a training step needs: glibc keeps freed
blocks (all of them with ``reuse_host_memory``, those under its mmap threshold otherwise) and
fragments its heap, so the same step shows peaks hundreds of MB apart under two allocator
settings. Counting tensor storages as operators create them, and as they are freed, gives
the step's own requirement (activations, saved tensors, gradients, optimizer state).
"""
from __future__ import annotations

import weakref

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

__all__ = ["TensorMemory"]


class TensorMemory(TorchDispatchMode):
    """``with TensorMemory() as mem: step()`` -> ``mem.peak_bytes``, ``mem.live_bytes``.

    Every new storage an operator returns (forward, backward, recomputation, optimizer) counts
    from then until it is freed; views and in-place results share an input's storage and add
    nothing, so tensors that existed before the block (weights, inputs) are never counted."""

    def __init__(self):
        super().__init__()
        self.live_bytes = 0
        self.peak_bytes = 0
        self._sizes: dict[int, int] = {}

    def _freed(self, key: int) -> None:
        self.live_bytes -= self._sizes.pop(key)

    def _count(self, tensor: torch.Tensor, inputs: set[int]) -> None:
        storage = tensor.untyped_storage()
        key = id(storage)  # torch keeps one Python object per storage while it lives
        if key in self._sizes or key in inputs:  # counted already, or a view / in-place result
            return
        self._sizes[key] = storage.nbytes()
        self.live_bytes += storage.nbytes()
        self.peak_bytes = max(self.peak_bytes, self.live_bytes)
        weakref.finalize(storage, self._freed, key)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        inputs = {id(t.untyped_storage()) for t in _strided_tensors((args, kwargs))}
        for item in _strided_tensors(out):
            self._count(item, inputs)
        return out


def _strided_tensors(tree) -> list[torch.Tensor]:
    return [t for t in tree_flatten(tree)[0] if isinstance(t, torch.Tensor) and t.layout == torch.strided]
