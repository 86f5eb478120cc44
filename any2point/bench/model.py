"""``model``: one training step of a source, split into its parts, against the hardware.

Everything is measured in the same run, on the same inputs:

- the machine's matmul peak (fp32; bf16 too on CUDA) and the model FLOP utilisation (MFU)
  of the training step, FLOPs counted by ``torch.utils.flop_counter``;
- the step's parts: tokenizer (forward + backward), its geometry (FPS + kNN), position
  encoding with the PEFT method's per-pass state (peft=any2point: the cell assignment), blocks
  as the method runs them (forward + backward; ``blocks_with_adapters``: with the guided
  adapters under peft=any2point), head;
- the frozen blocks alone (forward + backward to their input, on the same tokens), so the
  method's overhead is a ratio; the two are timed in turn, so machine drift cancels out;
- full fine-tuning of the same model (step time ratio).
"""
from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

import any2point
from any2point.peft import guided_adapters
from any2point.optim import build_optimizer

from .common import (environment, matmul_peak, time_call, time_interleaved, tokenizer_forward_backward,
                     tokenizer_geometry)

HELP = "time a training step by part, against frozen blocks alone, full fine-tuning and the matmul peak"

FULL = {"source": "minilm", "batch": 32, "points": 1024, "repeats": 3}
QUICK = {"source": "tiny_1d", "batch": 2, "points": 256, "repeats": 1}
NUM_CLASSES = 40


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--source", default=None, help="registered source (default minilm; quick: tiny_1d)")
    parser.add_argument("--batch", type=int, default=None, help="clouds per step (default 32)")
    parser.add_argument("--points", type=int, default=None, help="points per cloud (default 1024)")
    parser.add_argument("--peft", default="any2point", help="PEFT method of the measured model")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"],
                        help="float32, or bfloat16 autocast")
    parser.add_argument("--weights", default="auto", choices=["auto", "pretrained", "random"],
                        help="auto: the real weights when this machine has them, else random")
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--no-full", action="store_true", help="skip the full fine-tuning comparison")
    parser.add_argument("--compile", action="store_true", help="torch.compile the model first")
    parser.add_argument("--checkpointing", action="store_true",
                        help="activation checkpointing of the tokenizer stages and of the blocks")
    parser.add_argument("--seed", type=int, default=0)


def _settings(args: argparse.Namespace) -> dict:
    base = QUICK if args.quick else FULL
    return {key: getattr(args, key, None) or base[key] for key in base}


def build(source: str, peft: str, pretrained: bool, device: torch.device, *, checkpointing: bool = False):
    model = any2point.create_model(source, NUM_CLASSES, pretrained=pretrained, peft=peft)
    model.activation_checkpointing = checkpointing
    return model.to(device).train()


def unit_clouds(batch: int, points: int, device: torch.device, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, points, 3, generator=g)
    return (x / x.norm(dim=-1, keepdim=True).amax(dim=1, keepdim=True)).to(device)


def training_step(model, points: torch.Tensor, labels: torch.Tensor, dtype: str):
    """The trainer's step: AdamW (decay groups), autocast, cross-entropy, clipping at 10."""
    optimizer = build_optimizer(model, lr=5e-4, weight_decay=0.05)
    autocast = torch.autocast(points.device.type, dtype=torch.bfloat16, enabled=dtype == "bfloat16")
    params = [p for p in model.parameters() if p.requires_grad]

    def forward_backward() -> None:
        optimizer.zero_grad(set_to_none=True)
        with autocast:
            loss = F.cross_entropy(model(points), labels)
        loss.backward()

    def step() -> None:
        forward_backward()
        torch.nn.utils.clip_grad_norm_(params, 10.0)
        optimizer.step()

    return step, forward_backward


def count_flops(fn) -> int:
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def _parts(model, points: torch.Tensor, device: torch.device, repeats: int) -> dict:
    """Milliseconds of each part of the step (forward + backward where the part trains)."""
    timed = {}

    def tokenizer():
        tokenizer_forward_backward(model.tokenizer, points)

    def geometry():  # what the tokenizer spends on FPS and kNN
        tokenizer_geometry(model.tokenizer, points)

    with torch.no_grad():
        tokens, centres = model.tokenizer(points)
        x, context = model.embed(points)

    def position():
        where = model.views.positions(centres)
        model.views.encode(model.source.position_table(), where)
        model.peft_method.pass_state(model, where, centres)

    x = x.detach().requires_grad_(True)
    grad = torch.randn_like(x)

    def blocks():
        x.grad = None
        model.run_blocks(x, context).backward(grad)

    def frozen_blocks():
        x.grad = None
        h = model.source.stem(x)
        for block in model.source.blocks:
            h = block(h)
        h.backward(grad)

    with torch.no_grad():
        h = model.run_blocks(x, context)
    h = h.detach().requires_grad_(True)

    def head():
        model.head(model.features(h)).sum().backward()

    parts = [("tokenizer", tokenizer, True), ("fps_knn", geometry, False), ("position_and_cells", position, False),
             ("head", head, True)]
    adapters, depth = guided_adapters(model), len(model.source.blocks)
    if adapters is not None:  # where the adapters' extra time goes: block 0's aggregation, times the depth
        cells = context.state
        point_tokens = x[:, 1:].detach().requires_grad_(True)

        def aggregation():
            point_tokens.grad = None
            adapters.aggregate(0, point_tokens, cells).backward(grad[:, 1:])

        parts.append(("guided_aggregation", aggregation, True))
        if cells.pair_query is not None:
            def mini_attention():  # what the aggregation runs of it: the attention over each cell's pairs
                point_tokens.grad = None
                y = adapters.mini_attention.mix(point_tokens, cells)
                y.backward(torch.ones_like(y))

            parts.append(("mini_attention", mini_attention, True))
    for name, fn, grad_mode in parts:
        timed[name] = time_call(fn, device, repeats=repeats, grad=grad_mode)["median_ms"]
        if name in ("guided_aggregation", "mini_attention"):
            timed[name] *= depth
    # the adapter overhead is a ratio of these two: time them in turn
    pair = time_interleaved({"blocks_with_adapters": blocks, "frozen_blocks": frozen_blocks}, device,
                            repeats=repeats, grad=True)
    timed.update({name: t["median_ms"] for name, t in pair.items()})
    return timed


def run(args: argparse.Namespace) -> dict:
    s = _settings(args)
    device = args.device
    spec = any2point.get_source_spec(s["source"])
    pretrained = args.weights == "pretrained" or (args.weights == "auto" and spec.weights_available())
    torch.manual_seed(args.seed)
    model = build(s["source"], args.peft, pretrained, device, checkpointing=args.checkpointing)
    points = unit_clouds(s["batch"], s["points"], device, args.seed)
    labels = torch.randint(0, NUM_CLASSES, (s["batch"],), device=device)
    report = any2point.parameter_report(model)
    step_model = torch.compile(model, dynamic=True) if args.compile else model
    step, forward_backward = training_step(step_model, points, labels, args.dtype)
    step_ms = time_call(step, device, repeats=s["repeats"], grad=True)
    flops = count_flops(forward_backward)
    peaks = {"float32": matmul_peak(device, torch.float32)}
    if device.type == "cuda":
        peaks["bfloat16"] = matmul_peak(device, torch.bfloat16)
    peak = peaks["bfloat16" if args.dtype == "bfloat16" and device.type == "cuda" else "float32"]["tflops"]
    achieved = flops / (step_ms["median_ms"] / 1e3) / 1e12
    parts = _parts(model, points, device, s["repeats"])
    result = {
        "subcommand": "model", "settings": {**s, "peft": args.peft, "dtype": args.dtype, "pretrained": pretrained,
                                            "compile": args.compile, "checkpointing": args.checkpointing},
        "environment": environment(device),
        "trainable_params": report["trainable"], "total_params": report["total"],
        "step_ms": step_ms["median_ms"], "step_min_ms": step_ms["min_ms"],
        "step_tflop": flops / 1e12, "achieved_tflops": achieved,
        "matmul_peak": peaks, "mfu": achieved / peak,
        "parts_ms": parts,
        "adapter_overhead": parts["blocks_with_adapters"] / parts["frozen_blocks"],
        "tokenizer_share": parts["tokenizer"] / step_ms["median_ms"],
        "fps_knn_share": parts["fps_knn"] / step_ms["median_ms"],
    }
    if not args.no_full:
        del step, forward_backward
        torch.manual_seed(args.seed)
        full = build(s["source"], "full", pretrained, device)
        full_step, _ = training_step(full, points, labels, args.dtype)
        full_ms = time_call(full_step, device, repeats=s["repeats"], grad=True)["median_ms"]
        result["full_finetune_step_ms"] = full_ms
        result["step_time_vs_full"] = step_ms["median_ms"] / full_ms
    return result


def report(r: dict) -> str:
    s, p = r["settings"], r["parts_ms"]
    peak = r["matmul_peak"]["float32"]["tflops"] * 1e3
    lines = [
        f"source {s['source']} ({'pretrained' if s['pretrained'] else 'random'} weights), peft {s['peft']}, "
        f"batch {s['batch']} x {s['points']} points, {s['dtype']}, {r['environment']['threads']} threads on "
        f"{r['environment']['device']} (load {r['environment']['load_average']})",
        f"matmul peak fp32: {peak:.0f} GFLOP/s" + (
            f", bf16: {r['matmul_peak']['bfloat16']['tflops'] * 1e3:.0f} GFLOP/s" if "bfloat16" in r["matmul_peak"]
            else ""),
        f"training step: {r['step_ms']:.0f} ms, {r['step_tflop'] * 1e3:.1f} GFLOP -> "
        f"{r['achieved_tflops'] * 1e3:.1f} GFLOP/s, MFU {100 * r['mfu']:.1f} %",
        "",
        f"{'part':<38}{'ms':>10}{'share of step':>16}",
    ]
    rows = [("tokenizer (fwd+bwd)", p["tokenizer"]), ("  of which FPS + kNN (fwd)", p["fps_knn"]),
            ("position encoding + cells (fwd)", p["position_and_cells"]),
            ("blocks with adapters (fwd+bwd)", p["blocks_with_adapters"]), ("head (fwd+bwd)", p["head"]),
            ("frozen blocks alone (fwd+bwd)", p["frozen_blocks"])]
    if "guided_aggregation" in p:
        rows.insert(4, ("  of which guided aggregation", p["guided_aggregation"]))
    if "mini_attention" in p:
        rows.insert(5, ("    of which mini attention", p["mini_attention"]))
    lines += [f"{name:<38}{ms:>10.0f}{100 * ms / r['step_ms']:>15.1f}%" for name, ms in rows]
    lines += ["", f"blocks with adapters / frozen blocks alone: {r['adapter_overhead']:.2f}x",
              f"FPS + kNN share of the step: {100 * r['fps_knn_share']:.1f} %"]
    if "full_finetune_step_ms" in r:
        lines.append(f"full fine-tuning step: {r['full_finetune_step_ms']:.0f} ms "
                     f"(this step / full: {r['step_time_vs_full']:.2f}x)")
    return "\n".join(lines)
