"""Process-wide settings: the host allocator."""
from __future__ import annotations

import platform

import pytest

from any2point.runtime import host_memory_reused, reuse_host_memory


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
                    reason="mallopt settings exist on glibc only")
def test_reuse_host_memory_is_accepted_by_glibc():
    """Both settings (no mmap for large blocks, never trim the heap) must be taken, else the
    trainer falls back to glibc's defaults and every step faults its activations in again."""
    assert reuse_host_memory() is True
    assert host_memory_reused()
