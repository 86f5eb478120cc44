"""``seam``: how much the guided adapter's terms (bottleneck and aggregation) move a frozen source's stream.

For an untrained model in training mode (its BatchNorms on batch statistics) on one cloud,
block by block along the model's own stream:

- **share**: the terms' part of the hidden state the next block reads,
  ||y - y0|| / ||y|| over the point tokens, where y is block i as the model runs it (with its
  adapter's bottleneck and aggregation) and y0 the frozen block alone on the same input;
- **attention TV**: the total variation 1/2 sum_k |p_k - q_k| between block i+1's attention
  rows on y and on y0 (position encoding re-added as the model does), averaged over heads
  and query tokens;
- **attention entropy**: block i's attention rows on its input, entropy over its maximum
  log T (1: uniform attention), averaged over heads and query tokens.

Each is measured for ``model.adapter.seam`` = ``after_norm`` (the placement before issue 26)
and ``before_norm``, on the source with its pretrained weights, with the library's random
initialisation and with its block tensors shuffled (``peft=any2point_shuffled_source``).
The untrained bottlenecks' up-projections start at zero, so an untrained model's terms are
the aggregation's. Attention is read from BERT-family and timm ViT blocks.
"""
from __future__ import annotations

import argparse
import math

import numpy as np
import torch

import any2point
from any2point.backbones.bert import BertBlock
from any2point.backbones.vit import TimmBlock

HELP = "share of the bottleneck + aggregation terms in the stream and the next block's attention shift, per seam"

WEIGHTS = ("pretrained", "random", "shuffled")
SEAMS = ("after_norm", "before_norm")
NUM_CLASSES = 40


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--source", default=None, help="registered source (default minilm; quick: tiny_1d)")
    parser.add_argument("--points", type=int, default=256,
                        help="points of the cloud; the tokenizer halves them three times (256 -> 32 tokens)")
    parser.add_argument("--cloud", default=None,
                        help="a point-cloud or mesh file (any format any2point reads); default: a procedural shape")
    parser.add_argument("--shape", default="torus", help="the procedural shape when no --cloud is given")
    parser.add_argument("--weights", default=",".join(WEIGHTS),
                        help=f"comma-separated, from {', '.join(WEIGHTS)} (pretrained needs the weights here)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the model's trainable parts and the shape")


def attention_probs(block: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Block ``block``'s attention probabilities on its input ``x`` (B, T, D) -> (B, H, T, T)."""
    B, T, D = x.shape
    if isinstance(block, BertBlock):
        sa, heads = block.layer.attention.self, block.heads

        def split(t):
            return t.view(B, T, heads, D // heads).transpose(1, 2)

        q, k = split(sa.query(x)), split(sa.key(x))
        return torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(D // heads), dim=-1)
    if isinstance(block, TimmBlock):
        attn = block.block.attn
        qkv = attn.qkv(block.block.norm1(x)).reshape(B, T, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4)
        q, k = attn.q_norm(qkv[0]), attn.k_norm(qkv[1])
        return torch.softmax((q * attn.scale) @ k.transpose(-1, -2), dim=-1)
    raise TypeError(f"the seam bench reads attention from BERT-family and timm ViT blocks, not {type(block).__name__}")


def load_cloud(args: argparse.Namespace) -> torch.Tensor:
    """One cloud (1, N, 3) in the unit sphere: the file, else a procedural shape from ``--seed``."""
    if args.cloud:
        from any2point.data.file_to_cloud import read_points

        return torch.from_numpy(read_points(args.cloud, num_points=args.points)).float()[None]
    from any2point.data.shapes import generate_shapes

    rng = np.random.default_rng(args.seed)
    return torch.from_numpy(generate_shapes(args.shape, 1, args.points, rng)).float()


@torch.no_grad()
def measure(model, points: torch.Tensor) -> dict:
    """Per block: the terms' share of the stream and the next block's attention TV (see the module)."""
    model.train()
    x, context = model.embed(points)
    x = model.source.stem(x)
    blocks = list(model.source.blocks)
    first = 0 if model.config.projection.inject == "input_and_every" else 1

    def with_position(h, i):
        return h + context.position if i >= first and context.position is not None else h

    shares, tvs, entropies = [], [], []
    for i, block in enumerate(blocks):
        x = with_position(x, i)
        p = attention_probs(block, x)
        entropies.append(float(-(p * p.clamp_min(1e-12).log()).sum(-1).mean() / math.log(p.shape[-1])))
        y = model.peft_method.run_block(model, i, block, x, context)
        y0 = block(x)
        shares.append(float((y - y0)[:, 1:].norm() / y[:, 1:].norm()))
        if i + 1 < len(blocks):
            nxt = blocks[i + 1]
            p, q = attention_probs(nxt, with_position(y, i + 1)), attention_probs(nxt, with_position(y0, i + 1))
            tvs.append(float(0.5 * (p - q).abs().sum(-1).mean()))
        x = y
    return {"share": shares, "attention_tv": tvs, "attention_entropy": entropies}


def run(args: argparse.Namespace) -> dict:
    source = args.source or ("tiny_1d" if args.quick else "minilm")
    weights = [w.strip() for w in args.weights.split(",") if w.strip()]
    unknown = sorted(set(weights) - set(WEIGHTS))
    if unknown or not weights:
        raise SystemExit(f"--weights: {f'unknown {unknown}' if unknown else 'none given'}; "
                         f"choose from {', '.join(WEIGHTS)}")
    points = load_cloud(args).to(args.device)
    rows = []
    for weight in weights:
        for seam in SEAMS:
            torch.manual_seed(args.seed)  # the same trainable parts for every row
            peft = "any2point_shuffled_source" if weight == "shuffled" else "any2point"
            model = any2point.create_model(source, NUM_CLASSES, pretrained=weight != "random", peft=peft,
                                           adapter={"seam": seam}).to(args.device)
            torch.manual_seed(args.seed)  # the same dropout masks
            rows.append({"weights": weight, "weights_tag": model.source.weights_tag, "seam": seam,
                         "post_norm": bool(getattr(model.source.blocks[0], "post_norm", False)),
                         **measure(model, points)})
    return {"subcommand": "seam", "source": source, "points": int(points.shape[1]),
            "tokens": int(model.tokenizer.centres_for(points.shape[1])[-1]),
            "cloud": args.cloud or f"procedural {args.shape} (seed {args.seed})", "rows": rows}


def report(r: dict) -> str:
    depth = len(r["rows"][0]["share"])
    lines = [f"source {r['source']}, one cloud: {r['cloud']}, {r['points']} points -> {r['tokens']} tokens; "
             f"untrained model in training mode", "",
             "share of the bottleneck + aggregation terms in the hidden state after each block (point tokens)",
             f"{'weights':<12}{'seam':<13}" + "".join(f"{'block ' + str(i + 1):>9}" for i in range(depth))]
    for row in r["rows"]:
        lines.append(f"{row['weights']:<12}{row['seam']:<13}" + "".join(f"{100 * v:>8.1f}%" for v in row["share"]))
    lines += ["", "total variation of the next block's attention with vs without the terms",
              f"{'weights':<12}{'seam':<13}" + "".join(f"{'block ' + str(i + 2):>9}" for i in range(depth - 1))]
    for row in r["rows"]:
        lines.append(f"{row['weights']:<12}{row['seam']:<13}" + "".join(f"{v:>9.3f}" for v in row["attention_tv"]))
    lines += ["", "attention entropy of each block on the model's stream (1 = uniform)",
              f"{'weights':<12}{'seam':<13}" + "".join(f"{'block ' + str(i + 1):>9}" for i in range(depth))]
    for row in r["rows"]:
        lines.append(f"{row['weights']:<12}{row['seam']:<13}"
                     + "".join(f"{v:>9.3f}" for v in row["attention_entropy"]))
    return "\n".join(lines)
