"""``any2point-predict CHECKPOINT FILE... [--topk K] [--json] [--batch-size B] [--labels "a,b,c"]``

Top-k classes with probabilities for each mesh or point file (every format the readers know:
see ``any2point.data.SUPPORTED_EXTENSIONS``). The classes are the checkpoint's (for a zero-shot
run: its seen and unseen classes); with ``--labels`` (or ``--labels-file``, one label per
line), a checkpoint trained with the contrastive head ranks exactly the given labels instead,
each text-encoded with the run's prompt templates. Files are read the way the test split is (FPS to
the checkpoint's number of points, centred and scaled to the unit sphere) and predicted in
batches. A file that cannot be read, or whose coordinates are not finite once cast to the
model's dtype (float64 values beyond float32's range), gets its error while the others are
still predicted. Exit status: 0 all predicted, 1 when any file failed, 2 when the checkpoint
itself cannot be used (one line naming the file and what to do).

``--json`` prints one strict JSON object per file and line (never a bare ``NaN``):
``{"file": ..., "topk": [{"label": ..., "prob": ...}, ...]}`` or ``{"file": ..., "error": ...}``.
"""
from __future__ import annotations

import argparse
import json
import sys
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch

from .checkpoint import LoadedCheckpoint, load_checkpoint, read_checkpoint_info
from .data import SUPPORTED_EXTENSIONS, read_points
from .distributed import resolve_device
from .errors import Any2PointError, ConfigError, exit_on_user_error
from .heads import check_class_names, get_head

__all__ = ["Prediction", "predict_files", "read_clouds", "parse_labels", "read_labels_file",
           "require_open_vocabulary", "load_for_command", "main", "EXIT_FILES_FAILED", "EXIT_CHECKPOINT"]

MAX_LABELS_FILE_BYTES = 1 << 20

EXIT_FILES_FAILED = 1  # some input files could not be predicted
EXIT_CHECKPOINT = 2  # the checkpoint (or the command line) cannot be used


@dataclass
class Prediction:
    file: str
    topk: list[tuple[str, float]] | None = None
    error: str | None = None

    def as_json(self) -> dict:
        if self.error is not None:
            return {"file": self.file, "error": self.error}
        return {"file": self.file, "topk": [{"label": label, "prob": prob} for label, prob in self.topk]}

    def as_text(self) -> str:
        if self.error is not None:
            return f"{self.file}: error: {self.error}"
        return f"{self.file}: " + ", ".join(f"{label} ({100 * prob:.1f}%)" for label, prob in self.topk)


def _read(path: str, num_points: int, seed: int) -> tuple[np.ndarray | None, str | None]:
    try:
        return read_points(path, num_points=num_points, seed=seed), None
    except (Any2PointError, OSError) as exc:  # the readers' own errors name the file and the problem
        return None, str(exc) or type(exc).__name__
    except Exception as exc:  # anything else a strange file provokes must not cost the other files
        return None, f"{path}: {type(exc).__name__}: {exc}"


def read_clouds(files: Sequence[str], model: torch.nn.Module, num_points: int, seed: int
                ) -> tuple[list[torch.Tensor | None], list[str | None]]:
    """Each file as a cloud on the model's device and dtype, or the error that stopped it."""
    first = next(model.parameters())
    device, dtype = first.device, first.dtype
    read = [_read(f, num_points, seed) for f in files]
    clouds: list[torch.Tensor | None] = [None] * len(files)
    errors = [error for _, error in read]
    for i, (cloud, _) in enumerate(read):
        if cloud is None:
            continue
        cast = torch.from_numpy(np.ascontiguousarray(cloud)).to(device=device, dtype=dtype)
        if not bool(torch.isfinite(cast).all()):  # finite in float64 may overflow the model's dtype
            errors[i] = (f"{files[i]}: coordinates are not finite as {str(dtype).replace('torch.', '')} "
                         f"(the model's dtype); rescale the file's coordinates")
        else:
            clouds[i] = cast
    return clouds, errors


def parse_labels(text: str) -> list[str]:
    """``"chair,a floor lamp,toilet"`` -> the labels; empty, blank or repeated labels are refused."""
    return check_class_names(text.split(",") if text.strip() else [], "labels (--labels)")


def read_labels_file(path: str) -> list[str]:
    """One label per line (blank lines skipped); empty or repeated labels are refused."""
    p = Path(path).expanduser()
    try:
        if not p.is_file():
            raise ConfigError(f"--labels-file {path}: no such file")
        if p.stat().st_size > MAX_LABELS_FILE_BYTES:
            raise ConfigError(f"--labels-file {path}: larger than {MAX_LABELS_FILE_BYTES} bytes; expected one label "
                              f"per line")
        text = p.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"--labels-file {path}: cannot be read as UTF-8 text ({exc})") from None
    return check_class_names([line for line in text.splitlines() if line.strip()], f"labels in {path}")


def require_open_vocabulary(checkpoint: str, what: str) -> None:
    """Refuse, before loading the model, a checkpoint whose head cannot score text labels."""
    info = read_checkpoint_info(checkpoint)
    head = info["model"]["head"]["name"]
    if not get_head(head).open_vocabulary:
        raise ConfigError(f"{checkpoint} was trained with the {head} head, which scores only its "
                          f"{len(info['class_names'])} training classes; {what} needs a run trained with "
                          f"model.head.name=contrastive")


def load_for_command(prog: str, checkpoint: str, *, weights: str | None, text_weights: str | None, device: str,
                     open_vocabulary_for: str | None = None) -> LoadedCheckpoint | None:
    """The checkpoint a command runs on, or None once the one line saying why it cannot be used is
    printed (the command then exits with :data:`EXIT_CHECKPOINT`). ``open_vocabulary_for``: what
    needs the contrastive head (``"--labels"``), checked before the model is loaded."""
    try:
        if open_vocabulary_for is not None:
            require_open_vocabulary(checkpoint, open_vocabulary_for)
        return load_checkpoint(checkpoint, weights=weights, map_location=resolve_device(device),
                               text_weights=text_weights)
    except (Any2PointError, OSError, ValueError, RuntimeError) as exc:
        print(f"{prog}: cannot use checkpoint {checkpoint}: {exc}", file=sys.stderr)
        return None


def default_classes(checkpoint: LoadedCheckpoint) -> list[str]:
    """The classes ranked without --labels: the training classes, then a zero-shot run's unseen ones."""
    return checkpoint.class_names + checkpoint.unseen_class_names


@torch.no_grad()
def predict_files(checkpoint: LoadedCheckpoint, files: Sequence[str], *, topk: int = 5, batch_size: int = 32,
                  seed: int = 0, labels: Sequence[str] | None = None) -> Iterator[Prediction]:
    """Predictions for ``files`` in order, read and run ``batch_size`` files at a time.
    ``labels``: rank these texts instead of the checkpoint's classes (a contrastive head)."""
    model = checkpoint.model.eval()
    head = model.head
    if labels is not None and not head.open_vocabulary:
        raise ConfigError(f"{checkpoint.path} was trained with the {head.config.name} head, which scores only its "
                          f"{len(checkpoint.class_names)} training classes; labels need a run trained with "
                          f"model.head.name=contrastive")
    names = check_class_names(labels, "labels") if labels is not None else default_classes(checkpoint)
    scoring = head.classes(names) if names != checkpoint.class_names else nullcontext()
    with scoring:
        yield from _predict_chunks(checkpoint, files, names, topk, batch_size, seed)


def _predict_chunks(checkpoint: LoadedCheckpoint, files: Sequence[str], names: list[str], topk: int,
                    batch_size: int, seed: int) -> Iterator[Prediction]:
    model = checkpoint.model
    k = max(1, min(topk, len(names)))
    for start in range(0, len(files), batch_size):
        chunk = list(files[start:start + batch_size])
        clouds, errors = read_clouds(chunk, model, checkpoint.num_points, seed)
        good = [i for i, cloud in enumerate(clouds) if cloud is not None]
        results: dict[int, list[tuple[str, float]]] = {}
        if good:
            probs = model(torch.stack([clouds[i] for i in good])).float().softmax(dim=1)
            values, indices = probs.topk(k, dim=1)
            finite = torch.isfinite(probs).all(dim=1).tolist()
            for row, i in enumerate(good):
                if not finite[row]:
                    errors[i] = f"{chunk[i]}: the model gave non-finite probabilities for this cloud"
                    continue
                results[i] = [(names[c], float(p)) for p, c in zip(values[row].tolist(), indices[row].tolist())]
        for i, path in enumerate(chunk):
            yield Prediction(path, topk=results.get(i), error=errors[i])


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="any2point-predict", description="Classify mesh / point-cloud files with a trained any2point checkpoint.",
        epilog=f"Supported files: {' '.join(SUPPORTED_EXTENSIONS)}")
    p.add_argument("checkpoint", help="run directory, or its checkpoint .safetensors / .json file")
    p.add_argument("files", nargs="+", metavar="FILE", help="mesh or point files to classify")
    p.add_argument("--topk", type=int, default=5, help="classes to list per file (default 5)")
    p.add_argument("--json", action="store_true", help="one JSON object per file and line")
    p.add_argument("--batch-size", type=int, default=32, help="files per forward pass (default 32)")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda", "auto"], help="where to run (default cpu)")
    p.add_argument("--weights", default=None, help="the source's weights file (or hf folder) when the run was trained "
                   "on a local copy: the checkpoint records their SHA-256, never a path")
    p.add_argument("--seed", type=int, default=0, help="seed of mesh surface sampling (default 0)")
    labels = p.add_mutually_exclusive_group()
    labels.add_argument("--labels", default=None, metavar='"A,B,C"',
                        help="rank exactly these comma-separated labels (a run trained with the contrastive head)")
    labels.add_argument("--labels-file", default=None, metavar="FILE", help="as --labels, one label per line")
    p.add_argument("--text-weights", default=None,
                   help="local copy of the contrastive head's text encoder weights, if they are not installed")
    return p


@exit_on_user_error("any2point-predict", status=EXIT_CHECKPOINT)
def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.topk < 1 or args.batch_size < 1:
        print("any2point-predict: --topk and --batch-size must be at least 1", file=sys.stderr)
        return EXIT_CHECKPOINT
    try:
        labels = parse_labels(args.labels) if args.labels is not None else \
            read_labels_file(args.labels_file) if args.labels_file is not None else None
    except ConfigError as exc:
        print(f"any2point-predict: {exc}", file=sys.stderr)
        return EXIT_CHECKPOINT
    loaded = load_for_command("any2point-predict", args.checkpoint, weights=args.weights,
                              text_weights=args.text_weights, device=args.device,
                              open_vocabulary_for="--labels" if labels is not None else None)
    if loaded is None:
        return EXIT_CHECKPOINT
    failed = 0
    for prediction in predict_files(loaded, args.files, topk=args.topk, batch_size=args.batch_size, seed=args.seed,
                                    labels=labels):
        failed += prediction.error is not None
        if args.json:
            print(json.dumps(prediction.as_json(), allow_nan=False), flush=True)
        else:
            print(prediction.as_text(), file=sys.stderr if prediction.error else sys.stdout, flush=True)
    if failed:
        print(f"any2point-predict: {failed} of {len(args.files)} files failed", file=sys.stderr)
    return EXIT_FILES_FAILED if failed else 0


if __name__ == "__main__":
    sys.exit(main())
