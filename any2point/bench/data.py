"""``data``: training-loader throughput of the ModelNet40 HDF5 dataset, cold and warm FPS cache.

For each protocol the dataset is built twice against one fresh cache folder: *cold*
(FPS computed and written) and *warm* (FPS read back). Each build is followed by one
training epoch through a DataLoader (shuffled, batch 32, the machine's cores as workers).
Reported: build time, epoch time, samples per second of the epoch and of build + epoch,
and how many clouds went through FPS (counted, not inferred from timings).

The shared ModelNet40 copy has 1,024 points per shape, so the release protocol (FPS 1,200
then 1,024) uses every point without FPS; the second protocol (FPS 600 then 512) makes
FPS run on the same files. ``--quick`` uses a small synthetic file of 2,048-point clouds.
Also reported: how fast the procedural ``shapes`` dataset generates clouds.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from any2point import ops
from any2point.data import build_dataset
from any2point.data.shapes import SHAPES, generate_shapes

from .common import environment

HELP = "training-loader throughput on ModelNet40 HDF5 files with a cold and a warm FPS cache"

_SHARED_DEFAULT = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "modelnet40_1024_h5"
PROTOCOLS = [("release: FPS 1200 -> random 1024", 1024, 1200), ("FPS 600 -> random 512", 512, 600)]
QUICK = {"clouds": 32, "points": 2048}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    shared = os.environ.get("ANY2POINT_SHARED")
    default = Path(shared) / "data" / "modelnet40_1024_h5" if shared else _SHARED_DEFAULT
    parser.add_argument("--root", type=Path, default=default,
                        help=f"ModelNet40 HDF5 folder (default: the shared training copy, {default})")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="DataLoader workers (default: cores)")
    parser.add_argument("--seed", type=int, default=0)


@contextlib.contextmanager
def _counting_fps(counter: list[int]):
    """Count the clouds passed to ops.furthest_point_sample while the block runs."""
    real = ops.furthest_point_sample

    def counting(xyz, n, *args, **kwargs):
        counter.append(int(xyz.shape[0]))
        return real(xyz, n, *args, **kwargs)

    ops.furthest_point_sample = counting
    try:
        yield
    finally:
        ops.furthest_point_sample = real


def _write_synthetic(root: Path, clouds: int, points: int, seed: int) -> None:
    import h5py

    rng = np.random.default_rng(seed)
    data = rng.normal(size=(clouds, points, 3)).astype(np.float32)
    data /= np.linalg.norm(data, axis=-1).max(axis=-1)[:, None, None]
    with h5py.File(root / "ply_data_train0.h5", "w") as f:
        f["data"] = data
        f["label"] = (np.arange(clouds) % 40).astype(np.uint8)[:, None]
    (root / "shape_names.txt").write_text("".join(f"class{i}\n" for i in range(40)))


def _one_pass(cfg: dict, args: argparse.Namespace) -> dict:
    counted: list[int] = []
    start = time.perf_counter()
    with _counting_fps(counted):
        dataset = build_dataset(cfg, "train", seed=args.seed)
    built = time.perf_counter() - start
    loader = DataLoader(dataset, batch_size=args.batch, shuffle=True, num_workers=args.workers,
                        generator=torch.Generator().manual_seed(args.seed))
    start = time.perf_counter()
    seen = sum(len(labels) for _, labels in loader)
    epoch = time.perf_counter() - start
    return {"build_s": round(built, 3), "epoch_s": round(epoch, 3),
            "epoch_samples_per_s": round(seen / epoch, 1),
            "build_and_epoch_samples_per_s": round(seen / (built + epoch), 1),
            "fps_clouds": sum(counted), "samples": seen}


def _shapes_rate(quick: bool) -> dict:
    count = 50 if quick else 300
    rng = np.random.default_rng(0)
    start = time.perf_counter()
    for name in SHAPES:
        generate_shapes(name, count, 1024, rng)
    elapsed = time.perf_counter() - start
    return {"clouds": count * len(SHAPES), "points": 1024, "clouds_per_s": round(count * len(SHAPES) / elapsed, 1)}


def run(args: argparse.Namespace) -> dict:
    result = {"benchmark": "data", "quick": bool(args.quick), "environment": environment(torch.device("cpu")),
              "batch": args.batch, "workers": args.workers, "scenarios": []}
    with tempfile.TemporaryDirectory(prefix="any2point-bench-data-") as tmp:
        if args.quick:
            root = Path(tmp) / "synthetic"
            root.mkdir()
            _write_synthetic(root, QUICK["clouds"], QUICK["points"], args.seed)
            protocols = PROTOCOLS[:1]
            result["data"] = f"synthetic: {QUICK['clouds']} clouds of {QUICK['points']} points"
        else:
            root = args.root
            if not (root / "shape_names.txt").is_file():
                raise SystemExit(f"no ModelNet40 HDF5 files at {root}: pass --root, or --quick for synthetic data")
            protocols = PROTOCOLS
            result["data"] = str(root)
        for label, num_points, train_fps in protocols:
            cfg = {"name": "modelnet40", "format": "modelnet40_h5", "root": str(root), "num_points": num_points,
                   "protocol": {"train_fps": train_fps}, "cache_dir": str(Path(tmp) / f"cache-{train_fps}"),
                   "augment": [{"name": "scale", "low": 0.6667, "high": 1.5}, {"name": "translate", "shift": 0.2}]}
            result["scenarios"].append({"protocol": label, "cold": _one_pass(cfg, args), "warm": _one_pass(cfg, args)})
    result["shapes_generation"] = _shapes_rate(args.quick)
    return result


def report(result: dict) -> str:
    lines = [f"data: {result['data']}" + (" [quick]" if result["quick"] else ""), f"batch {result['batch']}, workers {result['workers']}, "
             f"torch threads {result['environment']['threads']}", ""]
    header = f"{'protocol':36} {'cache':5} {'FPS clouds':>10} {'build s':>8} {'epoch s':>8} {'epoch/s':>9} {'total/s':>9}"
    lines += [header, "-" * len(header)]
    for scenario in result["scenarios"]:
        for state in ("cold", "warm"):
            m = scenario[state]
            lines.append(f"{scenario['protocol']:36} {state:5} {m['fps_clouds']:>10} {m['build_s']:>8.2f} "
                         f"{m['epoch_s']:>8.2f} {m['epoch_samples_per_s']:>9.0f} "
                         f"{m['build_and_epoch_samples_per_s']:>9.0f}")
    shapes = result["shapes_generation"]
    lines += ["", f"shapes dataset: {shapes['clouds_per_s']:.0f} clouds/s generated "
                  f"({shapes['clouds']} clouds of {shapes['points']} points)"]
    return "\n".join(lines)
