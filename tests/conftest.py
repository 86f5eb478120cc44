"""Fixtures shared by several test files (pytest injects them by name; nothing imports this file).

Plain helpers called with arguments stay modules of the ``tests`` package (see ``__init__.py``):
``tiny_run`` (test-sized settings, app launchers) and ``data_files`` (file writers).
"""
from __future__ import annotations

import os
from pathlib import Path

# No model hub here and none needed: tests never download. huggingface_hub reads the flag once,
# at import, so it is set before anything imports it (else an offline check waits on the network).
os.environ["HF_HUB_OFFLINE"] = "1"

import pytest
from hydra import initialize_config_module
from hydra.core.global_hydra import GlobalHydra

import any2point.ops
from any2point.config import CONFIG_MODULE
from any2point.runtime import host_memory_reused

from .tiny_run import TINY, compose_config


@pytest.fixture(scope="session", autouse=True)
def allocator_left_alone():
    """glibc's mallopt settings (``reuse_host_memory``) last for the process: a test that turns
    them on inside pytest changes every later test's memory behaviour, so it must use a subprocess
    (``tiny_run.compose_config`` turns them off for in-process runs)."""
    yield
    assert not host_memory_reused(), "a test switched on reuse_host_memory in the pytest process"


@pytest.fixture
def hydra_conf():
    """Hydra initialised on the package's configs for the test (``compose`` works inside)."""
    GlobalHydra.instance().clear()
    with initialize_config_module(config_module=CONFIG_MODULE, version_base="1.3"):
        yield
    GlobalHydra.instance().clear()


@pytest.fixture
def fps_calls(monkeypatch) -> list[int]:
    """Counts the clouds passed to any2point.ops.furthest_point_sample (one entry per call: its batch size)."""
    calls = []
    real = any2point.ops.furthest_point_sample

    def counting(xyz, n, *args, **kwargs):
        calls.append(xyz.shape[0])
        return real(xyz, n, *args, **kwargs)

    monkeypatch.setattr(any2point.ops, "furthest_point_sample", counting)
    return calls


@pytest.fixture(scope="session")
def finished_tiny_run(tmp_path_factory) -> Path:
    """A finished one-epoch tiny run (checkpoint, last.safetensors, metrics.json, ...), made once
    per session; tests that change it work on a copy."""
    from any2point.train import run_training

    run = tmp_path_factory.mktemp("finished") / "run"
    run_training(compose_config("train", TINY), run)
    return run


@pytest.fixture(scope="module")
def module_cache(tmp_path_factory):
    """An any2point cache of the test file's own (``ANY2POINT_CACHE``): the first use of a
    converted source (dinov2_small, e5_small) converts into it, later tests reuse it."""
    path = tmp_path_factory.mktemp("a2p-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ANY2POINT_CACHE", str(path))
        yield path
