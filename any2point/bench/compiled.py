"""``compiled``: what ``torch.compile`` gains over eager, for the training step and for the
guided aggregation alone, on the same model and inputs.

The compiled side is ``torch.compile(..., dynamic=True)`` (the voxel count changes from
batch to batch), timed at steady state after its first call; that first call (tracing and
code generation) is reported separately as ``compile_s``. With ``--checkpointing`` both sides
recompute their activations in backward.
"""
from __future__ import annotations

import argparse
import time

import torch

from .common import environment, ratio, synchronize, time_interleaved

HELP = "training step and guided aggregation: torch.compile against eager"

FULL = {"source": "minilm", "batch": 32, "points": 1024, "repeats": 3}
QUICK = {"source": "tiny_1d", "batch": 2, "points": 256, "repeats": 1}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--source", default=None, help="registered source (default minilm; quick: tiny_1d)")
    parser.add_argument("--batch", type=int, default=None, help="clouds per step (default 32)")
    parser.add_argument("--points", type=int, default=None, help="points per cloud (default 1024)")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--weights", default="auto", choices=["auto", "pretrained", "random"])
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--checkpointing", action="store_true", help="activation checkpointing on both sides")
    parser.add_argument("--backend", default="inductor", help="torch.compile backend (default inductor)")
    parser.add_argument("--seed", type=int, default=0)


def _first_call_s(fn, device: torch.device) -> float:
    start = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - start


def _row(what: str, eager_fn, compiled_fn, device: torch.device, repeats: int) -> dict:
    compile_s = _first_call_s(compiled_fn, device)
    timed = time_interleaved({"eager": eager_fn, "compiled": compiled_fn}, device, repeats=repeats, grad=True)
    return {"what": what, "eager_ms": timed["eager"]["median_ms"], "compiled_ms": timed["compiled"]["median_ms"],
            "speedup": ratio(timed["eager"]["median_ms"], timed["compiled"]["median_ms"]), "compile_s": compile_s}


def run(args: argparse.Namespace) -> dict:
    import any2point
    from any2point.peft import guided_adapters

    from .model import NUM_CLASSES, build, training_step, unit_clouds

    base = QUICK if args.quick else FULL
    s = {key: getattr(args, key, None) or base[key] for key in base}
    device = args.device
    spec = any2point.get_source_spec(s["source"])
    pretrained = args.weights == "pretrained" or (args.weights == "auto" and spec.weights_available())
    torch.manual_seed(args.seed)
    model = build(s["source"], "any2point", pretrained, device, checkpointing=args.checkpointing)
    points = unit_clouds(s["batch"], s["points"], device, args.seed)
    labels = torch.randint(0, NUM_CLASSES, (s["batch"],), device=device)
    rows = []

    eager_step, _ = training_step(model, points, labels, args.dtype)
    compiled_step, _ = training_step(torch.compile(model, dynamic=True, backend=args.backend), points, labels,
                                     args.dtype)
    rows.append(_row("training step", eager_step, compiled_step, device, s["repeats"]))

    with torch.no_grad():
        x, context = model.embed(points)
    tokens = x[:, 1:].detach().clone().requires_grad_(True)
    grad = torch.randn_like(tokens)
    adapters = guided_adapters(model)  # peft=any2point: its per-pass state is the cells
    compiled_aggregate = torch.compile(adapters.aggregate, dynamic=True, backend=args.backend)

    def aggregation(fn):
        def call():
            tokens.grad = None
            fn(0, tokens, context.state).backward(grad)
        return call

    rows.append(_row("guided aggregation, one block (fwd+bwd)", aggregation(adapters.aggregate),
                     aggregation(compiled_aggregate), device, s["repeats"]))
    return {"subcommand": "compiled", "settings": {**s, "dtype": args.dtype, "pretrained": pretrained,
                                                   "checkpointing": args.checkpointing, "backend": args.backend},
            "environment": environment(device), "rows": rows}


def report(r: dict) -> str:
    s, env = r["settings"], r["environment"]
    lines = [f"source {s['source']}, batch {s['batch']} x {s['points']} points, {s['dtype']}"
             + (", activation checkpointing" if s["checkpointing"] else "")
             + f", backend {s['backend']}, {env['threads']} threads on {env['device']} (load {env['load_average']})",
             f"{'':44}{'eager ms':>10}{'compiled ms':>13}{'speedup':>9}{'compile s':>11}"]
    for row in r["rows"]:
        lines.append(f"{row['what']:44}{row['eager_ms']:>10.1f}{row['compiled_ms']:>13.1f}{row['speedup']:>8.2f}x"
                     f"{row['compile_s']:>11.1f}")
    return "\n".join(lines)
