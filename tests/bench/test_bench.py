"""Benchmarks: the ops subcommand runs end to end in quick mode and reports what it timed."""
from __future__ import annotations

import json
import os
import platform
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


@pytest.mark.slow  # a bench subprocess
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
        assert r["agree"] is True, name


def test_ops_table_output(capsys):
    # in the test process: leave its allocator alone (test_runtime checks the setting in a subprocess)
    assert bench_main(["ops", "--quick", "--batch", "1", "--glibc-malloc-defaults"]) == 0
    out = capsys.readouterr().out
    assert "FPS 256 -> 128 -> 64 -> 32" in out and "kNN k=81" in out and "speedup" in out and "NO" not in out


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without CUDA")
def test_unavailable_device_is_a_clear_error(capsys):
    with pytest.raises(SystemExit) as exit_:
        bench_main(["ops", "--quick", "--device", "cuda", "--glibc-malloc-defaults"])
    assert exit_.value.code == 2
    assert "--device cuda: CUDA is not available" in capsys.readouterr().err


def _quick_json(subcommand: str) -> dict:
    proc = subprocess.run([sys.executable, "-m", "any2point.bench", subcommand, "--quick", "--json", "--threads", "1"],
                          capture_output=True, text=True, timeout=600, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout)


@pytest.mark.slow  # a bench subprocess
def test_model_quick_reports_every_figure_against_its_reference():
    r = _quick_json("model")
    assert r["matmul_peak"]["float32"]["tflops"] > 0 and r["step_tflop"] > 0 and 0 < r["mfu"] < 1
    parts = r["parts_ms"]
    assert {"tokenizer", "fps_knn", "blocks_with_adapters", "frozen_blocks", "guided_aggregation",
            "mini_attention"} <= set(parts) and all(v > 0 for v in parts.values())
    assert r["full_finetune_step_ms"] > 0
    assert r["environment"]["reuse_host_memory"] in (True, False)


@pytest.mark.slow  # a bench subprocess
def test_memory_quick_compares_with_full_fine_tuning():
    r = _quick_json("memory")
    rows = {(row["peft"], row["checkpointing"]): row for row in r["rows"] if row["part"] == "model"}
    assert set(rows) == {(peft, ckpt) for peft in ("any2point", "full") for ckpt in (False, True)}
    tokenizer = {row["checkpointing"]: row for row in r["rows"] if row["part"] == "tokenizer"}
    assert set(tokenizer) == {False, True} and len(r["rows"]) == 6
    assert 0 < tokenizer[True]["trainable_params"] < rows[("any2point", False)]["trainable_params"]
    assert rows[("full", False)]["trainable_params"] > rows[("any2point", False)]["trainable_params"]
    # like with like only: both without checkpointing, both with it
    assert "ratio_vs_full_with_checkpointing" not in r


@pytest.mark.slow
def test_userloop_quick_runs_the_plain_loop_with_and_without_the_heap_setting():
    r = _quick_json("userloop")
    assert [row["allocator"] for row in r["rows"]] == ["glibc defaults",
                                                        "GLIBC_TUNABLES=" + load_subcommand("userloop").HEAP_SETTING]
    for row in r["rows"]:
        assert row["step_ms"] >= row["step_min_ms"] > 0 and row["step_tflop"] > 0 and 0 < row["mfu"] < 1
        assert row["reuse_host_memory_called"] is False  # a plain script: the apps' mallopt never ran
        assert row["peak_rss_mb"] > row["tensor_peak_mb"] > 0  # the process holds the model and data too


@pytest.mark.slow
def test_compiled_quick_times_step_and_aggregation_both_ways():
    r = _quick_json("compiled")
    assert [row["what"] for row in r["rows"]] == ["training step", "guided aggregation, one block (fwd+bwd)"]
    assert all(row["eager_ms"] > 0 and row["compiled_ms"] > 0 and row["compile_s"] > 0 for row in r["rows"])


@pytest.mark.slow  # two fresh processes importing torch
@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="a glibc setting")
def test_heap_setting_keeps_freed_memory_in_the_process():
    """The documented GLIBC_TUNABLES value is one glibc accepts and acts on: a freed 64 MiB
    tensor stays resident with it and is handed back without it (fresh processes)."""
    code = ("import torch, resource\n"
            "rss = lambda: int(open('/proc/self/statm').read().split()[1]) * resource.getpagesize()\n"
            "a = torch.ones(16 * 2 ** 20); before = rss(); del a; print(before - rss())")
    heap = load_subcommand("userloop").HEAP_SETTING
    base = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES" and not k.startswith("MALLOC_")}
    returned = {}
    for setting in (False, True):
        env = {**base, "GLIBC_TUNABLES": heap} if setting else base
        proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr
        returned[setting] = int(proc.stdout.split()[-1])
    assert returned[False] >= 60 * 2 ** 20 and returned[True] < 2 ** 20


@pytest.mark.slow  # a bench subprocess
def test_tokenizer_quick_reports_mfu_and_geometry_share():
    r = _quick_json("tokenizer")
    assert r["fwd_bwd_ms"] > r["fwd_ms"] > 0 and r["params"] > 0 and 0 < r["mfu"] < 1


def test_interleaved_timing_alternates_the_functions():
    from any2point.bench.common import time_interleaved

    calls = []
    result = time_interleaved({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")},
                              torch.device("cpu"), warmup=1, repeats=3)
    assert calls == ["a", "b"] + ["a", "b"] * 3  # warm-up of each, then in turn
    assert set(result) == {"a", "b"} and all(r["repeats"] == 3 and r["min_ms"] <= r["median_ms"]
                                             for r in result.values())


def test_tensor_memory_counts_storages_until_freed_and_ignores_earlier_tensors():
    from any2point.bench.tensor_memory import TensorMemory

    mib = 2 ** 20
    before = torch.ones(1024, 1024)  # exists before the block: not counted
    with TensorMemory() as mem:
        a = torch.ones(1024, 256)  # 1 MiB
        b = a + before[:, :256]  # 1 MiB more: 2 MiB live
        del a  # 1 MiB live
        view = b.view(-1)  # same storage: nothing new
        c = torch.empty(2048, 512)  # 4 MiB: 5 MiB live, the peak
        del b  # the view keeps the storage alive
        assert mem.live_bytes == 5 * mib
        del view, c
    assert mem.peak_bytes == 5 * mib and mem.live_bytes == 0


def test_tensor_memory_sees_backward_and_saved_tensors():
    from any2point.bench.tensor_memory import TensorMemory

    x = torch.randn(512, 512, requires_grad=True)  # 1 MiB leaf, made before
    with TensorMemory() as mem:
        y = (x * 2).relu()  # relu keeps its 1 MiB output for backward
        y.sum().backward()
        del y
    assert x.grad is not None
    assert mem.live_bytes == 2 ** 20  # x.grad, made in backward
    assert mem.peak_bytes >= 3 * 2 ** 20  # saved output + the gradients flowing back


def test_seam_reports_share_and_attention_shift_per_seam(capsys):
    """Quick mode on tiny_1d (post-LN); on tiny_2d (pre-LN) the two seams are the same computation."""
    args = ["--quick", "--json", "--glibc-malloc-defaults", "--weights", "random,shuffled"]
    assert bench_main(["seam", *args]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["source"] == "tiny_1d" and r["tokens"] == 32
    assert [(row["weights"], row["seam"]) for row in r["rows"]] == [
        ("random", "after_norm"), ("random", "before_norm"), ("shuffled", "after_norm"), ("shuffled", "before_norm")]
    for row in r["rows"]:
        assert row["post_norm"] and len(row["share"]) == len(row["attention_entropy"]) == 2
        assert len(row["attention_tv"]) == 1
        assert all(0 < v < 1 for v in row["share"] + row["attention_tv"])
        assert all(0 < v <= 1 for v in row["attention_entropy"])
    assert bench_main(["seam", *args, "--source", "tiny_2d"]) == 0
    rows = json.loads(capsys.readouterr().out)["rows"]
    assert not rows[0]["post_norm"] and rows[0]["share"] == rows[1]["share"]
    assert rows[0]["attention_tv"] == rows[1]["attention_tv"]
    assert bench_main(["seam", "--quick", "--glibc-malloc-defaults"]) == 0
    assert "total variation of the next block's attention" in capsys.readouterr().out
