"""``any2point-predict CHECKPOINT FILE... [--topk K] [--json] [--batch-size B]``

Top-k classes with probabilities for each mesh or point file (every format the readers know:
see ``any2point.data.SUPPORTED_EXTENSIONS``). Files are read the way the test split is (FPS to
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
from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np
import torch

from .checkpoint import LoadedCheckpoint, load_checkpoint
from .data import SUPPORTED_EXTENSIONS, read_points
from .distributed import resolve_device
from .errors import Any2PointError, exit_on_user_error

__all__ = ["Prediction", "predict_files", "main", "EXIT_FILES_FAILED", "EXIT_CHECKPOINT"]

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


@torch.no_grad()
def predict_files(checkpoint: LoadedCheckpoint, files: Sequence[str], *, topk: int = 5, batch_size: int = 32,
                  seed: int = 0) -> Iterator[Prediction]:
    """Predictions for ``files`` in order, read and run ``batch_size`` files at a time."""
    model, names = checkpoint.model.eval(), checkpoint.class_names
    first = next(model.parameters())
    device, dtype = first.device, first.dtype
    k = max(1, min(topk, len(names)))
    for start in range(0, len(files), batch_size):
        chunk = list(files[start:start + batch_size])
        read = [_read(f, checkpoint.num_points, seed) for f in chunk]
        clouds: list[torch.Tensor | None] = [None] * len(chunk)
        errors = [error for _, error in read]
        for i, (cloud, _) in enumerate(read):
            if cloud is None:
                continue
            cast = torch.from_numpy(np.ascontiguousarray(cloud)).to(device=device, dtype=dtype)
            if not bool(torch.isfinite(cast).all()):  # finite in float64 may overflow the model's dtype
                errors[i] = (f"{chunk[i]}: coordinates are not finite as {str(dtype).replace('torch.', '')} "
                             f"(the model's dtype); rescale the file's coordinates")
            else:
                clouds[i] = cast
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
    return p


@exit_on_user_error("any2point-predict", status=EXIT_CHECKPOINT)
def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.topk < 1 or args.batch_size < 1:
        print("any2point-predict: --topk and --batch-size must be at least 1", file=sys.stderr)
        return EXIT_CHECKPOINT
    try:
        loaded = load_checkpoint(args.checkpoint, weights=args.weights, map_location=resolve_device(args.device))
    except (Any2PointError, OSError, ValueError, RuntimeError) as exc:
        print(f"any2point-predict: cannot use checkpoint {args.checkpoint}: {exc}", file=sys.stderr)
        return EXIT_CHECKPOINT
    failed = 0
    for prediction in predict_files(loaded, args.files, topk=args.topk, batch_size=args.batch_size, seed=args.seed):
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
