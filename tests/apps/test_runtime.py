"""Process-wide settings: the host allocator (checked in a fresh process: mallopt cannot be undone)."""
from __future__ import annotations

import platform
import subprocess
import sys

import pytest


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
                    reason="mallopt settings exist on glibc only")
def test_reuse_host_memory_is_accepted_by_glibc():
    """Both settings (no mmap for large blocks, never trim the heap) must be taken, else the
    trainer falls back to glibc's defaults and every step faults its activations in again."""
    code = ("from any2point.runtime import host_memory_reused, reuse_host_memory\n"
            "before = host_memory_reused()\n"
            "print(before, reuse_host_memory(), host_memory_reused())")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["False", "True", "True"]
