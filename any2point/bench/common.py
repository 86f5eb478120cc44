"""Shared benchmark helpers: common flags, thread and device setup, and robust timing
(warm-up runs, then the median of repeated runs, with device synchronisation)."""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from typing import Callable

import torch

__all__ = ["add_common_arguments", "apply_common_arguments", "resolve_device", "set_threads", "synchronize",
           "time_call", "time_interleaved", "environment", "ratio", "matmul_peak", "tokenizer_forward_backward",
           "tokenizer_geometry"]


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's choice)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto (default: cpu)")
    parser.add_argument("--quick", action="store_true", help="tiny sizes and few repeats (for CI)")
    parser.add_argument("--glibc-malloc-defaults", action="store_true",
                        help="keep glibc's allocator defaults instead of the training runs' host-memory reuse "
                             "(any2point.runtime.reuse_host_memory), to measure what that setting brings")


def apply_common_arguments(args: argparse.Namespace) -> None:
    """Set threads and resolve the device once, before a subcommand runs."""
    args.threads = set_threads(args.threads)
    args.device = resolve_device(args.device)
    from ..runtime import reuse_host_memory

    args.reuse_host_memory = False if args.glibc_malloc_defaults else reuse_host_memory()


def set_threads(n: int | None) -> int:
    if n is not None:
        if n < 1:
            raise ValueError(f"--threads must be >= 1, got {n}")
        torch.set_num_threads(n)
    return torch.get_num_threads()


def resolve_device(name: str | torch.device) -> torch.device:
    if str(name) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {name}: CUDA is not available on this machine")
    return device


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_call(fn: Callable[[], object], device: torch.device, *, warmup: int = 1, repeats: int = 5,
              grad: bool = False) -> dict:
    """Milliseconds per call of ``fn``: median and minimum over ``repeats`` after ``warmup`` runs.

    ``grad=False`` runs under inference mode; training steps pass ``grad=True``."""
    return time_interleaved({"fn": fn}, device, warmup=warmup, repeats=repeats, grad=grad)["fn"]


def time_interleaved(fns: dict[str, Callable[[], object]], device: torch.device, *, warmup: int = 1,
                     repeats: int = 5, grad: bool = False) -> dict[str, dict]:
    """Like :func:`time_call` for several functions, run in turn (a, b, a, b, ...) so that a
    ratio between them is not skewed by the machine getting slower or faster in between."""
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    times: dict[str, list[float]] = {name: [] for name in fns}
    with torch.inference_mode(not grad):
        for fn in fns.values():
            for _ in range(warmup):
                fn()
        synchronize(device)
        for _ in range(repeats):
            for name, fn in fns.items():
                start = time.perf_counter()
                fn()
                synchronize(device)
                times[name].append((time.perf_counter() - start) * 1e3)
    return {name: {"median_ms": statistics.median(t), "min_ms": min(t), "repeats": repeats}
            for name, t in times.items()}


def matmul_peak(device: torch.device, dtype: torch.dtype = torch.float32, size: int | None = None,
                repeats: int = 5) -> dict:
    """The machine's dense matrix-multiply throughput (the MFU reference), measured here.

    Square matmuls large enough to be compute-bound (2048 on CPU, 8192 on CUDA); the best of
    ``repeats`` runs, since the peak is what the hardware can do, not what it did on average."""
    n = size or (8192 if device.type == "cuda" else 2048)
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    timing = time_call(lambda: a @ b, device, warmup=2, repeats=repeats)
    flops = 2.0 * n ** 3
    return {"dtype": str(dtype).replace("torch.", ""), "size": n, "tflops": flops / (timing["min_ms"] / 1e3) / 1e12,
            "median_tflops": flops / (timing["median_ms"] / 1e3) / 1e12}


def ratio(reference_ms: float, ours_ms: float) -> float:
    """How many times faster ours is than the reference (> 1: faster)."""
    return reference_ms / ours_ms if ours_ms > 0 else float("inf")


def environment(device: torch.device) -> dict:
    """What the timings depend on; the load average shows whether other work shared the CPU."""
    from ..runtime import host_memory_reused

    load = [round(v, 2) for v in os.getloadavg()] if hasattr(os, "getloadavg") else None
    return {"torch": torch.__version__, "device": str(device), "threads": torch.get_num_threads(),
            "reuse_host_memory": host_memory_reused(),
            "cpu_count": os.cpu_count(), "load_average": load, "machine": platform.machine(),
            "python": platform.python_version()}


def tokenizer_forward_backward(tokenizer: torch.nn.Module, points: torch.Tensor) -> None:
    """One training pass through the 3D tokenizer alone."""
    tokens, _ = tokenizer(points)
    tokens.backward(torch.ones_like(tokens))


def tokenizer_geometry(tokenizer: torch.nn.Module, points: torch.Tensor) -> None:
    """The FPS and kNN the tokenizer runs on ``points``, without its learned layers."""
    tokenizer.geometry(points)
