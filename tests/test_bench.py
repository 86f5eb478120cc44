"""Benchmarks: the ops subcommand runs end to end in quick mode and reports what it timed."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from any2point.bench import load_subcommand, subcommand_names
from any2point.bench.__main__ import main as bench_main


def test_subcommands_are_discovered_from_modules():
    names = subcommand_names()
    assert "ops" in names and "common" not in names
    assert callable(load_subcommand("ops").run)


def test_ops_quick():
    proc = subprocess.run([sys.executable, "-m", "any2point.bench", "ops", "--quick", "--json", "--threads", "1"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["benchmark"] == "ops" and result["quick"] is True
    assert result["environment"]["threads"] == 1 and result["environment"]["device"] == "cpu"
    assert set(result["results"]) == {"fps", "knn_k81", "knn_k64"}
    for name, r in result["results"].items():
        assert r["ours_ms"] > 0 and r["reference_ms"] > 0, name
        assert abs(r["speedup"] - r["reference_ms"] / r["ours_ms"]) < 1e-9, name
        assert r["agree"] is True, name


def test_ops_table_output(capsys):
    assert bench_main(["ops", "--quick", "--batch", "1"]) == 0
    out = capsys.readouterr().out
    assert "FPS 256 -> 128 -> 64 -> 32" in out and "kNN k=81" in out and "speedup" in out and "NO" not in out


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without CUDA")
def test_unavailable_device_is_a_clear_error(capsys):
    with pytest.raises(SystemExit) as exit_:
        bench_main(["ops", "--quick", "--device", "cuda"])
    assert exit_.value.code == 2
    assert "--device cuda: CUDA is not available" in capsys.readouterr().err
