"""Resident memory: the budget on what the heap keeps, evaluation in training-sized forward
batches, and the peak resident set in each run's metrics.json."""
from __future__ import annotations

import platform
import subprocess
import sys

import pytest
import torch

import any2point
from any2point import runtime
from any2point.distributed import DistContext
from any2point.engine import predict
from any2point.train import run_training

from ..tiny_run import TINY, compose_config

GLIBC = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"


@pytest.mark.skipif(not GLIBC, reason="malloc_trim and mallopt are glibc's")
def test_over_budget_the_kept_heap_is_handed_back_and_under_it_kept():
    """In a fresh process (the heap settings cannot be undone): with reuse on, a freed 256 MiB
    stays resident; under a budget above it nothing is released, over a budget below it the
    free memory goes back to the kernel."""
    code = (
        "import torch\n"
        "from any2point import runtime\n"
        "runtime.reuse_host_memory()\n"
        "base = runtime.resident_mb()\n"
        "a = torch.ones(64 * 2 ** 20); del a\n"
        "kept = runtime.resident_mb() - base\n"
        "runtime.set_host_memory_budget(base + 1024)\n"
        "under = runtime.respect_host_memory_budget(), runtime.resident_mb() - base\n"
        "runtime.set_host_memory_budget(base + 64)\n"
        "over = runtime.respect_host_memory_budget(), runtime.resident_mb() - base\n"
        "print(round(kept), under[0], round(under[1]), over[0], round(over[1]))\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    kept, under_released, under_kept, over_released, over_kept = proc.stdout.split()
    assert int(kept) >= 250 and under_released == "False" and int(under_kept) >= 250
    assert over_released == "True" and int(over_kept) < 64


def test_the_default_budget_is_half_the_machine_and_a_bad_one_is_refused(monkeypatch):
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    saved = runtime.host_memory_budget_mb()
    try:
        half = runtime.set_host_memory_budget(None)
        physical = runtime._physical_mb()
        assert physical is None or abs(half - physical / 2) < 1
        monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")  # torchrun: four processes share the machine
        assert physical is None or abs(runtime.set_host_memory_budget(None) - physical / 8) < 1
        assert runtime.set_host_memory_budget(3000) == 3000.0
        with pytest.raises(ValueError, match="host_memory_budget_mb must be positive"):
            runtime.set_host_memory_budget(0)
    finally:
        runtime._budget_mb = saved
    assert not runtime.respect_host_memory_budget()  # reuse is off in the test process: never trims


def test_evaluation_in_forward_batches_gives_the_same_predictions_with_no_larger_call():
    torch.manual_seed(0)
    model = any2point.create_model("tiny_2d", num_classes=5)
    g = torch.Generator().manual_seed(0)
    points = torch.randn(7, 128, 3, generator=g)
    points = points / points.norm(dim=-1, keepdim=True).amax(dim=1, keepdim=True)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(points, torch.arange(7) % 5), batch_size=7)
    loader.dataset.split, loader.dataset.class_names = "test", list("abcde")
    calls = []
    handle = model.register_forward_pre_hook(lambda _m, args: calls.append(args[0].shape[0]))
    whole = predict(model, loader, DistContext(torch.device("cpu")))
    calls_whole, calls[:] = list(calls), []
    parts = predict(model, loader, DistContext(torch.device("cpu")), forward_batch=3)
    handle.remove()
    assert calls_whole == [7] and calls == [3, 3, 1]
    assert (whole.preds == parts.preds).all()
    assert abs(whole.probs - parts.probs).max() < 1e-5


def test_a_run_reports_its_peak_resident_memory(tmp_path):
    metrics = run_training(compose_config("train", TINY), tmp_path / "run")
    assert metrics["peak_rss_mb"] >= runtime.resident_mb() * 0.5 > 0
