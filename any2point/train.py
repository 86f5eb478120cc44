"""``any2point-train`` (also ``python -m any2point.train``): the training app (Hydra).

    any2point-train                                      # quickstart: minilm on procedural shapes, CPU
    any2point-train experiment=dinov2_scanobjectnn data.root=/data/ScanObjectNN/h5_files trainer=gpu
    any2point-train -m source=tiny_1d,tiny_2d            # a sweep, one job per source
    torchrun --nproc_per_node=4 -m any2point.train trainer=ddp ...

Everything a run writes goes to its Hydra run directory: ``.hydra/`` (the composed config),
``train.log``, ``history.csv`` and ``tensorboard/`` (per epoch), ``last.safetensors`` (resumable
state, replaced atomically after every epoch; any2point.run.resume), ``best_val.safetensors/.json`` (best epoch on the
validation split), ``checkpoint.safetensors/.json`` (the final model, the one reported),
``per_class_<split>.csv/.json``, ``confusion_<split>.png`` and ``metrics.json``.

Rerunning the same command on the same run directory (``hydra.run.dir=...``) continues from
the last completed epoch; on CPU the result is bitwise that of an uninterrupted run. One
process writes a run directory at a time (any2point.run.lock); settings that cannot work are
refused before any data is read (any2point.config.check_train_settings). After every epoch the
trained tensors are checked before anything is validated or saved: a loss or a tensor that is
no longer finite stops the run with :class:`~any2point.errors.TrainingDivergedError`, and the
files of the last good epoch stay as they were.
"""
from __future__ import annotations

import logging
import math
import os
import time
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from . import distributed, runtime
from .atomic import atomic_write_json
from .checkpoint import BEST_VAL, CHECKPOINT, current_state_key, save_checkpoint, trained_keys, trained_state_dict
from .config import CONFIG_MODULE, check_required, check_train_settings
from .data import DataOptions
from .engine import autocast, make_loader, train_one_epoch
from .errors import CheckpointError, ConfigError, TrainingDivergedError, exit_on_user_error, user_errors_exit
from .evaluate import METRICS_JSON, evaluate_dataset, write_split_results, write_zero_shot_results
from .factory import create_model_from_config
from .hydra_app import check_source_preset, run_hydra_app
from .run.history import EpochHistory
from .metrics import ClassificationResult
from .optim import build_optimizer, build_scheduler
from .params import parameter_report
from .recorded import settings_as_today
from .run.resume import (LEGACY_TRAINING_STATE, TRAINING_STATE, TrainingState, read_training_state,
                           refuse_legacy_state, restore_training_state, save_training_state)
from .run.splits import RunSplits, load_splits
from .run.lock import run_directory_lock
from .zeroshot import ZERO_SHOT_KEYS, evaluate_zero_shot

__all__ = ["run_training", "main"]

log = logging.getLogger(__name__)

# Config sections that must not change when a run resumes (trainer settings may: e.g. workers).
_RESUME_SECTIONS = ("source", "data", "model", "peft", "train", "seed")


def _flatten(value, prefix: str = "") -> dict:
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out
    return {prefix.rstrip("."): value}


def _fingerprint(cfg: DictConfig, world_size: int, weights_sha256: str | None) -> dict:
    """The settings a resumed run must share, with the source's weights by identity (SHA-256),
    not by path: the same file moved resumes, another file does not."""
    sections = {k: OmegaConf.to_container(cfg[k], resolve=True) if OmegaConf.is_config(cfg[k]) else cfg[k]
                for k in _RESUME_SECTIONS}
    sections["train"].pop("resume", None)
    flat = _flatten(sections)
    flat.pop("source.weights", None)
    return {**flat, "source.weights_sha256": weights_sha256, "world_size": world_size}


def _check_resumable(saved: dict, now: dict, path: Path) -> None:
    saved = {k: v for k, v in saved.items() if k != "source.weights"}  # older states: a path, never compared
    keys = set(saved) | set(now)
    if "source.weights_sha256" not in saved:  # older states recorded no identity
        keys.discard("source.weights_sha256")
    changed = sorted(k for k in keys if saved.get(k) != now.get(k))
    if changed:
        detail = ", ".join(f"{k}: {saved.get(k)!r} -> {now.get(k)!r}" for k in changed[:6])
        raise CheckpointError(f"{path} was written by a run with other settings ({detail}{' ...' if len(changed) > 6 else ''}); "
                              f"rerun with the same settings to resume, use another hydra.run.dir, or set "
                              f"train.resume=false to start this directory over")


def _source_section(cfg: DictConfig) -> dict:
    return OmegaConf.to_container(cfg.source, resolve=True)


class _Run:
    """The state of one training run between epochs."""

    def __init__(self, cfg: DictConfig, run_dir: Path, ctx: distributed.DistContext, data: DataOptions,
                 peft_config: str | None = None):
        self.cfg, self.run_dir, self.ctx = cfg, run_dir, ctx
        self.peft_config = peft_config  # the peft option chosen, e.g. an ablation of the same method
        self.started = time.perf_counter()
        autocast(ctx.device, cfg.trainer.precision)  # an unusable precision fails before any work
        if cfg.trainer.compile and cfg.trainer.activation_checkpointing:
            raise ConfigError("trainer.compile=true and trainer.activation_checkpointing=true cannot be combined: "
                              "checkpointing keeps BatchNorm statistics right by re-running regions eagerly, "
                              "which torch.compile does not trace; set one of them to false")
        saved = self._read_state() if cfg.train.resume else None  # a bad state fails before any data is read
        runtime.configure(cfg.trainer, ctx.device)
        runtime.seed_everything(cfg.seed)
        self.splits: RunSplits = load_splits(data, cfg.seed)
        self.class_names = self.splits.class_names
        self.model = create_model_from_config(cfg, len(self.class_names)).to(ctx.device)
        self.model.head.bind_classes(self.class_names)
        self.params = parameter_report(self.model)
        t = cfg.train
        self.optimizer = build_optimizer(self.model, t.lr, t.weight_decay, t.betas)
        self.train_loader = make_loader(self.splits.train, t.batch_size, ctx, train=True, seed=cfg.seed,
                                        num_workers=cfg.trainer.num_workers)
        if len(self.train_loader) == 0:  # the loader drops an epoch's last incomplete batch
            share = len(self.train_loader.sampler)
            raise ConfigError(f"train.batch_size={t.batch_size} is more than the {share} training samples"
                              f"{' per process' if ctx.distributed else ''}; an epoch drops its last incomplete "
                              f"batch, so it would have no step: lower train.batch_size or add training data")
        self.scheduler = build_scheduler(self.optimizer, steps_per_epoch=len(self.train_loader), epochs=t.epochs,
                                         warmup_epochs=t.warmup_epochs, lr=t.lr, warmup_lr=t.warmup_lr,
                                         min_lr=t.min_lr)
        self.fingerprint = _fingerprint(cfg, ctx.world_size, getattr(self.model.source, "weights_sha256", None))
        self.epoch = 0  # completed epochs
        self.best = {"oa": None, "macc": None, "epoch": None}
        self.seconds_before = 0.0
        self.last_val: tuple[int, ClassificationResult] | None = None
        runtime.seed_everything(cfg.seed + ctx.rank)  # each rank its own dropout stream
        if saved is not None:
            self._resume(saved)
        elif not cfg.train.resume and ctx.is_main:
            self._start_over()
        self.model.activation_checkpointing = bool(cfg.trainer.activation_checkpointing)
        self.net = self.model
        if ctx.distributed:
            self.net = torch.nn.parallel.DistributedDataParallel(
                self.model, device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None, static_graph=True)
        if cfg.trainer.compile:
            self.net = torch.compile(self.net)  # shares the parameters; saving and evaluation use self.model

    # -- resume ---------------------------------------------------------------------------------

    def _read_state(self) -> TrainingState | None:
        refuse_legacy_state(self.run_dir)  # a pickle is never opened
        return read_training_state(self.run_dir / TRAINING_STATE)

    def _resume(self, state: TrainingState) -> None:
        path = state.path
        _check_resumable(settings_as_today(state.fingerprint), self.fingerprint, path)
        method = self.model.peft_config.name  # tensors saved under a part's name before a rename
        state.tensors = {f"model/{current_state_key(method, k[len('model/'):])}" if k.startswith("model/") else k: v
                         for k, v in state.tensors.items()}
        if not 0 <= state.epoch <= self.cfg.train.epochs:
            raise CheckpointError(f"{path} says {state.epoch} epochs are done, of {self.cfg.train.epochs}; set "
                                  f"train.resume=false to start this directory over")
        restore_training_state(state, model=self.model, model_keys=trained_keys(self.model),
                               optimizer=self.optimizer, scheduler=self.scheduler, rank=self.ctx.rank)
        self.epoch, self.best, self.seconds_before = state.epoch, state.best, state.seconds
        log.info("resuming %s after epoch %d of %d", self.run_dir, self.epoch, self.cfg.train.epochs)

    def _start_over(self) -> None:
        for name in (TRAINING_STATE, LEGACY_TRAINING_STATE):
            if (self.run_dir / name).exists():
                log.warning("train.resume=false: starting %s over (its %s is replaced)", self.run_dir, name)
                os.unlink(self.run_dir / name)

    def _save_state(self) -> None:
        rng = distributed.gather_objects(runtime.rng_state(), self.ctx)
        if self.ctx.is_main:
            save_training_state(self.run_dir / TRAINING_STATE, epoch=self.epoch,
                                model=trained_state_dict(self.model), optimizer=self.optimizer.state_dict(),
                                scheduler=self.scheduler.state_dict(), rng=rng, best=self.best,
                                seconds=self.elapsed(), fingerprint=self.fingerprint)

    def elapsed(self) -> float:
        return self.seconds_before + time.perf_counter() - self.started

    # -- the loop -------------------------------------------------------------------------------

    def _evaluate(self, dataset) -> ClassificationResult:
        c = self.cfg
        distributed.sync_buffers(self.model, self.ctx)  # every rank evaluates rank 0's model, the one saved
        # the model sees at most a training batch at a time: no buffers larger than a step's
        return evaluate_dataset(self.model, dataset, self.ctx, batch_size=c.train.eval_batch_size,
                                precision=c.trainer.precision, num_workers=c.trainer.num_workers, seed=c.seed,
                                forward_batch=min(c.train.batch_size, c.train.eval_batch_size))

    def _save(self, stem: str, extra: dict) -> None:
        if self.splits.zero_shot is not None:
            extra = {**extra, "unseen_class_names": list(self.splits.zero_shot.unseen)}
        if self.ctx.is_main:
            save_checkpoint(self.model, self.run_dir / stem, source=_source_section(self.cfg),
                            class_names=self.class_names, num_points=int(self.cfg.data.num_points), config=self.cfg,
                            extra=extra)

    def fit(self) -> None:
        c, ctx = self.cfg, self.ctx
        epochs = c.train.epochs
        history = EpochHistory(self.run_dir, done_epochs=self.epoch, enabled=ctx.is_main)
        try:
            while self.epoch < epochs:
                e = self.epoch
                self.splits.train.set_epoch(e)
                self.train_loader.sampler.set_epoch(e)
                stats = train_one_epoch(self.net, self.train_loader, self.optimizer, self.scheduler, ctx, epoch=e,
                                        epochs=epochs, grad_clip=c.train.grad_clip,
                                        label_smoothing=c.train.label_smoothing, precision=c.trainer.precision,
                                        progress=c.trainer.progress)
                self._refuse_non_finite(e + 1, stats.loss)  # before anything of this epoch is saved
                val = None
                if self.splits.val is not None and ((e + 1) % c.train.val_every == 0 or e + 1 == epochs):
                    val = self._evaluate(self.splits.val)
                    self.last_val = (e + 1, val)
                    if self.best["oa"] is None or val.oa > self.best["oa"]:
                        self.best = {"oa": val.oa, "macc": val.macc, "epoch": e + 1}
                        self._save(BEST_VAL, {"epoch": e + 1, "val_oa": val.oa, "val_macc": val.macc})
                self.epoch = e + 1
                history.log(self.epoch, {"lr": stats.lr, "train_loss": stats.loss, "train_acc": stats.accuracy,
                                         "val_oa": val.oa if val else None, "val_macc": val.macc if val else None,
                                         "seconds": stats.seconds, "samples_per_s": stats.samples_per_second})
                if ctx.is_main:
                    log.info("epoch %d/%d  loss %.4f  train acc %.2f%s  lr %.2e  %.1f samples/s", self.epoch, epochs,
                             stats.loss, stats.accuracy,
                             f"  val OA {val.oa:.2f} mAcc {val.macc:.2f}" if val else "", stats.lr,
                             stats.samples_per_second)
                self._save_state()
        finally:
            history.close()

    def _refuse_non_finite(self, epoch: int, loss: float) -> None:
        """Stop when the epoch's loss or a trained tensor (parameter or statistic) is NaN or
        infinite: the last step diverged, and saving or validating it would replace the last
        good state with garbage."""
        state = self.model.state_dict()
        bad = [k for k in sorted(trained_keys(self.model, state))
               if state[k].is_floating_point() and not bool(torch.isfinite(state[k]).all())]
        if not bad and math.isfinite(loss):
            return
        what = (f"{len(bad)} trained tensors hold NaN or infinite values ({', '.join(bad[:3])}"
                f"{', ...' if len(bad) > 3 else ''})" if bad else f"the mean training loss is {loss}")
        kept = (f"the files of epoch {self.epoch} ({TRAINING_STATE}, best_val.*) are kept as they were" if self.epoch
                else "nothing was saved")
        raise TrainingDivergedError(f"training diverged in epoch {epoch}: {what}; lower train.lr "
                                    f"(now {self.cfg.train.lr}) or check the data; {kept}")

    # -- the end --------------------------------------------------------------------------------

    def finish(self) -> dict:
        c, splits = self.cfg, self.splits
        results: dict[str, ClassificationResult] = {}
        if splits.val is not None:
            results["val"] = (self.last_val[1] if self.last_val and self.last_val[0] == self.epoch
                              else self._evaluate(splits.val))
        if splits.test is not None:
            results["test"] = self._evaluate(splits.test)
        zero_shot = None
        if splits.zero_shot is not None:
            distributed.sync_buffers(self.model, self.ctx)
            zero_shot = evaluate_zero_shot(self.model, splits.zero_shot, self.ctx, batch_size=c.train.eval_batch_size,
                                           precision=c.trainer.precision, num_workers=c.trainer.num_workers,
                                           seed=c.seed)
        report = splits.report
        metrics = {
            "source": c.source.name, "weights_tag": self.model.source.weights_tag, "data": c.data.name,
            "peft": c.peft.name, "peft_config": self.peft_config or c.peft.name, "split": report,
            "oa": results[report].oa if report else None, "macc": results[report].macc if report else None,
        }
        for name, r in results.items():
            metrics[f"{name}_oa"], metrics[f"{name}_macc"], metrics[f"{name}_samples"] = r.oa, r.macc, r.samples
        if splits.val is not None:
            metrics.update(best_val_oa=self.best["oa"], best_val_macc=self.best["macc"],
                           best_val_epoch=self.best["epoch"])
        metrics.update(
            test_skipped=splits.test_skipped, classes=len(self.class_names), num_points=int(c.data.num_points),
            train_samples=len(splits.train), trainable_params=self.params["trainable"],
            trainable_params_without_head=self.params["trainable_without_head"], total_params=self.params["total"],
            trainable_percent=100.0 * self.params["trainable_fraction"], epochs=self.epoch,
            world_size=self.ctx.world_size)
        if zero_shot is not None:
            metrics.update(split=zero_shot.split, **zero_shot.metrics(), seen_classes=len(splits.zero_shot.seen),
                           unseen_classes=list(splits.zero_shot.unseen))
        kept = ("split", "oa", "macc") + (ZERO_SHOT_KEYS if zero_shot is not None else ())
        self._save(CHECKPOINT, {"epoch": self.epoch, "metrics": {k: metrics[k] for k in kept}})
        metrics["seconds"] = self.elapsed()
        metrics["peak_rss_mb"] = runtime.peak_resident_mb()  # this process's peak resident set (ru_maxrss)
        if self.ctx.is_main:
            for name, r in results.items():
                write_split_results(self.run_dir, name, r, self.class_names)
            if zero_shot is not None:
                write_zero_shot_results(self.run_dir, zero_shot, splits.zero_shot)
            atomic_write_json(self.run_dir / METRICS_JSON, metrics)
            if report:
                log.info("final model (epoch %d) on the %s split of %s: OA %.2f%%  mAcc %.2f%%  (%d samples, %d "
                         "classes, chance %.1f%%)%s", self.epoch, report, c.data.name, metrics["oa"], metrics["macc"],
                         results[report].samples, len(self.class_names), 100.0 / len(self.class_names),
                         f"; best val OA {self.best['oa']:.2f}% at epoch {self.best['epoch']}" if splits.val else "")
            else:
                log.warning("no validation or test split: nothing evaluated (set data.val_fraction > 0)")
            if zero_shot is not None:
                log.info("zero-shot (%s): ZSL top-1 %.2f%% (%d unseen classes); GZSL seen %.2f%%, unseen %.2f%%, "
                         "harmonic mean %.2f%%", zero_shot.split, zero_shot.zsl.oa, len(splits.zero_shot.unseen),
                         zero_shot.seen, zero_shot.unseen, zero_shot.hm)
            if splits.test_skipped:
                log.info("test split skipped: %s", splits.test_skipped)
            log.info("run directory: %s", self.run_dir)
        return metrics


def run_training(cfg: DictConfig, run_dir: str | Path, peft_config: str | None = None) -> dict:
    """Train as ``cfg`` says, writing everything to ``run_dir``; returns the final metrics.
    ``peft_config``: the name of the ``peft`` config option, recorded to tell ablations apart.
    Rank 0 holds the run directory's lock for the whole run."""
    check_required(cfg)
    data = check_train_settings(cfg)  # the data section as its format's options, converted once
    ctx = distributed.setup(cfg.trainer)
    try:
        shared = Path(distributed.broadcast_object(str(run_dir), ctx))  # rank 0's directory for all
        if shared != Path(run_dir):
            log.warning("rank %d: writing to rank 0's run directory %s (pass hydra.run.dir to torchrun jobs)",
                        ctx.rank, shared)
        with run_directory_lock(shared, enabled=ctx.is_main):
            shared.mkdir(parents=True, exist_ok=True)
            run = _Run(cfg, shared, ctx, data, peft_config)
            run.fit()
            return run.finish()
    finally:
        distributed.cleanup()


def _app(cfg: DictConfig) -> float | None:
    from hydra.core.hydra_config import HydraConfig

    hydra_cfg = HydraConfig.get()
    runtime_info = hydra_cfg.runtime
    with user_errors_exit("any2point-train"):  # inside: Hydra would print a traceback
        name = OmegaConf.select(cfg, "source.name")  # None while unset: check_required names it
        if name is not None:
            check_source_preset(name, runtime_info.choices.get("model"), list(hydra_cfg.overrides.task))
        return run_training(cfg, runtime_info.output_dir, runtime_info.choices.get("peft")).get("oa")


@exit_on_user_error("any2point-train")
def main() -> None:
    run_hydra_app(_app, CONFIG_MODULE, "train")  # source.name=timm:... chooses model=base (any2point.hydra_app)


if __name__ == "__main__":
    main()
