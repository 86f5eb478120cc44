"""``tokenizer``: the 3D tokenizer alone (forward + backward), against the matmul peak.

Reports the tokenizer's FLOPs (``torch.utils.flop_counter``), its achieved throughput as a
fraction of the machine's fp32 matmul peak measured in the same run, and how much of its
time is geometry (FPS + kNN) rather than learned layers.
"""
from __future__ import annotations

import argparse

import torch

from any2point.model import ModelConfig
from any2point.factory import model_config
from any2point.tokenizer import PointTokenizer

from .common import environment, matmul_peak, time_call, tokenizer_forward_backward, tokenizer_geometry
from .model import count_flops, unit_clouds

HELP = "time the 3D tokenizer (forward + backward) and its FPS/kNN share against the matmul peak"

FULL = {"width": 768, "batch": 32, "points": 1024, "k": 81, "repeats": 3}
QUICK = {"width": 48, "batch": 2, "points": 256, "k": 16, "repeats": 1}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--source", default=None,
                        help="take width and tokenizer settings from this source's model config")
    parser.add_argument("--width", type=int, default=None, help="token width D (default 768)")
    parser.add_argument("--k", type=int, default=None, help="neighbours per centre (default 81)")
    parser.add_argument("--batch", type=int, default=None)
    parser.add_argument("--points", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)


def run(args: argparse.Namespace) -> dict:
    base = QUICK if args.quick else FULL
    s = {key: getattr(args, key, None) or base[key] for key in base}
    config: ModelConfig = model_config(args.source) if args.source else ModelConfig()
    if args.source:
        import any2point

        s["width"] = args.width or any2point.get_source_spec(args.source).width
        s["k"] = args.k or config.tokenizer.k
    config.tokenizer.k = s["k"]
    device = args.device
    torch.manual_seed(args.seed)
    tokenizer = PointTokenizer(s["width"], config.tokenizer).to(device).train()
    points = unit_clouds(s["batch"], s["points"], device, args.seed)

    def forward_backward():
        tokenizer_forward_backward(tokenizer, points)

    def geometry():
        tokenizer_geometry(tokenizer, points)

    step = time_call(forward_backward, device, repeats=s["repeats"], grad=True)
    fwd = time_call(lambda: tokenizer(points), device, repeats=s["repeats"])
    geo = time_call(geometry, device, repeats=s["repeats"])
    flops = count_flops(forward_backward)
    peak = matmul_peak(device, torch.float32)
    achieved = flops / (step["median_ms"] / 1e3) / 1e12
    return {"subcommand": "tokenizer", "settings": {**s, "source": args.source}, "environment": environment(device),
            "params": sum(p.numel() for p in tokenizer.parameters()),
            "fwd_bwd_ms": step["median_ms"], "fwd_ms": fwd["median_ms"], "fps_knn_ms": geo["median_ms"],
            "tflop": flops / 1e12, "achieved_tflops": achieved, "matmul_peak": {"float32": peak},
            "mfu": achieved / peak["tflops"], "fps_knn_share": geo["median_ms"] / step["median_ms"]}


def report(r: dict) -> str:
    s = r["settings"]
    return "\n".join([
        f"tokenizer D={s['width']} k={s['k']} ({r['params']:,} parameters), batch {s['batch']} x {s['points']} points, "
        f"{r['environment']['threads']} threads (load {r['environment']['load_average']})",
        f"forward + backward: {r['fwd_bwd_ms']:.0f} ms for {r['tflop'] * 1e3:.1f} GFLOP -> "
        f"{r['achieved_tflops'] * 1e3:.1f} GFLOP/s = {100 * r['mfu']:.1f} % of the fp32 matmul peak "
        f"({r['matmul_peak']['float32']['tflops'] * 1e3:.0f} GFLOP/s)",
        f"forward only: {r['fwd_ms']:.0f} ms; FPS + kNN: {r['fps_knn_ms']:.0f} ms "
        f"({100 * r['fps_knn_share']:.1f} % of forward + backward)",
    ])
