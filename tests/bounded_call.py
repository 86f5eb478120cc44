"""Run one reader call in a forked child capped in memory and time, and report what it cost.

The child's address space is capped at its size at the fork plus ``extra_bytes``
(``RLIMIT_AS``), so a reader that would allocate gigabytes fails there with a MemoryError
instead of taking the shared machine's memory; ``SIGALRM`` stops it after ``seconds``. Its
peak resident memory is measured from its size at the fork (the kernel's high-water mark,
reset with ``/proc/self/clear_refs``), so the numbers are the reader's own, not pytest's.
"""
from __future__ import annotations

import json
import os
import resource
import signal
import time
from dataclasses import dataclass
from typing import Callable

from any2point.errors import DataError

GIB = 1 << 30


@dataclass(frozen=True)
class Outcome:
    kind: str  # "ok" (returned), "DataError", or the name of any other exception
    message: str  # the error's message, or repr of what the call returned
    seconds: float
    extra_bytes: int  # peak resident memory above the child's size at the fork


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def _child(call: Callable[[], object], seconds: float, extra_bytes: int, send: int) -> None:
    def out_of_time(*_):
        raise TimeoutError(f"still running after {seconds} s")

    # The parent's OpenMP thread pool does not survive the fork (GNU libgomp): a parallel
    # region in the child would wait for threads that do not exist. One thread runs inline.
    import torch

    torch.set_num_threads(1)

    signal.signal(signal.SIGALRM, out_of_time)
    try:
        with open("/proc/self/clear_refs", "w") as f:  # peak RSS := current RSS
            f.write("5")
    except OSError:
        pass
    base_rss = _status_kib("VmRSS") * 1024
    mapped = _status_kib("VmSize") * 1024
    resource.setrlimit(resource.RLIMIT_AS, (mapped + extra_bytes, resource.RLIM_INFINITY))
    signal.setitimer(signal.ITIMER_REAL, seconds)
    start = time.perf_counter()
    try:
        kind, message = "ok", repr(call())[:500]
    except DataError as exc:
        kind, message = "DataError", str(exc)
    except BaseException as exc:  # noqa: BLE001 - every other outcome is reported to the test
        kind, message = type(exc).__name__, str(exc)[:2000]
    elapsed = time.perf_counter() - start
    signal.setitimer(signal.ITIMER_REAL, 0)
    peak = _status_kib("VmHWM") * 1024
    report = json.dumps({"kind": kind, "message": message, "seconds": elapsed,
                         "extra_bytes": max(0, peak - base_rss)}).encode()
    os.write(send, report)


def bounded(call: Callable[[], object], seconds: float = 10.0, extra_bytes: int = GIB) -> Outcome:
    """``call()`` in a forked child with ``extra_bytes`` more address space than at the fork
    and ``seconds`` of wall time; what it raised or returned, how long it took and its peak
    memory growth."""
    receive, send = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        os.close(receive)
        try:
            _child(call, seconds, extra_bytes, send)
        finally:
            os._exit(0)
    os.close(send)
    deadline = time.monotonic() + seconds + 20  # the alarm fires inside; this is for a child stuck in C
    chunks = []
    try:
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                os.kill(pid, signal.SIGKILL)
                break
            import select

            ready, _, _ = select.select([receive], [], [], remaining)
            if not ready:
                continue
            chunk = os.read(receive, 1 << 16)
            if not chunk:
                break
            chunks.append(chunk)
    finally:
        os.close(receive)
        _, status = os.waitpid(pid, 0)
    if not chunks:
        return Outcome("killed", f"the child ended without a report (wait status {status})", float("inf"), -1)
    report = json.loads(b"".join(chunks))
    return Outcome(report["kind"], report["message"], report["seconds"], report["extra_bytes"])
