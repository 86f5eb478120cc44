"""``memory``: peak memory of a training step, PEFT against full fine-tuning of the same model,
each with and without activation checkpointing, and the trainable tokenizer alone (the part
every variant shares, so the floor of any ratio).

Each configuration runs in a fresh process (spawned), so one cannot inherit another's
high-water mark. The figure is the peak of the tensor memory the steps allocate (weights
and data excluded; activations, saved tensors, gradients and optimizer state included): on
CUDA ``torch.cuda.max_memory_allocated``, on the CPU the same quantity counted operator by
operator (``tensor_memory.TensorMemory``), because the process's resident set depends on
what the allocator keeps (with ``reuse_host_memory``, every freed block). That resident
peak is reported too, with the growth during the steps over the resident set before them.
"""
from __future__ import annotations

import argparse
import multiprocessing
import resource

import torch

from .common import environment
from .tensor_memory import TensorMemory

HELP = "peak memory of a training step: the PEFT method against full fine-tuning, each with and without checkpointing"

FULL = {"source": "minilm", "batch": 32, "points": 1024, "steps": 2}
QUICK = {"source": "tiny_1d", "batch": 2, "points": 256, "steps": 1}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--source", default=None, help="registered source (default minilm; quick: tiny_1d)")
    parser.add_argument("--batch", type=int, default=None)
    parser.add_argument("--points", type=int, default=None)
    parser.add_argument("--peft", default="any2point")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--weights", default="auto", choices=["auto", "pretrained", "random"])
    parser.add_argument("--seed", type=int, default=0)


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2 ** 20


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def _measure(config: dict) -> dict:
    """Runs in a fresh process: build, then ``steps`` training steps; memory of the steps."""
    import any2point

    from .common import tokenizer_forward_backward
    from .model import NUM_CLASSES, build, training_step, unit_clouds

    torch.set_num_threads(config["threads"])
    if config["reuse_host_memory"]:  # as the training runs do (a spawned process starts without it)
        from ..runtime import reuse_host_memory

        reuse_host_memory()
    device = torch.device(config["device"])
    torch.manual_seed(config["seed"])
    model = build(config["source"], config["peft"], config["pretrained"], device,
                  checkpointing=config["checkpointing"])
    points = unit_clouds(config["batch"], config["points"], device, config["seed"])
    labels = torch.randint(0, NUM_CLASSES, (config["batch"],), device=device)
    if config["part"] == "tokenizer":  # the floor every variant shares: the trainable tokenizer alone
        model.train()

        def step():
            tokenizer_forward_backward(model.tokenizer, points)
    else:
        step, _ = training_step(model, points, labels, config["dtype"])
    rss_before, rss_peak_before = _rss_mb(), _peak_rss_mb()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device) / 2 ** 20
        for _ in range(config["steps"]):
            step()
        torch.cuda.synchronize(device)
        step_mb = torch.cuda.max_memory_allocated(device) / 2 ** 20 - before
    else:
        with TensorMemory() as counted:
            for _ in range(config["steps"]):
                step()
        step_mb = counted.peak_bytes / 2 ** 20
    rss_peak = _peak_rss_mb()
    # The high-water mark only moves if the steps exceed every earlier peak (model loading).
    rss_growth = max(rss_peak - rss_before, 0.0) if rss_peak > rss_peak_before else float("nan")
    trainable = (sum(p.numel() for p in model.tokenizer.parameters()) if config["part"] == "tokenizer"
                 else any2point.parameter_report(model)["trainable"])
    return {"part": config["part"], "peft": config["peft"], "checkpointing": config["checkpointing"],
            "step_mb": step_mb, "process_peak_mb": rss_peak, "peak_rss_mb": rss_peak, "process_growth_mb": rss_growth,
            "trainable_params": trainable}


def _in_fresh_process(config: dict) -> dict:
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(1) as pool:
        return pool.apply(_measure, (config,))


def run(args: argparse.Namespace) -> dict:
    import any2point

    base = QUICK if args.quick else FULL
    s = {key: getattr(args, key, None) or base[key] for key in base}
    spec = any2point.get_source_spec(s["source"])
    pretrained = args.weights == "pretrained" or (args.weights == "auto" and spec.weights_available())
    common = {**s, "device": str(args.device), "threads": args.threads, "dtype": args.dtype, "seed": args.seed,
              "pretrained": pretrained, "reuse_host_memory": args.reuse_host_memory}
    runs = [("model", peft, ckpt) for peft in (args.peft, "full") for ckpt in (False, True)]
    runs += [("tokenizer", args.peft, ckpt) for ckpt in (False, True)]
    rows = [_in_fresh_process({**common, "part": part, "peft": peft, "checkpointing": ckpt})
            for part, peft, ckpt in runs]
    peft_row, ckpt_row, full_row, full_ckpt_row, _, tokenizer_ckpt_row = rows
    return {
        "subcommand": "memory", "settings": {**s, "peft": args.peft, "dtype": args.dtype, "pretrained": pretrained},
        "environment": environment(args.device), "rows": rows,
        # like with like: both store their activations, or both recompute them
        "ratio_vs_full": peft_row["step_mb"] / full_row["step_mb"],
        "ratio_both_checkpointed": ckpt_row["step_mb"] / full_ckpt_row["step_mb"],
        # the share of the checkpointed step's peak that the tokenizer alone reaches
        "tokenizer_share_with_checkpointing": tokenizer_ckpt_row["step_mb"] / ckpt_row["step_mb"],
    }


def report(r: dict) -> str:
    s = r["settings"]
    lines = [f"source {s['source']}, batch {s['batch']} x {s['points']} points, {s['dtype']}, "
             f"{r['environment']['device']} (load {r['environment']['load_average']})",
             "", f"{'method':<34}{'step peak MB':>14}{'resident: peak':>16}{'growth':>9}{'trainable':>12}"]
    for row in r["rows"]:
        name = (row["peft"] if row["part"] == "model" else "tokenizer alone") + (
            " + checkpointing" if row["checkpointing"] else "")
        lines.append(f"{name:<34}{row['step_mb']:>14.0f}{row['process_peak_mb']:>16.0f}{row['process_growth_mb']:>9.0f}"
                     f"{row['trainable_params']:>12,}")
    lines += ["", f"{s['peft']} / full fine-tuning, both without checkpointing: {r['ratio_vs_full']:.2f}x; "
                  f"both with checkpointing: {r['ratio_both_checkpointed']:.2f}x",
              f"the tokenizer alone (checkpointed) reaches {r['tokenizer_share_with_checkpointing']:.0%} "
              f"of the checkpointed {s['peft']} step's peak",
              "(step peak: tensor memory of the steps; resident: the process's peak resident set and its growth "
              "during the steps, which depend on what the allocator keeps)"]
    return "\n".join(lines)
