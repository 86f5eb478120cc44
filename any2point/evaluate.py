"""``any2point-eval``: metrics of a trained checkpoint on any dataset config (Hydra app).

    any2point-eval checkpoint=RUN_DIR                       # the data the checkpoint trained on
    any2point-eval checkpoint=RUN_DIR/best_val.safetensors data=modelnet40 data.root=/data/mn40
    any2point-eval checkpoint=RUN_DIR eval.votes=10         # test-time voting

    any2point-eval checkpoint=ZERO_SHOT_RUN data.root=/data/modelnet40_ply_hdf5_2048   # another copy

The number of points and the tokenizer's offset normalisation come from the checkpoint unless
``eval.num_points`` / ``eval.normalize`` say otherwise. Loading against another source
(``expect.source=NAME``) or a data config with another class list fails, saying which. Writes
``metrics.json``, per-class accuracies and the confusion matrix to the run directory.
``data.KEY=VALUE`` without ``data=NAME`` changes the checkpoint's own data config.

A checkpoint of a zero-shot run (a contrastive head and unseen classes: data.classes, or the
checkpoint's own) is evaluated as in training (any2point.zeroshot): ``oa`` / ``macc`` over its
seen classes, and ``zsl_top1``, ``gzsl_seen``, ``gzsl_unseen``, ``gzsl_hm`` on the test split
when the data has one (``split: test``), else on the fallback of the module's docstring.

The helpers :func:`evaluate_dataset` and :func:`write_split_results` are shared with training.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from . import distributed, runtime
from .atomic import atomic_write_json, atomic_write_text
from .checkpoint import LoadedCheckpoint, load_checkpoint, read_checkpoint_info
from .config import CONFIG_MODULE, check_data_values, check_eval_settings, check_required
from .data import DataOptions
from .data.classes import ClassSelection
from .errors import CheckpointError, ConfigError, exit_on_user_error, user_errors_exit
from .engine import make_loader, predict
from .hydra_app import run_hydra_app
from .metrics import ClassificationResult, classification_metrics
from .plots import plot_confusion_matrix
from .run.splits import load_eval_split
from .tokenizer import TokenizerConfig, check_cloud_size
from .zeroshot import ZeroShotData, ZeroShotResult, evaluate_zero_shot, zero_shot_data

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


def write_zero_shot_results(run_dir: str | Path, result: ZeroShotResult, data: ZeroShotData) -> list[str]:
    """Per-class files and confusion matrices of ZSL (``*_zsl``) and GZSL (``*_gzsl``)."""
    return (write_split_results(run_dir, "zsl", result.zsl, data.unseen,
                                title=f"ZSL ({result.split}): top-1 {result.zsl.oa:.2f}")
            + write_split_results(run_dir, "gzsl", result.gzsl, data.all,
                                  title=f"GZSL ({result.split}): seen {result.seen:.2f}  unseen {result.unseen:.2f}  "
                                        f"H {result.hm:.2f}"))


def _zero_shot_selection(options: DataOptions, info: dict) -> ClassSelection | None:
    """The classes of a zero-shot evaluation: data.classes when set, else the checkpoint's own."""
    selection = options.class_selection()
    if selection is None and info.get("unseen_class_names"):
        selection = ClassSelection(tuple(info["class_names"]), tuple(info["unseen_class_names"]))
    return selection if selection is not None and selection.unseen else None


def _run_zero_shot_eval(cfg: DictConfig, run_dir: Path, ctx, options: DataOptions, selection: ClassSelection,
                        seed: int, start: float) -> dict:
    if cfg.eval.split == "train":
        raise ConfigError("eval.split=train: a zero-shot evaluation reads the test split (auto, test) or the "
                          "fallback (val)")
    data = zero_shot_data(options, seed, selection, cfg.eval.split)
    loaded = _load(cfg, ctx, class_names=None)
    if not loaded.model.head.open_vocabulary:
        raise ConfigError(f"{loaded.path} has a {loaded.model.head.config.name} head, which cannot score unseen "
                          f"classes by name; zero-shot evaluation needs a run trained with model.head.name=contrastive")
    kw = dict(precision=cfg.trainer.precision, num_workers=cfg.trainer.num_workers, votes=cfg.eval.votes,
              vote_scale=cfg.eval.vote_scale, seed=seed, progress=cfg.trainer.progress)
    with loaded.model.head.classes(data.seen):
        seen = evaluate_dataset(loaded.model, data.seen_eval, ctx, batch_size=cfg.eval.batch_size, **kw)
    result = evaluate_zero_shot(loaded.model, data, ctx, batch_size=cfg.eval.batch_size, **kw)
    metrics = {**_common_metrics(loaded, options), "split": data.split, "oa": seen.oa, "macc": seen.macc,
               "samples": seen.samples, **result.metrics(), "seen_classes": len(data.seen),
               "unseen_classes": list(data.unseen), "seconds": time.perf_counter() - start}
    if ctx.is_main:
        atomic_write_json(run_dir / METRICS_JSON, metrics)
        write_split_results(run_dir, "seen", seen, data.seen)
        write_zero_shot_results(run_dir, result, data)
        log.info("zero-shot (%s split of %s): ZSL top-1 %.2f  GZSL seen %.2f  unseen %.2f  H %.2f  -> %s", data.split,
                 metrics["data"], result.zsl.oa, result.seen, result.unseen, result.hm, run_dir / METRICS_JSON)
    return metrics


def _load(cfg: DictConfig, ctx, class_names) -> LoadedCheckpoint:
    overrides = {"tokenizer": {"normalize": cfg.eval.normalize}} if cfg.eval.normalize else None
    return load_checkpoint(cfg.checkpoint, source=cfg.expect.source, weights_tag=cfg.expect.weights_tag,
                           class_names=class_names, weights=cfg.weights, model_overrides=overrides,
                           map_location=ctx.device, text_weights=cfg.text_weights)


def _common_metrics(loaded: LoadedCheckpoint, options: DataOptions) -> dict:
    return {"checkpoint": str(loaded.path), "source": loaded.info["source"]["name"],
            "weights_tag": loaded.info["source"]["weights_tag"], "data": options.name,
            "peft": loaded.info["peft"].get("name")}


def run_eval(cfg: DictConfig, run_dir: str | Path) -> dict:
    """Evaluate ``cfg.checkpoint``; returns the metrics written to ``run_dir/metrics.json``."""
    check_required(cfg)
    check_eval_settings(cfg)  # every value, before the checkpoint or any data is read
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
            if cfg.data_overrides:
                data_cfg = OmegaConf.merge(data_cfg, OmegaConf.to_container(cfg.data_overrides, resolve=True))
        data_cfg.num_points = int(cfg.eval.num_points or info["num_points"])
        options = check_data_values(data_cfg)  # the checkpoint's data config too, before any data is read
        if cfg.eval.num_points:  # the checkpoint's own number was checked with its JSON
            check_cloud_size(TokenizerConfig(**info["model"]["tokenizer"]), options.num_points, "eval.num_points")
        seed = cfg.seed if cfg.seed is not None else trained.get("seed", 0)
        if not isinstance(seed, int) or isinstance(seed, bool):
            raise CheckpointError(f"{cfg.checkpoint}: the checkpoint's config.seed is {seed!r:.40}, not an integer; "
                                  f"set seed=... to choose the validation split")
        selection = _zero_shot_selection(options, info)
        if selection is not None:
            return _run_zero_shot_eval(cfg, run_dir, ctx, options, selection, seed, start)
        dataset = load_eval_split(options, cfg.eval.split, seed)
        loaded = _load(cfg, ctx, class_names=dataset.class_names)
        result = evaluate_dataset(loaded.model, dataset, ctx, batch_size=cfg.eval.batch_size,
                                  precision=cfg.trainer.precision, num_workers=cfg.trainer.num_workers,
                                  votes=cfg.eval.votes, vote_scale=cfg.eval.vote_scale, seed=seed,
                                  progress=cfg.trainer.progress)
        metrics = {
            **_common_metrics(loaded, options),
            "split": dataset.split,
            "oa": result.oa,
            "macc": result.macc,
            "samples": result.samples,
            "votes": cfg.eval.votes,
            "num_points": options.num_points,
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


def _app(cfg: DictConfig) -> None:
    from hydra.core.hydra_config import HydraConfig

    with user_errors_exit("any2point-eval"):  # inside: Hydra would print a traceback
        run_eval(cfg, HydraConfig.get().runtime.output_dir)


def route_data_overrides(argv: list[str]) -> list[str]:
    """``data.KEY=VALUE`` with no ``data=NAME`` -> ``+data_overrides.KEY=VALUE``: a change of the
    checkpoint's own data config (e.g. ``data.root`` of another copy of the same data)."""
    if any(a.split("=", 1)[0].lstrip("+~") == "data" for a in argv):
        return argv
    return [f"+data_overrides.{a[len('data.'):]}" if a.startswith("data.") and "=" in a else a for a in argv]


@exit_on_user_error("any2point-eval")
def main() -> None:
    run_hydra_app(_app, CONFIG_MODULE, "eval", prepare=route_data_overrides)  # sys.argv read, never edited


if __name__ == "__main__":
    main()
