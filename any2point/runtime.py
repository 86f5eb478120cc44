"""Process-wide settings of a run: seeds, threads, deterministic algorithms, the host
allocator and its resident budget, RNG snapshots."""
from __future__ import annotations

import ctypes
import logging
import os
import platform
import random
import resource

import numpy as np
import torch

__all__ = ["seed_everything", "configure", "reuse_host_memory", "host_memory_reused", "rng_state", "set_rng_state",
           "resident_mb", "peak_resident_mb", "release_host_memory", "set_host_memory_budget",
           "host_memory_budget_mb", "respect_host_memory_budget"]

log = logging.getLogger(__name__)

# glibc's mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4
_host_memory_reused = False
_budget_mb: float | None = None
_budget_warned = False


def reuse_host_memory() -> bool:
    """Keep freed host memory in the process instead of returning it to the kernel (glibc only).

    A CPU training step allocates and frees many activation buffers of a few MB; glibc serves
    each from a fresh ``mmap`` and unmaps it on free, so every step pays page faults and
    zeroing for all its activations again (measured: the tokenizer's forward+backward took
    1.9x longer). Turning off mmap for large blocks and trimming of the heap's top lets the
    heap recycle them. (A finite trim threshold, even 1 GiB, was crossed every few MiniLM
    steps: about 295,000 page faults, a second of system time, each time the freed top was
    handed back and faulted in again.) Peak resident memory is unchanged (the same blocks are
    reused); it is just not handed back between steps. Returns whether the setting was applied.

    What is kept is bounded by the resident budget (:func:`set_host_memory_budget`, checked
    after every training step by :func:`respect_host_memory_budget`): the heap keeps blocks of
    every size it ever served, and a step whose sizes differ (an evaluation at a larger batch)
    adds its own on top, so without a bound the resident set only grows."""
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


def resident_mb() -> float:
    """The process's resident set now, in MB (0 where /proc is missing)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * resource.getpagesize() / 2 ** 20
    except OSError:
        return 0.0


def peak_resident_mb() -> float:
    """The process's peak resident set (``ru_maxrss``) in MB."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2 ** 20 if platform.system() == "Darwin" else peak / 1024  # bytes on macOS, KiB on Linux


def release_host_memory() -> bool:
    """Hand the heap's free memory back to the kernel (glibc ``malloc_trim``): the resident set
    drops to what live objects use; the next step faults in what it needs again. Returns
    whether anything was released."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        return bool(ctypes.CDLL("libc.so.6").malloc_trim(0))
    except (OSError, AttributeError):
        return False


def _physical_mb() -> float | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2 ** 20
    except (ValueError, OSError, AttributeError):
        return None


def set_host_memory_budget(mb: float | None) -> float | None:
    """The resident set the process keeps between training steps while :func:`reuse_host_memory`
    is on: ``mb`` MB, or None for half of the machine's physical memory shared by the processes
    of this machine (torchrun's LOCAL_WORLD_SIZE). Returns the budget."""
    global _budget_mb, _budget_warned
    if mb is not None and mb <= 0:
        raise ValueError(f"trainer.host_memory_budget_mb must be positive (or null: half the machine), got {mb}")
    physical = _physical_mb()
    local = max(int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1), 1)
    _budget_mb = float(mb) if mb is not None else (physical / 2 / local if physical else None)
    _budget_warned = False
    return _budget_mb


def host_memory_budget_mb() -> float | None:
    return _budget_mb


def respect_host_memory_budget() -> bool:
    """After a training step: when freed memory is kept (:func:`reuse_host_memory`) and the
    resident set exceeds the budget, release the free part. Cheap when under budget (one read
    of /proc/self/statm). Returns whether it released memory."""
    global _budget_warned
    if not _host_memory_reused or _budget_mb is None or resident_mb() <= _budget_mb:
        return False
    release_host_memory()
    after = resident_mb()
    if after > _budget_mb and not _budget_warned:
        _budget_warned = True
        log.warning("%.0f MB resident after returning free memory, over the host memory budget of %.0f MB "
                    "(trainer.host_memory_budget_mb): the step's own data exceed it; every step now returns its "
                    "freed memory and faults it in again", after, _budget_mb)
    return True


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
        set_host_memory_budget(trainer.get("host_memory_budget_mb", None))
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
