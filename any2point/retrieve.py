"""``any2point-retrieve CHECKPOINT --text "a tall lamp" FILE_OR_FOLDER... [--topk K] [--json]``

The shapes that best match a sentence, for a run trained with the contrastive head: every
mesh or point file (folders are searched recursively for the formats of
``any2point.data.SUPPORTED_EXTENSIONS``) is embedded into the text encoder's space once, the
sentence is encoded by the run's frozen text encoder, and the files are ranked by cosine
similarity. The sentence is encoded as written; ``--templates`` puts it through the run's
prompt templates instead, as class labels are.

Shape embeddings are cached by file content (SHA-256) in one safetensors file per checkpoint
and reading settings, under ``<any2point cache>/retrieval`` (``--cache-dir``; ``--no-cache``
turns it off): a second query over the same files reads no file but the cache. A file that
cannot be read gets its error while the others are still ranked. Exit status: 0, 1 when any
file failed, 2 when the checkpoint or the command line cannot be used.

``--json`` prints strict JSON, one object per line: ``{"file": ..., "error": ...}`` for each
file that failed, then ``{"text": ..., "topk": [{"file": ..., "score": ...}, ...]}``.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import sys
from pathlib import Path
from typing import Sequence

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from tqdm.auto import tqdm

from .atomic import atomic_write
from .checkpoint import LoadedCheckpoint
from .data import SUPPORTED_EXTENSIONS
from .data.fps_cache import file_digest
from .errors import ConfigError, exit_on_user_error
from .predict import EXIT_CHECKPOINT, EXIT_FILES_FAILED, load_for_command, read_clouds
from .text_encoders import class_embeddings

__all__ = ["find_shape_files", "ShapeEmbeddingCache", "embed_files", "rank_files", "main"]

log = logging.getLogger(__name__)

CACHE_VERSION = "retrieval1"  # bump when the cache layout or the embedding changes


def find_shape_files(paths: Sequence[str]) -> list[str]:
    """Files as given, folders expanded to their supported files (recursively, sorted); a path that
    does not exist, or a folder with no supported file, is a ConfigError naming it."""
    found: list[str] = []
    suffixes = {e.lower() for e in SUPPORTED_EXTENSIONS}
    for path in paths:
        p = Path(path).expanduser()
        if p.is_dir():
            inside = sorted(str(f) for f in p.rglob("*") if f.is_file() and f.suffix.lower() in suffixes)
            if not inside:
                raise ConfigError(f"{path}: no supported mesh or point file in this folder "
                                  f"({' '.join(SUPPORTED_EXTENSIONS)})")
            found += inside
        elif p.exists():
            found.append(str(path))
        else:
            raise ConfigError(f"{path}: no such file or folder")
    return list(dict.fromkeys(found))


def checkpoint_key(checkpoint: LoadedCheckpoint, seed: int) -> str:
    """What a shape embedding depends on besides the file: the checkpoint's tensors and description,
    the points read per file and the sampling seed."""
    h = hashlib.sha256(CACHE_VERSION.encode())
    for part in (file_digest(checkpoint.path), file_digest(checkpoint.path.with_suffix(".json")),
                 str(checkpoint.num_points), str(seed)):
        h.update(part.encode() + b"\0")
    return h.hexdigest()


class ShapeEmbeddingCache:
    """File content digest -> embedding, one safetensors file per :func:`checkpoint_key`.
    A damaged or foreign cache file is ignored (and replaced on the next save), never trusted."""

    def __init__(self, directory: Path | None, key: str, width: int):
        self.path = None if directory is None else Path(directory) / f"{key[:40]}.safetensors"
        self.key, self.width = key, width
        self.entries: dict[str, torch.Tensor] = {}
        if self.path is not None and self.path.is_file():
            self.entries = self._read()

    def _read(self) -> dict[str, torch.Tensor]:
        try:
            with safe_open(str(self.path), framework="pt") as f:
                if (f.metadata() or {}).get("key") != self.key:
                    return {}
                entries = {k: f.get_tensor(k) for k in f.keys()}
        except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
            log.warning("ignoring the damaged shape-embedding cache %s (%s)", self.path, exc)
            return {}
        good = {k: v for k, v in entries.items()
                if v.dtype == torch.float32 and tuple(v.shape) == (self.width,) and bool(torch.isfinite(v).all())}
        if len(good) != len(entries):
            log.warning("ignoring %d malformed entries of the shape-embedding cache %s", len(entries) - len(good),
                        self.path)
        return good

    def save(self) -> None:
        if self.path is None or not self.entries:
            return
        tensors = {k: v.contiguous() for k, v in self.entries.items()}
        atomic_write(self.path, lambda tmp: save_file(tensors, tmp, metadata={"key": self.key}))


@torch.no_grad()
def embed_files(checkpoint: LoadedCheckpoint, files: Sequence[str], *, batch_size: int = 32, seed: int = 0,
                cache: ShapeEmbeddingCache | None = None, progress: bool = True
                ) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """({file: unit embedding (E,)}, {file: error}); cached files are not read again."""
    model = checkpoint.model.eval()
    digests: dict[str, str] = {}
    errors: dict[str, str] = {}
    for f in files:
        try:
            digests[f] = file_digest(f)
        except OSError as exc:
            errors[f] = f"{f}: cannot be read ({exc.strerror or exc})"
    known = cache.entries if cache is not None else {}
    todo = [f for f in digests if digests[f] not in known]
    fresh: dict[str, torch.Tensor] = {}
    bar = tqdm(total=len(todo), desc="embedding shapes", unit="shape", disable=not progress or not todo,
               dynamic_ncols=True, leave=False)
    for start in range(0, len(todo), batch_size):
        chunk = todo[start:start + batch_size]
        clouds, chunk_errors = read_clouds(chunk, model, checkpoint.num_points, seed)
        good = [i for i, cloud in enumerate(clouds) if cloud is not None]
        if good:
            z = model.head.embed(model.head_input(torch.stack([clouds[i] for i in good]))).float().cpu()
            for row, i in enumerate(good):
                if bool(torch.isfinite(z[row]).all()):
                    fresh[digests[chunk[i]]] = z[row].clone()
                else:
                    chunk_errors[i] = f"{chunk[i]}: the model gave a non-finite embedding for this cloud"
        errors.update({f: e for f, e in zip(chunk, chunk_errors) if e is not None})
        bar.update(len(chunk))
    bar.close()
    if cache is not None and fresh:
        cache.entries.update(fresh)
        cache.save()
    table = {**known, **fresh}
    return {f: table[d] for f, d in digests.items() if d in table}, errors


def text_query(checkpoint: LoadedCheckpoint, text: str, templates: bool) -> torch.Tensor:
    """(E,) unit embedding of ``text`` by the run's text encoder (as written, or through its templates)."""
    head = checkpoint.model.head
    if templates:
        return class_embeddings(head.text_encoder, [text], head.config.templates)[0]
    return head.text_encoder.encode([text])[0]


def rank_files(embeddings: dict[str, torch.Tensor], query: torch.Tensor, topk: int) -> list[tuple[str, float]]:
    """The ``topk`` files by cosine similarity with ``query``, best first (ties: input order)."""
    if not embeddings:
        return []
    files = list(embeddings)
    scores = torch.stack([embeddings[f] for f in files]) @ query.float()
    order = sorted(range(len(files)), key=lambda i: -float(scores[i]))[:topk]
    return [(files[i], float(scores[i])) for i in order]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="any2point-retrieve", description="Rank mesh / point-cloud files by how well they match a sentence, with "
                                               "an any2point run trained with the contrastive head.",
        epilog=f"Supported files: {' '.join(SUPPORTED_EXTENSIONS)}")
    p.add_argument("checkpoint", help="run directory, or its checkpoint .safetensors / .json file")
    p.add_argument("paths", nargs="+", metavar="FILE_OR_FOLDER", help="files, or folders searched recursively")
    p.add_argument("--text", required=True, help='the query, e.g. "a tall lamp"')
    p.add_argument("--topk", type=int, default=5, help="files to list (default 5)")
    p.add_argument("--json", action="store_true", help="strict JSON, one object per line")
    p.add_argument("--templates", action="store_true", help="encode the text through the run's prompt templates")
    p.add_argument("--batch-size", type=int, default=32, help="files per forward pass (default 32)")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda", "auto"], help="where to run (default cpu)")
    p.add_argument("--seed", type=int, default=0, help="seed of mesh surface sampling (default 0)")
    p.add_argument("--cache-dir", default=None, help="where shape embeddings are kept (default: <cache>/retrieval)")
    p.add_argument("--no-cache", action="store_true", help="compute every shape embedding, keep none")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--weights", default=None, help="local copy of the source weights, if they moved since training")
    p.add_argument("--text-weights", default=None, help="local copy of the text encoder's weights")
    return p


def _cache_dir(args) -> Path | None:
    if args.no_cache:
        return None
    if args.cache_dir:
        return Path(os.path.expanduser(args.cache_dir))
    from .backbones.weights import cache_dir

    try:
        return cache_dir() / "retrieval"
    except OSError as exc:
        log.warning("no shape-embedding cache (%s); set --cache-dir to keep embeddings", exc)
        return None


@exit_on_user_error("any2point-retrieve", status=EXIT_CHECKPOINT)
def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.topk < 1 or args.batch_size < 1:
            raise ConfigError("--topk and --batch-size must be at least 1")
        if not args.text.strip():
            raise ConfigError("--text is empty: give the sentence to search for")
        files = find_shape_files(args.paths)
    except ConfigError as exc:
        print(f"any2point-retrieve: {exc}", file=sys.stderr)
        return EXIT_CHECKPOINT
    loaded = load_for_command("any2point-retrieve", args.checkpoint, weights=args.weights,
                              text_weights=args.text_weights, device=args.device,
                              open_vocabulary_for="retrieval by text")
    if loaded is None:
        return EXIT_CHECKPOINT
    head = loaded.model.head
    directory = _cache_dir(args)
    cache = ShapeEmbeddingCache(directory, checkpoint_key(loaded, args.seed), head.text_encoder.width) \
        if directory is not None else None
    embeddings, errors = embed_files(loaded, files, batch_size=args.batch_size, seed=args.seed, cache=cache,
                                     progress=not args.no_progress)
    ranked = rank_files(embeddings, text_query(loaded, args.text, args.templates), args.topk)
    for f in files:
        if f in errors:
            print(json.dumps({"file": f, "error": errors[f]}) if args.json else f"{f}: error: {errors[f]}",
                  file=sys.stdout if args.json else sys.stderr, flush=True)
    if args.json:
        print(json.dumps({"text": args.text, "topk": [{"file": f, "score": s} for f, s in ranked]}, allow_nan=False))
    else:
        for rank, (f, s) in enumerate(ranked, 1):
            print(f"{rank}. {f}  {s:.4f}")
    if errors:
        print(f"any2point-retrieve: {len(errors)} of {len(files)} files failed", file=sys.stderr)
    return EXIT_FILES_FAILED if errors else 0


if __name__ == "__main__":
    sys.exit(main())
