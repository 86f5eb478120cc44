"""``any2point-show FILE... [key=value ...] [--source NAME] [--checkpoint RUN] [--out DIR]``

Pictures of what a source sees of a cloud: the cloud and its token centres, the six virtual
views (2D: the canvas with the source's patch grid and the adapters' cells; 1D: the six lines
over the position table and their segments), and the PE each token receives. No trained
model is needed: the geometry depends only on the source's table and the settings, which are
composed as in ``any2point-train`` (``key=value`` overrides such as
``model.projection.translation=-1.4`` or ``model.adapter.cell=16``).

``--checkpoint RUN`` uses a trained run instead and adds the per-token view weights of the
guided ensemble in ``--block N`` and the top-k classes. Exit status: 0, 1 when a file could
not be read (the others are still drawn), 2 when the settings or the checkpoint are unusable.
"""
from __future__ import annotations

import argparse
import os
import re
import sys
from pathlib import Path
from typing import Sequence

from hydra.errors import HydraException
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from any2point.errors import Any2PointError, exit_on_user_error

from .inputs import compose_train_config, load_trained, model_from_config, read_cloud
from .options import PICTURES, ShowOptions
from .page import write_page
from .render import write_pictures
from .scene import compute_scene
from .trained import block_index, run_trained

__all__ = ["main"]

# What bad settings, missing weights or an unusable checkpoint raise (each message names the problem).
_SETTINGS_ERRORS = (Any2PointError, HydraException, OmegaConfBaseException, OSError, ValueError, KeyError,
                    RuntimeError)
_OVERRIDE = re.compile(r"^[+~]{0,2}[A-Za-z_][\w.@/-]*=")


def _parser() -> argparse.ArgumentParser:
    d = ShowOptions()
    p = argparse.ArgumentParser(
        prog="any2point-show",
        description="Pictures of the virtual projection, the cells and (with --checkpoint) the view weights "
                    "for mesh / point-cloud files.",
        epilog="Settings: key=value as in any2point-train, e.g. model.adapter.cell=16 source.pretrained=false")
    p.add_argument("inputs", nargs="+", metavar="FILE | key=value", help="files to draw, and config overrides")
    p.add_argument("--source", help="the source to project onto (same as source=NAME)")
    p.add_argument("--checkpoint", help="a trained run (directory or checkpoint file): adds view weights and top-k")
    p.add_argument("--block", type=int, default=d.block, help=f"block whose view weights are shown (default {d.block}: "
                                                              "the last)")
    p.add_argument("--topk", type=int, default=d.topk, help=f"classes to list with --checkpoint (default {d.topk})")
    p.add_argument("--out", default=".", help="folder for the pictures (default: the current folder)")
    p.add_argument("--pictures", default=",".join(d.pictures),
                   help=f"comma-separated pictures to write (default all: {','.join(d.pictures)}; "
                        "weights and topk need --checkpoint)")
    p.add_argument("--name", help="with one FILE: start the output names with NAME instead of the file's stem")
    p.add_argument("--points", type=int, default=None,
                   help=f"points read per file (default: the checkpoint's, else {d.points})")
    p.add_argument("--seed", type=int, default=d.seed, help="seed of mesh surface sampling")
    p.add_argument("--dpi", type=int, default=d.dpi, help=f"resolution of the PNGs (default {d.dpi})")
    p.add_argument("--weights", help="with --checkpoint: the source's weights file (or hf folder) when the run was "
                   "trained on a local copy (checked against the SHA-256 the checkpoint records)")
    p.add_argument("--html", action="store_true", help="also write <file>_cloud.html, the cloud to rotate in a browser")
    return p


def _split_inputs(inputs: Sequence[str]) -> tuple[list[str], list[str]]:
    """Files and overrides: a ``key=value`` token is an override unless a file of that name exists."""
    files, overrides = [], []
    for token in inputs:
        (overrides if _OVERRIDE.match(token) and not os.path.exists(token) else files).append(token)
    return files, overrides


def _model_overrides(overrides: list[str]) -> dict:
    """``model.*`` overrides as the sections load_checkpoint takes; anything else is refused."""
    other = [o for o in overrides if not o.startswith("model.")]
    if other:
        raise ValueError(f"with --checkpoint only model.* settings can be changed (the source, data and the rest "
                         f"come from the checkpoint), got: {' '.join(other)}")
    return OmegaConf.to_container(OmegaConf.from_dotlist(overrides)).get("model", {}) if overrides else {}


def _stems(files: list[str]) -> list[str]:
    """Output name per file: its stem, made unique when two files share one."""
    stems = [Path(f).stem for f in files]
    return [s if stems.count(s) == 1 else f"{s}_{i}" for i, s in enumerate(stems)]


@exit_on_user_error("any2point-show", status=2)
def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_intermixed_args(argv)
    files, overrides = _split_inputs(args.inputs)
    prog = "any2point-show"
    if not files:
        print(f"{prog}: no file to draw (got only settings: {' '.join(overrides)})", file=sys.stderr)
        return 2
    if args.name and len(files) != 1:
        print(f"{prog}: --name needs exactly one file (got {len(files)})", file=sys.stderr)
        return 2
    if args.topk < 1 or args.dpi < 1 or (args.points is not None and args.points < 1):
        print(f"{prog}: --topk, --dpi and --points must be at least 1", file=sys.stderr)
        return 2
    pictures = tuple(p.strip() for p in args.pictures.split(",") if p.strip())
    unknown = sorted(set(pictures) - set(PICTURES))
    if unknown or not pictures:
        print(f"{prog}: --pictures: unknown {unknown or 'empty list'}; known: {','.join(PICTURES)}", file=sys.stderr)
        return 2
    if not args.checkpoint and set(pictures) <= {"weights", "topk"}:
        print(f"{prog}: --pictures {args.pictures} needs --checkpoint (a trained model)", file=sys.stderr)
        return 2
    options = ShowOptions(seed=args.seed, block=args.block, topk=args.topk, dpi=args.dpi, pictures=pictures)
    try:
        if args.checkpoint:
            if args.source:
                raise ValueError("--source and --checkpoint exclude each other (the checkpoint names its source)")
            loaded = load_trained(args.checkpoint, _model_overrides(overrides), weights=args.weights)
            model, class_names, num_points = loaded.model, loaded.class_names, loaded.num_points
            block_index(model, args.block)
        else:
            cfg = compose_train_config(([f"source={args.source}"] if args.source else []) + overrides)
            model, class_names, num_points = model_from_config(cfg), None, options.points
        num_points = args.points or num_points
    except _SETTINGS_ERRORS as exc:  # settings, source weights or checkpoint: nothing can be drawn
        print(f"{prog}: {exc}", file=sys.stderr)
        return 2
    failed = 0
    for path, stem in zip(files, [args.name] if args.name else _stems(files)):
        try:  # one file that cannot be read or drawn must not cost the others
            cloud = read_cloud(path, num_points, seed=options.seed)
            scene = compute_scene(model, cloud)
            trained = run_trained(model, class_names, cloud, args.block, args.topk) if class_names is not None else None
            written = write_pictures(scene, args.out, stem, options, trained)
            if args.html:
                written.append(write_page(scene, Path(args.out) / f"{stem}_cloud.html"))
        except Exception as exc:
            print(f"{prog}: {path}: {exc}", file=sys.stderr)
            failed += 1
            continue
        if trained is not None:
            print(f"{path}: " + ", ".join(f"{name} ({100 * p:.1f}%)" for name, p in trained.topk))
            if trained.weights is None:
                print(f"{path}: no view weights: {trained.note}", file=sys.stderr)
        for w in written:
            print(w)
    if failed:
        print(f"{prog}: {failed} of {len(files)} files failed", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
