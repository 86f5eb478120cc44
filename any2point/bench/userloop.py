"""``userloop``: the training step as a user's own script runs it, outside our apps.

``create_model``, ``torch.optim.AdamW`` on the trainable parameters, forward, cross-entropy,
backward, step; nothing else of the trainer (no clipping, no decay groups, no allocator
setting). Each row runs in a fresh Python process, so nothing the bench process set carries
over: once with glibc's allocator defaults, once with the one environment setting that
gives a plain script what the apps' ``trainer.reuse_host_memory`` gives them (freed
activation memory stays in the heap instead of being unmapped and faulted in again on the
next step; see ``any2point.runtime.reuse_host_memory``):

    GLIBC_TUNABLES=glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=18446744073709551615
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

import torch

from .common import environment, matmul_peak, ratio

HELP = "a plain user training loop (create_model + AdamW) in fresh processes, glibc defaults vs the heap setting"

FULL = {"source": "minilm", "batch": 32, "points": 1024, "repeats": 3}
QUICK = {"source": "tiny_1d", "batch": 2, "points": 256, "repeats": 1}
# glibc: serve large blocks from the heap (no mmap) and never hand the heap's top back
HEAP_SETTING = "glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=18446744073709551615"
_ALLOCATOR_ENV = ("GLIBC_TUNABLES", "MALLOC_MMAP_MAX_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_",
                  "MALLOC_TOP_PAD_", "MALLOC_ARENA_MAX")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--source", default=None, help="registered source (default minilm; quick: tiny_1d)")
    parser.add_argument("--batch", type=int, default=None, help="clouds per step (default 32)")
    parser.add_argument("--points", type=int, default=None, help="points per cloud (default 1024)")
    parser.add_argument("--weights", default="auto", choices=["auto", "pretrained", "random"])
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)


def plain_loop(config: dict) -> dict:
    """Runs in the fresh process: the user's loop, timed step by step after one warm-up step."""
    import statistics
    import time

    import torch.nn.functional as F

    import any2point
    from any2point.runtime import host_memory_reused, peak_resident_mb

    from .model import count_flops, unit_clouds
    from .tensor_memory import TensorMemory

    torch.set_num_threads(config["threads"])
    torch.manual_seed(config["seed"])
    model = any2point.create_model(config["source"], num_classes=40, pretrained=config["pretrained"]).train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=5e-4, weight_decay=0.05)
    points = unit_clouds(config["batch"], config["points"], torch.device("cpu"), config["seed"])
    labels = torch.randint(0, 40, (config["batch"],))

    def forward_backward():
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(model(points), labels).backward()

    flops = count_flops(forward_backward)
    times = []
    for i in range(1 + config["repeats"]):
        start = time.perf_counter()
        forward_backward()
        optimizer.step()
        if i:  # the first step warms up
            times.append((time.perf_counter() - start) * 1e3)
    with TensorMemory() as counted:  # after the timed steps: the counter slows the step it watches
        forward_backward()
        optimizer.step()
    return {"step_ms": statistics.median(times), "step_min_ms": min(times), "step_tflop": flops / 1e12,
            "tensor_peak_mb": counted.peak_bytes / 2 ** 20, "peak_rss_mb": peak_resident_mb(),
            "reuse_host_memory_called": host_memory_reused()}


def _in_fresh_process(config: dict, heap_setting: bool) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in _ALLOCATOR_ENV}
    if heap_setting:
        env["GLIBC_TUNABLES"] = HEAP_SETTING
    code = ("import json, sys; from any2point.bench.userloop import plain_loop; "
            "print(json.dumps(plain_loop(json.loads(sys.argv[1]))))")
    proc = subprocess.run([sys.executable, "-c", code, json.dumps(config)], env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"the plain loop failed in its process:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def run(args: argparse.Namespace) -> dict:
    import any2point

    if args.device.type != "cpu":
        raise ValueError("userloop measures the CPU allocator's effect; run it with --device cpu")
    base = QUICK if args.quick else FULL
    s = {key: getattr(args, key, None) or base[key] for key in base}
    spec = any2point.get_source_spec(s["source"])
    pretrained = args.weights == "pretrained" or (args.weights == "auto" and spec.weights_available())
    config = {**s, "threads": args.threads, "seed": args.seed, "pretrained": pretrained}
    peak = matmul_peak(args.device, torch.float32)["tflops"]
    rows = []
    for heap_setting in (False, True):
        row = _in_fresh_process(config, heap_setting)
        row["allocator"] = f"GLIBC_TUNABLES={HEAP_SETTING}" if heap_setting else "glibc defaults"
        row["mfu"] = row["step_tflop"] / (row["step_ms"] / 1e3) / peak
        rows.append(row)
    return {"subcommand": "userloop", "settings": {**s, "pretrained": pretrained},
            "environment": environment(args.device), "matmul_peak_tflops": peak, "rows": rows,
            "heap_setting_speedup": ratio(rows[0]["step_ms"], rows[1]["step_ms"])}


def report(r: dict) -> str:
    s, env = r["settings"], r["environment"]
    lines = [f"plain loop: create_model({s['source']!r}) ({'pretrained' if s['pretrained'] else 'random'} weights), "
             f"AdamW, batch {s['batch']} x {s['points']} points, float32, {env['threads']} threads "
             f"(load {env['load_average']}); matmul peak {r['matmul_peak_tflops'] * 1e3:.0f} GFLOP/s",
             f"{'allocator':<24}{'step ms':>10}{'MFU':>8}{'tensor peak MB':>16}{'peak resident MB':>18}"]
    for row in r["rows"]:
        name = "heap setting" if row["allocator"] != "glibc defaults" else row["allocator"]
        lines.append(f"{name:<24}{row['step_ms']:>10.0f}{100 * row['mfu']:>7.1f}%{row['tensor_peak_mb']:>16.0f}"
                     f"{row['peak_rss_mb']:>18.0f}")
    lines += [f"the heap setting makes the step {r['heap_setting_speedup']:.2f}x as fast",
              "(tensor peak: the tensors one step allocates; peak resident: the process's ru_maxrss, model and "
              "data included, and what the allocator keeps)",
              f"heap setting: GLIBC_TUNABLES={HEAP_SETTING}"]
    return "\n".join(lines)
