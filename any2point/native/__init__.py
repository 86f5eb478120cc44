"""Small C kernels for the guided aggregation on the CPU, compiled on first use with the
machine's C compiler.

Plain C (no PyTorch headers), so building takes about two seconds; the shared library is
cached under ``<any2point cache>/native``, keyed by the sources, the compiler and the CPU
(it is built with ``-march=native``, so a cache shared between different machines never
hands one the other's build). The kernels run on torch's OpenMP threads. Without a C
compiler, or with ``ANY2POINT_NATIVE=0``, every caller takes its PyTorch path, which gives
the same results up to rounding (tests/test_native.py).
"""
from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import shlex
import shutil
import subprocess
import sysconfig
import tempfile
import warnings
from pathlib import Path

import torch

__all__ = ["library", "native_enabled", "kernels_apply", "call", "run_bounds"]

_HERE = Path(__file__).resolve().parent
_SOURCES = ("kernels.c", "instantiate.h", "projected_pooling.h", "pair_attention.h", "guided_sum.h", "grouped_norm.h")
_FLAGS = ("-O3", "-ffp-contract=fast", "-fopenmp-simd", "-shared", "-fPIC", "-std=c99")
# Tried in turn until one builds. With -fopenmp the kernels run on torch's own OpenMP threads
# (its libgomp is already loaded, and the loader reuses it), which matters: Python threads
# would compete with torch's OpenMP workers, which spin for a while after each parallel op.
_VARIANTS = (("-march=native", "-fopenmp"), ("-fopenmp",), ())


def native_enabled() -> bool:
    return os.environ.get("ANY2POINT_NATIVE", "1").strip().lower() not in ("0", "false", "no", "off")


def _compiler() -> list[str] | None:
    """$CC, else the compiler Python was built with, else cc or gcc: as a command (it may be
    a wrapper such as "ccache gcc")."""
    for candidate in (os.environ.get("CC"), sysconfig.get_config_var("CC"), "cc", "gcc"):
        command = shlex.split(candidate or "")
        if command and shutil.which(command[0]):
            return command
    return None


def _cpu_identity() -> str:
    """What a -march=native build depends on: the CPU's name and instruction set flags."""
    lines = []
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(("model name", "flags", "Features", "CPU part")):
                    lines.append(line.strip())
                if len(lines) >= 3:
                    break
    except OSError:
        pass
    return platform.machine() + platform.processor() + "".join(lines)


def _build(compiler: list[str], target: Path) -> None:
    """Compiles to a temporary file beside ``target`` and renames it, so concurrent processes
    never load a half-written library."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=target.parent)
    os.close(fd)
    errors = []
    try:
        for variant in _VARIANTS:
            cmd = [*compiler, *_FLAGS, *variant, "-o", tmp, str(_HERE / _SOURCES[0]), "-lm"]
            done = subprocess.run(cmd, capture_output=True, text=True)
            if done.returncode == 0:
                os.replace(tmp, target)
                return
            errors.append(f"{' '.join(cmd)}\n{done.stderr.strip()}")
        raise OSError("building the native kernels failed:\n" + "\n".join(errors))
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


# Each kernel's arguments in order: "i" a 64-bit int, "r" a scalar of the kernel's floating type,
# "p" a pointer; all return an int status.
_SIGNATURES = {
    "projected_pooling_forward": "i" * 6 + "p" * 10,
    "projected_pooling_backward": "i" * 5 + "p" * 14,
    "pair_attention_forward": "i" * 5 + "r" + "p" * 5,
    "pair_attention_backward": "i" * 5 + "r" + "p" * 7,
    "guided_sum_forward": "i" * 4 + "p" * 7,
    "guided_sum_backward": "i" * 4 + "p" * 9,
    "grouped_norm_forward": "i" * 3 + "r" + "p" * 8,
    "grouped_norm_backward": "i" * 3 + "r" + "p" * 10,
}


def _declare(lib: ctypes.CDLL) -> ctypes.CDLL:
    """Argument types, so a wrong call is a Python error rather than a crash."""
    for suffix, real in (("f32", ctypes.c_float), ("f64", ctypes.c_double)):
        kinds = {"i": ctypes.c_int64, "r": real, "p": ctypes.c_void_p}
        for name, signature in _SIGNATURES.items():
            kernel = getattr(lib, f"{name}_{suffix}")
            kernel.argtypes = [kinds[k] for k in signature]
            kernel.restype = ctypes.c_int
    return lib


@functools.lru_cache(maxsize=1)
def library() -> ctypes.CDLL | None:
    """The compiled kernels, built once per machine; None when disabled or when no C
    compiler can build them (then a warning says why, once)."""
    if not native_enabled():
        return None
    compiler = _compiler()
    if compiler is None:
        warnings.warn("any2point: no C compiler found (set CC); the guided aggregation takes its PyTorch path, "
                      "which is slower on the CPU", RuntimeWarning, stacklevel=2)
        return None
    from any2point.weights import cache_dir

    key = hashlib.sha256()
    for name in _SOURCES:
        key.update((_HERE / name).read_bytes())
    version = subprocess.run([*compiler, "--version"], capture_output=True, text=True).stdout
    key.update(" ".join((*compiler, version, *_FLAGS, *map(" ".join, _VARIANTS), _cpu_identity())).encode())
    try:  # an unwritable cache is an OSError too
        target = cache_dir() / "native" / f"any2point_kernels-{key.hexdigest()[:16]}.so"
        if not target.exists():
            _build(compiler, target)
        return _declare(ctypes.CDLL(str(target)))
    except OSError as error:
        warnings.warn(f"any2point: {error}\nthe guided aggregation takes its PyTorch path instead", RuntimeWarning,
                      stacklevel=2)
        return None


def kernels_apply(*tensors: torch.Tensor) -> bool:
    """Whether the kernels can take these tensors: CPU, one floating type they are built for,
    the library available, and not while torch.compile traces (it cannot see into ctypes)."""
    dtype = tensors[0].dtype
    return (all(t.device.type == "cpu" and t.dtype == dtype for t in tensors)
            and dtype in (torch.float32, torch.float64)
            and not torch.compiler.is_compiling() and library() is not None)


def run_bounds(starts: torch.Tensor, total: int) -> torch.Tensor:
    """Where each run begins, and the end of the last: the (n + 1,) bounds the kernels take for
    runs listed by their starts (n,) over ``total`` entries (a cell's rows, a query's pairs)."""
    return torch.cat([starts, starts.new_tensor([total])])


def call(name: str, dtype: torch.dtype, *args, errors: dict[int, str] | None = None) -> None:
    """Calls ``<name>_f32`` or ``<name>_f64``; tensors go as pointers to their (contiguous) data.
    A kernel returns 0, 1 when out of memory, or a status that ``errors`` explains."""
    errors = errors or {}
    kernel = getattr(library(), f"{name}_{'f32' if dtype == torch.float32 else 'f64'}")
    status = kernel(*(ctypes.c_void_p(a.data_ptr()) if isinstance(a, torch.Tensor) else a for a in args))
    if status == 1:
        raise MemoryError(f"{name}: out of memory for its buffers")
    if status != 0:
        raise ValueError(f"{name}: {errors.get(status, f'failed with status {status}')}")
