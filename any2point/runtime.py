"""Process-wide settings of a run: seeds, threads, deterministic algorithms, the host
allocator, RNG snapshots."""
from __future__ import annotations

import ctypes
import logging
import os
import platform
import random

import numpy as np
import torch

__all__ = ["seed_everything", "configure", "reuse_host_memory", "host_memory_reused", "rng_state", "set_rng_state"]

log = logging.getLogger(__name__)

# glibc's mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4
_host_memory_reused = False


def reuse_host_memory() -> bool:
    """Keep freed host memory in the process instead of returning it to the kernel (glibc only).

    A CPU training step allocates and frees many activation buffers of a few MB; glibc serves
    each from a fresh ``mmap`` and unmaps it on free, so every step pays page faults and
    zeroing for all its activations again (measured: the tokenizer's forward+backward took
    1.9x longer). Turning off mmap for large blocks and trimming of the heap's top lets the
    heap recycle them. (A finite trim threshold, even 1 GiB, was crossed every few MiniLM
    steps: about 295,000 page faults, a second of system time, each time the freed top was
    handed back and faulted in again.) Peak resident memory is unchanged (the same blocks are
    reused); it is just not handed back between steps. Returns whether the setting was applied."""
    global _host_memory_reused
    if _host_memory_reused:
        return True
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        ok = libc.mallopt(_M_MMAP_MAX, 0) == 1 and libc.mallopt(_M_TRIM_THRESHOLD, -1) == 1  # -1: never trim
    except (OSError, AttributeError):
        return False
    if not ok:
        log.warning("mallopt refused the host-memory settings; continuing with glibc's defaults")
    _host_memory_reused = ok
    return ok


def host_memory_reused() -> bool:
    """Whether :func:`reuse_host_memory` is in effect in this process."""
    return _host_memory_reused


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def configure(trainer, device: torch.device) -> None:
    """Threads and determinism from the ``trainer`` config. Deterministic mode asks PyTorch for
    deterministic kernels (warning, not failing, for an op that has none) and turns off cuDNN
    autotuning; the CPU path of this package is then bitwise reproducible."""
    if trainer.threads:
        torch.set_num_threads(int(trainer.threads))
    if trainer.get("reuse_host_memory", True):
        reuse_host_memory()
    if trainer.deterministic:
        if device.type == "cuda":
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
    else:
        torch.use_deterministic_algorithms(False)
        torch.backends.cudnn.benchmark = device.type == "cuda"


def rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
