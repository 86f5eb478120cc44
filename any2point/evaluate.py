"""``any2point-eval``: metrics of a trained checkpoint on any dataset config (Hydra app).

    any2point-eval checkpoint=RUN_DIR                       # the data the checkpoint trained on
    any2point-eval checkpoint=RUN_DIR/best_val.safetensors data=modelnet40 data.root=/data/mn40
    any2point-eval checkpoint=RUN_DIR eval.votes=10         # test-time voting

The number of points and the tokenizer's offset normalisation come from the checkpoint unless
``eval.num_points`` / ``eval.normalize`` say otherwise. Loading against another source
(``expect.source=NAME``) or a data config with another class list fails, saying which. Writes
``metrics.json``, per-class accuracies and the confusion matrix to the run directory.

The helpers :func:`evaluate_dataset` and :func:`write_split_results` are shared with training.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from . import distributed, runtime
from .atomic import atomic_write_json, atomic_write_text
from .checkpoint import load_checkpoint, read_checkpoint_info
from .config import CONFIG_MODULE, check_required
from .errors import CheckpointError, exit_on_user_error, user_errors_exit
from .engine import make_loader, predict
from .metrics import ClassificationResult, classification_metrics
from .plots import plot_confusion_matrix
from .run_data import load_eval_split

__all__ = ["evaluate_dataset", "write_split_results", "run_eval", "main", "METRICS_JSON"]

log = logging.getLogger(__name__)

METRICS_JSON = "metrics.json"


def evaluate_dataset(model, dataset, ctx: distributed.DistContext, *, batch_size: int, precision: str = "32",
                     num_workers: int = 0, votes: int = 1, vote_scale=(0.85, 1.15), seed: int = 0,
                     progress: bool = False, forward_batch: int | None = None) -> ClassificationResult:
    """OA / mAcc / per-class / confusion of ``model`` on the whole ``dataset`` (all ranks' shares);
    ``forward_batch``: clouds per model call (``engine.predict``)."""
    loader = make_loader(dataset, batch_size, ctx, train=False, seed=seed, num_workers=num_workers)
    out = predict(model, loader, ctx, precision=precision, votes=votes, vote_scale=tuple(vote_scale), seed=seed,
                  progress=progress, desc=f"{dataset.split}", forward_batch=forward_batch)
    return classification_metrics(out.preds, out.targets, len(dataset.class_names))


def write_split_results(run_dir: str | Path, split: str, result: ClassificationResult, class_names: list[str],
                        title: str = "") -> list[str]:
    """``per_class_<split>.csv`` / ``.json`` and ``confusion_<split>.png``; returns the file names."""
    run_dir = Path(run_dir)
    rows = result.per_class_rows(class_names)
    lines = ["class,accuracy,support"] + [
        f"{r['class']},{'' if r['accuracy'] is None else format(r['accuracy'], '.4f')},{r['support']}" for r in rows]
    names = [f"per_class_{split}.csv", f"per_class_{split}.json", f"confusion_{split}.png"]
    atomic_write_text(run_dir / names[0], "\n".join(lines) + "\n")
    atomic_write_json(run_dir / names[1], {"split": split, "oa": result.oa, "macc": result.macc, "classes": rows,
                                    "confusion": result.confusion.tolist()})
    plot_confusion_matrix(result.confusion, class_names, run_dir / names[2],
                          title=title or f"{split}: OA {result.oa:.2f}  mAcc {result.macc:.2f}")
    return names


def run_eval(cfg: DictConfig, run_dir: str | Path) -> dict:
    """Evaluate ``cfg.checkpoint``; returns the metrics written to ``run_dir/metrics.json``."""
    check_required(cfg)
    run_dir = Path(run_dir)
    ctx = distributed.setup(cfg.trainer)
    try:
        runtime.configure(cfg.trainer, ctx.device)
        start = time.perf_counter()
        info = read_checkpoint_info(cfg.checkpoint)
        trained = info.get("config") or {}
        if cfg.data is not None:
            data_cfg = OmegaConf.create(OmegaConf.to_container(cfg.data, resolve=True))
        else:
            data_cfg = _checkpoint_data_config(trained.get("data"), cfg.checkpoint)
        data_cfg.num_points = int(cfg.eval.num_points or info["num_points"])
        seed = cfg.seed if cfg.seed is not None else trained.get("seed", 0)
        if not isinstance(seed, int) or isinstance(seed, bool):
            raise CheckpointError(f"{cfg.checkpoint}: the checkpoint's config.seed is {seed!r:.40}, not an integer; "
                                  f"set seed=... to choose the validation split")
        dataset = load_eval_split(data_cfg, cfg.eval.split, seed)
        overrides = {"tokenizer": {"normalize": cfg.eval.normalize}} if cfg.eval.normalize else None
        loaded = load_checkpoint(cfg.checkpoint, source=cfg.expect.source, weights_tag=cfg.expect.weights_tag,
                                 class_names=dataset.class_names, weights=cfg.weights, model_overrides=overrides,
                                 map_location=ctx.device)
        result = evaluate_dataset(loaded.model, dataset, ctx, batch_size=cfg.eval.batch_size,
                                  precision=cfg.trainer.precision, num_workers=cfg.trainer.num_workers,
                                  votes=cfg.eval.votes, vote_scale=cfg.eval.vote_scale, seed=seed,
                                  progress=cfg.trainer.progress)
        metrics = {
            "checkpoint": str(loaded.path),
            "source": loaded.info["source"]["name"],
            "weights_tag": loaded.info["source"]["weights_tag"],
            "data": str(data_cfg.get("name")),
            "peft": loaded.info["peft"].get("name"),
            "split": dataset.split,
            "oa": result.oa,
            "macc": result.macc,
            "samples": result.samples,
            "votes": cfg.eval.votes,
            "num_points": data_cfg.num_points,
            "normalize": loaded.model.config.tokenizer.normalize,
            "seconds": time.perf_counter() - start,
            "peak_rss_mb": runtime.peak_resident_mb(),
        }
        if ctx.is_main:
            atomic_write_json(run_dir / METRICS_JSON, metrics)
            write_split_results(run_dir, dataset.split, result, dataset.class_names)
            log.info("%s split of %s (%d samples, %d votes): OA %.2f  mAcc %.2f  -> %s", dataset.split,
                     metrics["data"], result.samples, cfg.eval.votes, result.oa, result.macc, run_dir / METRICS_JSON)
        return metrics
    finally:
        distributed.cleanup()


def _checkpoint_data_config(data, checkpoint) -> DictConfig:
    """The data config a checkpoint trained on, as data to read from: its ``cache_dir`` (a place
    to write) is dropped for the default cache, and nothing in it is interpolated (the
    checkpoint reader refused any ``${...}``)."""
    if not isinstance(data, dict):
        raise CheckpointError(f"{checkpoint}: the checkpoint stores no data config; choose one with data=NAME")
    data = dict(data)
    if data.get("cache_dir") is not None:
        log.info("not writing to the checkpoint's data.cache_dir %s: using the default cache (set data=... and "
                 "data.cache_dir to choose)", data["cache_dir"])
        data["cache_dir"] = None
    return OmegaConf.create(data)


@hydra.main(config_path=f"pkg://{CONFIG_MODULE}", config_name="eval", version_base="1.3")
def _app(cfg: DictConfig) -> None:
    from hydra.core.hydra_config import HydraConfig

    with user_errors_exit("any2point-eval"):  # inside: Hydra would print a traceback
        run_eval(cfg, HydraConfig.get().runtime.output_dir)


@exit_on_user_error("any2point-eval")
def main() -> None:
    _app()


if __name__ == "__main__":
    main()
