"""``ops``: the tokenizer's geometry on this machine, next to straightforward references.

- FPS 1024 -> 512 -> 256 -> 128 (the tokenizer's three stages) with
  ``any2point.ops.furthest_point_sample``, against a per-cloud Python loop.
- kNN of each stage's centres in the previous stage's points (k = 81 and k = 64, the
  centre included) with ``any2point.ops.knn``, against ``torch.cdist`` + a full sort.

Both sides run in the same process on the same inputs; "speedup" is reference / ours and
"agree" says whether the two gave the same answer.
"""
from __future__ import annotations

import argparse

import torch

from any2point.ops import furthest_point_sample, gather_points, knn

from .common import environment, ratio, time_call

HELP = "time FPS and kNN (the tokenizer's geometry) against reference implementations"

FULL = {"batch": 32, "points": 1024, "centres": [512, 256, 128], "repeats": 5, "reference_repeats": 3}
QUICK = {"batch": 2, "points": 256, "centres": [128, 64, 32], "repeats": 2, "reference_repeats": 1}
KS = (81, 64)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--batch", type=int, default=None, help="clouds per batch (default 32, quick 2)")
    parser.add_argument("--seed", type=int, default=0)


def reference_fps(xyz: torch.Tensor, n: int) -> torch.Tensor:
    """FPS one cloud at a time, one pick per Python iteration, starting at index 0."""
    out = torch.empty(xyz.shape[0], n, dtype=torch.long, device=xyz.device)
    for b, cloud in enumerate(xyz.float()):
        dist = torch.full((cloud.shape[0],), float("inf"), device=xyz.device)
        last = 0
        for i in range(n):
            out[b, i] = last
            dist = torch.minimum(dist, (cloud - cloud[last]).square().sum(-1))
            last = int(dist.argmax())
    return out


def reference_knn(query: torch.Tensor, ref: torch.Tensor, k: int) -> torch.Tensor:
    """All pairwise distances, fully sorted, the first k kept."""
    return torch.cdist(query.float(), ref.float()).argsort(dim=-1)[..., :k]


def _stages(xyz: torch.Tensor, centres: list[int], fps) -> list[torch.Tensor]:
    """Point sets of every stage: the input cloud, then each stage's centres."""
    sets = [xyz]
    for n in centres:
        sets.append(gather_points(sets[-1], fps(sets[-1], n)))
    return sets


def _knn_all(sets: list[torch.Tensor], k: int, fn) -> list[torch.Tensor]:
    return [fn(q, r, min(k, r.shape[1])) for r, q in zip(sets[:-1], sets[1:])]


def _same_neighbours(sets, ours, theirs) -> bool:
    """Same neighbour distances, rank by rank (indices may differ between equidistant points)."""
    for r, q, a, b in zip(sets[:-1], sets[1:], ours, theirs):
        da = (gather_points(r, a) - q.unsqueeze(2)).norm(dim=-1)
        db = (gather_points(r, b) - q.unsqueeze(2)).norm(dim=-1)
        if not torch.allclose(da, db, atol=1e-5):
            return False
    return True


def _entry(what: str, ours: dict, reference: dict, agree: bool) -> dict:
    return {"what": what, "ours_ms": ours["median_ms"], "reference_ms": reference["median_ms"],
            "ours_min_ms": ours["min_ms"], "reference_min_ms": reference["min_ms"],
            "speedup": ratio(reference["median_ms"], ours["median_ms"]), "agree": agree}


def run(args: argparse.Namespace) -> dict:
    sizes = dict(QUICK if args.quick else FULL)
    if args.batch is not None:
        sizes["batch"] = args.batch
    device = args.device
    gen = torch.Generator().manual_seed(args.seed)
    xyz = torch.rand(sizes["batch"], sizes["points"], 3, generator=gen).to(device)
    centres, reps, ref_reps = sizes["centres"], sizes["repeats"], sizes["reference_repeats"]

    results = {}
    ours_sets = _stages(xyz, centres, furthest_point_sample)
    ref_sets = _stages(xyz, centres, reference_fps)
    t_ours = time_call(lambda: _stages(xyz, centres, furthest_point_sample), device, repeats=reps)
    t_ref = time_call(lambda: _stages(xyz, centres, reference_fps), device, repeats=ref_reps)
    results["fps"] = _entry(f"FPS {' -> '.join(map(str, [sizes['points'], *centres]))}", t_ours, t_ref,
                            all(torch.equal(a, b) for a, b in zip(ours_sets, ref_sets)))
    for k in KS:
        t_ours = time_call(lambda: _knn_all(ours_sets, k, knn), device, repeats=reps)
        t_ref = time_call(lambda: _knn_all(ours_sets, k, reference_knn), device, repeats=ref_reps)
        agree = _same_neighbours(ours_sets, _knn_all(ours_sets, k, knn), _knn_all(ours_sets, k, reference_knn))
        results[f"knn_k{k}"] = _entry(f"kNN k={k}, {len(centres)} stages", t_ours, t_ref, agree)
    return {"benchmark": "ops", "quick": bool(args.quick), "batch": sizes["batch"], "points": sizes["points"],
            "centres": centres, "results": results, "environment": environment(device)}


def report(result: dict) -> str:
    env = result["environment"]
    lines = [f"ops on {env['device']} ({env['threads']} threads, torch {env['torch']}, load average "
             f"{env['load_average']}), batch {result['batch']}" + (" [quick]" if result["quick"] else ""),
             f"{'op':32} {'ours ms':>10} {'reference ms':>13} {'speedup':>8}  agree"]
    for r in result["results"].values():
        lines.append(f"{r['what']:32} {r['ours_ms']:10.2f} {r['reference_ms']:13.2f} {r['speedup']:7.1f}x  "
                     f"{'yes' if r['agree'] else 'NO'}")
    return "\n".join(lines)
