"""Small C kernels for the CPU, compiled on first use with the machine's C compiler.

Plain C (no PyTorch headers), so building takes about a second; the shared library is
cached under ``<any2point cache>/native``, keyed by the sources, the compiler and the CPU
(it is built with ``-march=native``, so a cache shared between different machines never
hands one the other's build). Without a C compiler, or with ``ANY2POINT_NATIVE=0``, every
caller takes its pure-PyTorch path, which gives the same results.
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

__all__ = ["library", "native_enabled", "kernels_apply", "call"]

_HERE = Path(__file__).resolve().parent
_SOURCES = ("kernels.c", "projected_pooling.h", "pair_attention.h", "guided_sum.h", "grouped_norm.h")
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


def _declare(lib: ctypes.CDLL) -> ctypes.CDLL:
    """Argument types, so a wrong call is a Python error rather than a crash."""
    long, ptr, real = ctypes.c_int64, ctypes.c_void_p, {"f32": ctypes.c_float, "f64": ctypes.c_double}
    for suffix in ("f32", "f64"):
        forward = getattr(lib, f"projected_pooling_forward_{suffix}")
        forward.argtypes = [long] * 6 + [ptr] * 10
        backward = getattr(lib, f"projected_pooling_backward_{suffix}")
        backward.argtypes = [long] * 5 + [ptr] * 14
        forward.restype = backward.restype = ctypes.c_int
        forward = getattr(lib, f"pair_attention_forward_{suffix}")
        forward.argtypes = [long] * 5 + [real[suffix]] + [ptr] * 5
        backward = getattr(lib, f"pair_attention_backward_{suffix}")
        backward.argtypes = [long] * 5 + [real[suffix]] + [ptr] * 7
        forward.restype = backward.restype = ctypes.c_int
        forward = getattr(lib, f"guided_sum_forward_{suffix}")
        forward.argtypes = [long] * 4 + [ptr] * 7
        backward = getattr(lib, f"guided_sum_backward_{suffix}")
        backward.argtypes = [long] * 5 + [ptr] * 9
        forward.restype = backward.restype = ctypes.c_int
        forward = getattr(lib, f"grouped_norm_forward_{suffix}")
        forward.argtypes = [long] * 3 + [real[suffix]] + [ptr] * 8
        backward = getattr(lib, f"grouped_norm_backward_{suffix}")
        backward.argtypes = [long] * 3 + [real[suffix]] + [ptr] * 10
        forward.restype = backward.restype = ctypes.c_int
    return lib


@functools.lru_cache(maxsize=1)
def library() -> ctypes.CDLL | None:
    """The compiled kernels, built once per machine; None when disabled or when no C
    compiler can build them (then a warning says why, once)."""
    if not native_enabled():
        return None
    compiler = _compiler()
    if compiler is None:
        warnings.warn("any2point: no C compiler found (set CC); using the pure-PyTorch path for the guided "
                      "aggregation's pooling, which is slower on the CPU", RuntimeWarning, stacklevel=2)
        return None
    from any2point.weights import cache_dir

    key = hashlib.sha256()
    for name in _SOURCES:
        key.update((_HERE / name).read_bytes())
    version = subprocess.run([*compiler, "--version"], capture_output=True, text=True).stdout
    key.update(" ".join((*compiler, version, *_FLAGS, *map(" ".join, _VARIANTS), _cpu_identity())).encode())
    target = cache_dir() / "native" / f"any2point_kernels-{key.hexdigest()[:16]}.so"
    try:
        if not target.exists():
            _build(compiler, target)
        return _declare(ctypes.CDLL(str(target)))
    except OSError as error:
        warnings.warn(f"any2point: {error}\nusing the pure-PyTorch path instead", RuntimeWarning, stacklevel=2)
        return None


def kernels_apply(*tensors: torch.Tensor) -> bool:
    """Whether the kernels can take these tensors: CPU, one floating type they are built for,
    the library available, and not while torch.compile traces (it cannot see into ctypes)."""
    dtype = tensors[0].dtype
    return (all(t.device.type == "cpu" and t.dtype == dtype for t in tensors)
            and dtype in (torch.float32, torch.float64)
            and not torch.compiler.is_compiling() and library() is not None)


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
