"""``profile``: where a plain training step spends its time, by module and by operator.

The step is the plain user loop (``create_model``, ``torch.optim.AdamW`` on the trainable
parameters, forward, cross-entropy, backward, step), run under ``torch.profiler``. Each part
of the model gets a ``record_function`` label for the profiled steps only (hooks and
wrappers installed here; the aggregation labels its own parts, ``aggregation:*``):
tokenizer, projection (per-view positions, position encoding, cells), each source block (its
frozen layers, with the bottleneck that runs inside it as ``bottleneck``), the guided
aggregation after each block, the final norm with the head, the loss and the optimizer.

Forward time is a label's own time (its ops minus nested labels). Backward time is given to
the label whose forward op created the autograd node: the profiler records a sequence number
on both, so every ``autograd::engine::evaluate_function`` event finds its forward label.
Gradient accumulation into the leaves (``AccumulateGrad``) is its own row.
"""
from __future__ import annotations

import argparse
import functools
import time
from collections import defaultdict
from typing import Callable

import torch
import torch.nn.functional as F
from torch.autograd.profiler import record_function
from torch.profiler import ProfilerActivity, profile

from any2point.adapters import Bottleneck
from any2point.peft import guided_adapters

from .common import environment

HELP = "torch.profiler on the plain training loop: time by module (forward / backward) and by operator"

FULL = {"source": "minilm", "batch": 32, "points": 1024, "steps": 2}
QUICK = {"source": "tiny_1d", "batch": 2, "points": 256, "steps": 1}
NUM_CLASSES = 40
BACKWARD_PREFIX = "autograd::engine::evaluate_function: "
ACCUMULATE = "gradient accumulation (leaves)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--source", default=None, help="registered source or library name (default minilm)")
    parser.add_argument("--batch", type=int, default=None, help="clouds per step (default 32)")
    parser.add_argument("--points", type=int, default=None, help="points per cloud (default 1024)")
    parser.add_argument("--peft", default="any2point", help="PEFT method of the profiled model")
    parser.add_argument("--preset", default=None,
                        help="model preset (conf/model/<name>.yaml) for a library source, e.g. dinov2 for "
                             "timm:vit_small_patch14_dinov2")
    parser.add_argument("--weights", default="auto", choices=["auto", "pretrained", "random"])
    parser.add_argument("--steps", type=int, default=None, help="profiled steps, after one warm-up step")
    parser.add_argument("--ops", type=int, default=25, help="rows of the by-operator table")
    parser.add_argument("--trace", default=None, help="also write a Chrome trace (JSON) to this file")
    parser.add_argument("--seed", type=int, default=0)


class Labels:
    """``record_function`` ranges around modules (forward hooks) and bound methods (wrappers),
    removable afterwards so the model is left as it was."""

    def __init__(self):
        self._handles, self._wrapped, self._open = [], [], defaultdict(list)

    def module(self, module: torch.nn.Module, name: str) -> None:
        def enter(_module, _args):
            span = record_function(name)
            span.__enter__()
            self._open[id(_module)].append(span)

        def leave(_module, _args, _out):
            self._open[id(_module)].pop().__exit__(None, None, None)

        self._handles += [module.register_forward_pre_hook(enter), module.register_forward_hook(leave)]

    def method(self, owner: object, attr: str, name: str | Callable[..., str]) -> None:
        original = getattr(owner, attr)

        @functools.wraps(original)
        def labelled(*args, **kwargs):
            with record_function(name(*args, **kwargs) if callable(name) else name):
                return original(*args, **kwargs)

        object.__setattr__(owner, attr, labelled)  # an instance attribute: shadows the class's method
        self._wrapped.append((owner, attr))

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        for owner, attr in self._wrapped:
            del owner.__dict__[attr]
        self._handles, self._wrapped = [], []


def label_model(model) -> Labels:
    """Labels on the parts of an ``Any2PointModel``; block ``i`` is ``block.i`` (also when it is
    run in parts), its bottleneck ``bottleneck`` inside it (the guided adapter's, or the
    bottleneck baseline's), the aggregation after it ``aggregation.i``."""
    labels = Labels()
    labels.module(model.tokenizer, "tokenizer")
    labels.method(model.views, "positions", "projection")
    labels.method(model.views, "encode", "projection")
    if model.learned_position is not None:
        labels.module(model.learned_position, "projection")
    for module in model.modules():
        if isinstance(module, Bottleneck):
            labels.module(module, "bottleneck")
    adapters = guided_adapters(model)
    if adapters is not None:
        labels.method(adapters, "assign", "projection")
        labels.method(adapters, "aggregate", lambda index, *_: f"aggregation.{index}")
    labels.module(model.source.stem, "stem")
    for i, block in enumerate(model.source.blocks):
        labels.module(block, f"block.{i}")
        # a post-LN block may be run in two parts, the aggregation between them (model.adapter.seam)
        for part in ("residual", "output_norm"):
            attr = getattr(block, part, None)
            if isinstance(attr, torch.nn.Module):
                labels.module(attr, f"block.{i}")
            elif callable(attr):
                labels.method(block, part, f"block.{i}")
    labels.method(model, "features", "head")
    labels.module(model.head, "head")
    return labels


LABELS = ("tokenizer", "projection", "stem", "block.", "bottleneck", "aggregation", "head", "loss", "optimizer")


def _is_label(event) -> bool:
    return event.name.startswith(LABELS)


def _path(event) -> tuple[str, ...]:
    """The labels enclosing ``event`` (itself included), outermost first."""
    names = []
    while event is not None:
        if _is_label(event):
            names.append(event.name)
        event = event.cpu_parent
    return tuple(reversed(names))


def attribute(events, steps: int) -> dict[tuple[str, ...], dict[str, float]]:
    """Milliseconds per step of forward and backward work for each label path."""
    table: dict[tuple[str, ...], dict[str, float]] = defaultdict(lambda: {"forward_ms": 0.0, "backward_ms": 0.0})
    created_by: dict[tuple[int, int], tuple[str, ...]] = {}
    for e in events:
        if _is_label(e):
            nested = sum(c.cpu_time_total for c in _label_children(e))
            table[_path(e)]["forward_ms"] += (e.cpu_time_total - nested) / 1e3 / steps
        elif e.sequence_nr >= 0 and not e.name.startswith(BACKWARD_PREFIX):
            path = _path(e)
            if path:
                created_by.setdefault((e.thread, e.sequence_nr), path)
    for e in events:
        if not e.name.startswith(BACKWARD_PREFIX) or _inside_backward(e):
            continue
        if "AccumulateGrad" in e.name:
            path = (ACCUMULATE,)
        else:
            path = created_by.get((e.fwd_thread, e.sequence_nr), ("(unlabelled)",))
        table[path]["backward_ms"] += e.cpu_time_total / 1e3 / steps
    return dict(table)


def _label_children(event) -> list:
    """The outermost labels strictly inside ``event``."""
    found = []
    for child in event.cpu_children:
        found += [child] if _is_label(child) else _label_children(child)
    return found


def _inside_backward(event) -> bool:
    parent = event.cpu_parent
    while parent is not None:
        if parent.name.startswith(BACKWARD_PREFIX):
            return True
        parent = parent.cpu_parent
    return False


def module_group(path: tuple[str, ...]) -> str:
    """The row of the by-module table a label path belongs to."""
    inner = path[-1]
    if inner.startswith("block."):
        return "frozen blocks"
    if inner.startswith("aggregation."):
        return "aggregation: other"
    if inner.startswith("aggregation:"):
        return "aggregation: " + inner.split(":", 1)[1]
    return inner


def by_block(table: dict) -> list[dict]:
    """Per source block: its frozen layers, its bottleneck and the aggregation after it (fwd + bwd)."""
    rows: dict[int, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    for path, t in table.items():
        index = next((int(p.split(".")[1]) for p in path if p.startswith(("block.", "aggregation."))), None)
        if index is None:
            continue
        part = ("bottleneck" if path[-1] == "bottleneck" else "aggregation" if path[0].startswith("aggregation")
                else "frozen")
        rows[index][f"{part}_forward_ms"] += t["forward_ms"]
        rows[index][f"{part}_backward_ms"] += t["backward_ms"]
    return [{"block": i, **rows[i]} for i in sorted(rows)]


def _model(source: str, preset: str | None, peft: str, pretrained: bool):
    import any2point

    model = None if preset is None else any2point.model_config(preset)
    return any2point.create_model(source, NUM_CLASSES, pretrained=pretrained, peft=peft, model=model)


def run(args: argparse.Namespace) -> dict:
    import any2point

    from .model import unit_clouds

    if args.device.type != "cpu":
        raise ValueError("profile tables the CPU time of the plain loop; run it with --device cpu")
    base = QUICK if args.quick else FULL
    s = {key: getattr(args, key, None) or base[key] for key in base}
    try:
        available = any2point.get_source_spec(s["source"]).weights_available()
    except Exception:  # a library model by name: its weights are fetched by its library
        available = False
    pretrained = args.weights == "pretrained" or (args.weights == "auto" and available)
    torch.manual_seed(args.seed)
    model = _model(s["source"], args.preset, args.peft, pretrained).train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=5e-4, weight_decay=0.05)
    points = unit_clouds(s["batch"], s["points"], torch.device("cpu"), args.seed)
    labels = torch.randint(0, NUM_CLASSES, (s["batch"],))

    def step():
        optimizer.zero_grad(set_to_none=True)
        logits = model(points)
        with record_function("loss"):
            loss = F.cross_entropy(logits, labels)
        loss.backward()
        with record_function("optimizer"):
            optimizer.step()

    step()  # warm-up, unlabelled and unprofiled
    hooks = label_model(model)
    try:
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            start = time.perf_counter()
            for _ in range(s["steps"]):
                step()
            wall_ms = (time.perf_counter() - start) * 1e3 / s["steps"]
    finally:
        hooks.remove()
    if args.trace:
        prof.export_chrome_trace(args.trace)
    events = prof.events()
    table = attribute(events, s["steps"])
    modules: dict[str, dict[str, float]] = defaultdict(lambda: {"forward_ms": 0.0, "backward_ms": 0.0})
    for path, t in table.items():
        for key in t:
            modules[module_group(path)][key] += t[key]
    ops = sorted(events.key_averages(), key=lambda a: a.self_cpu_time_total, reverse=True)
    ops = [{"op": a.key, "calls": a.count // s["steps"], "self_ms": a.self_cpu_time_total / 1e3 / s["steps"]}
           for a in ops if not a.key.startswith(LABELS) and not a.key.startswith(BACKWARD_PREFIX)][:args.ops]
    return {"subcommand": "profile", "settings": {**s, "peft": args.peft, "preset": args.preset,
                                                  "pretrained": pretrained},
            "environment": environment(args.device), "step_ms": wall_ms,
            "modules": {name: dict(t) for name, t in modules.items()}, "blocks": by_block(table), "ops": ops}


def report(r: dict) -> str:
    s, env = r["settings"], r["environment"]
    step = r["step_ms"]
    lines = [f"plain loop: create_model({s['source']!r}{', preset ' + repr(s['preset']) if s['preset'] else ''}) "
             f"({'pretrained' if s['pretrained'] else 'random'} weights), peft {s['peft']}, AdamW, batch "
             f"{s['batch']} x {s['points']} points, {env['threads']} threads (load {env['load_average']}); "
             f"profiled step {step:.0f} ms (the profiler adds its own overhead)",
             "", f"{'by module':<34}{'forward ms':>12}{'backward ms':>13}{'total ms':>10}{'share':>8}"]
    rows = sorted(r["modules"].items(), key=lambda kv: -(kv[1]["forward_ms"] + kv[1]["backward_ms"]))
    for name, t in rows:
        total = t["forward_ms"] + t["backward_ms"]
        lines.append(f"{name:<34}{t['forward_ms']:>12.1f}{t['backward_ms']:>13.1f}{total:>10.1f}"
                     f"{100 * total / step:>7.1f}%")
    lines += ["", f"{'by block (fwd + bwd ms)':<26}{'frozen':>10}{'bottleneck':>12}{'aggregation':>13}"]
    for b in r["blocks"]:
        def both(part):
            return b.get(f"{part}_forward_ms", 0.0) + b.get(f"{part}_backward_ms", 0.0)
        lines.append(f"{'block ' + str(b['block']):<26}{both('frozen'):>10.1f}{both('bottleneck'):>12.1f}"
                     f"{both('aggregation'):>13.1f}")
    lines += ["", f"{'by operator (self time)':<60}{'calls':>8}{'ms':>10}{'share':>8}"]
    for op in r["ops"]:
        lines.append(f"{op['op'][:59]:<60}{op['calls']:>8}{op['self_ms']:>10.1f}{100 * op['self_ms'] / step:>7.1f}%")
    return "\n".join(lines)
