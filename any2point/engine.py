"""The loops: data loaders, one training epoch, and predictions over a whole split.

Sample order comes from a DistributedSampler in every case (one replica without DDP), seeded
by (seed, epoch): the order, like each sample's random points and augmentations, is a
function of the epoch, so a resumed run sees the same batches as an uninterrupted one and
the number of DataLoader workers changes nothing. Loaders get their own generator, so they
never draw from the global RNG that dropout uses.
"""
from __future__ import annotations

import time
from contextlib import nullcontext
from dataclasses import dataclass
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler
from tqdm.auto import tqdm

from . import runtime
from .distributed import DistContext, gather_objects
from .errors import ConfigError, TrainingDivergedError

__all__ = ["PRECISIONS", "autocast", "make_loader", "EpochStats", "train_one_epoch", "Predictions", "predict"]

PRECISIONS = ("32", "bf16")


def autocast(device: torch.device, precision: str):
    """bf16 autocast on CUDA; full precision otherwise."""
    if precision not in PRECISIONS:
        raise ConfigError(f"trainer.precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision == "bf16":
        if device.type != "cuda":
            raise ConfigError("trainer.precision=bf16 is for CUDA devices; use trainer.precision=32 on CPU")
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return nullcontext()


def make_loader(dataset: Dataset, batch_size: int, ctx: DistContext, *, train: bool, seed: int,
                num_workers: int = 0) -> DataLoader:
    """Training: shuffled per epoch (call ``loader.sampler.set_epoch``), last partial batch dropped
    (BatchNorm needs more than one sample). Evaluation: in order, every sample once per rank's
    share (the sampler pads the shares to equal length; :func:`predict` removes the repeats)."""
    if batch_size < 1:
        raise ConfigError(f"batch size must be at least 1, got {batch_size}")
    sampler = DistributedSampler(dataset, num_replicas=ctx.world_size, rank=ctx.rank, shuffle=train, seed=seed,
                                 drop_last=False)
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, drop_last=train, num_workers=num_workers,
                      pin_memory=ctx.device.type == "cuda", generator=torch.Generator().manual_seed(seed),
                      persistent_workers=False)


@dataclass
class EpochStats:
    loss: float  # mean training loss over the epoch's samples (all ranks)
    accuracy: float  # training accuracy of the epoch, percent
    samples: int
    seconds: float
    lr: float  # learning rate of the epoch's last step

    @property
    def samples_per_second(self) -> float:
        return self.samples / max(self.seconds, 1e-9)


def _all_reduce_sum(values: list[float], ctx: DistContext) -> list[float]:
    if not ctx.distributed:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=ctx.device if ctx.device.type == "cuda" else "cpu")
    torch.distributed.all_reduce(t)
    return t.tolist()


def train_one_epoch(model: nn.Module, loader: DataLoader, optimizer: torch.optim.Optimizer,
                    scheduler: torch.optim.lr_scheduler.LRScheduler, ctx: DistContext, *, epoch: int, epochs: int,
                    grad_clip: float | None = None, label_smoothing: float = 0.0, precision: str = "32",
                    progress: bool = True) -> EpochStats:
    """One pass over ``loader``; the scheduler steps after every optimizer step."""
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    loss_sum = correct = seen = 0.0
    start = time.perf_counter()
    bar = tqdm(loader, desc=f"epoch {epoch + 1}/{epochs}", disable=not (progress and ctx.is_main),
               dynamic_ncols=True, leave=False)
    for step, (points, labels) in enumerate(bar):
        points = points.to(ctx.device, non_blocking=True)
        labels = labels.to(ctx.device, non_blocking=True)
        with autocast(ctx.device, precision):
            logits = model(points)
        loss = F.cross_entropy(logits.float(), labels, label_smoothing=label_smoothing)
        if not torch.isfinite(loss):
            raise TrainingDivergedError(f"the training loss became {loss.item()} at epoch {epoch + 1}, step {step + 1}: "
                                        f"lower train.lr or check the data")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if grad_clip:
            torch.nn.utils.clip_grad_norm_(params, grad_clip)
        try:
            optimizer.step()
        except RuntimeError as exc:  # an update beyond float32's range (e.g. train.lr=1e308)
            if "overflow" not in str(exc):
                raise
            raise TrainingDivergedError(f"the optimizer step overflowed at epoch {epoch + 1}, step {step + 1} "
                                        f"({exc}): lower train.lr") from None
        scheduler.step()
        runtime.respect_host_memory_budget()
        n = labels.shape[0]
        loss_sum += loss.item() * n
        correct += (logits.argmax(dim=1) == labels).sum().item()
        seen += n
        if ctx.is_main and progress:
            rate = seen * ctx.world_size / max(time.perf_counter() - start, 1e-9)
            bar.set_postfix(loss=f"{loss_sum / seen:.4f}", lr=f"{optimizer.param_groups[0]['lr']:.2e}",
                            samples_s=f"{rate:.1f}", refresh=False)
    bar.close()
    loss_sum, correct, seen = _all_reduce_sum([loss_sum, correct, seen], ctx)
    if seen == 0:
        raise ConfigError("the training epoch had no full batch: lower train.batch_size or add data")
    return EpochStats(loss=loss_sum / seen, accuracy=100.0 * correct / seen, samples=int(seen),
                      seconds=time.perf_counter() - start, lr=optimizer.param_groups[0]["lr"])


@dataclass
class Predictions:
    probs: np.ndarray  # (n, C) softmax probabilities (averaged over votes), dataset order
    targets: np.ndarray  # (n,)

    @property
    def preds(self) -> np.ndarray:
        return self.probs.argmax(axis=1)


def vote_scales(num_samples: int, votes: int, scale: tuple[float, float], seed: int) -> torch.Tensor:
    """(votes, num_samples, 3) per-axis factors; vote 0 is the plain cloud (all ones). Drawn per
    dataset index, so a sample's passes do not depend on batching or on the number of ranks."""
    g = torch.Generator().manual_seed(seed)
    low, high = scale
    factors = low + (high - low) * torch.rand(votes, num_samples, 3, generator=g)
    factors[0] = 1.0
    return factors


@torch.no_grad()
def predict(model: nn.Module, loader: DataLoader, ctx: DistContext, *, precision: str = "32", votes: int = 1,
            vote_scale: tuple[float, float] = (0.85, 1.15), seed: int = 0, progress: bool = False,
            desc: str = "eval", forward_batch: int | None = None) -> Predictions:
    """Class probabilities for every sample of the loader's dataset, gathered from all ranks and
    put in dataset order, each sample exactly once (the sampler's padding is dropped).

    ``forward_batch``: run the model on at most that many clouds at a time (None: the loader's
    batch). Training passes its own batch size, so that an evaluation needs no larger buffers
    than a training step: on the CPU, with the heap keeping freed memory, a larger evaluation
    batch adds its own buffers to the resident set for the rest of the run. In evaluation mode
    a cloud's prediction does not depend on the others in its batch."""
    if votes < 1:
        raise ConfigError(f"eval.votes must be at least 1, got {votes}")
    model.eval()
    dataset = loader.dataset
    order = torch.as_tensor(list(iter(loader.sampler)), dtype=torch.long)  # this rank's dataset indices
    scales = vote_scales(len(dataset), votes, tuple(vote_scale), seed) if votes > 1 else None
    probs, targets, position = [], [], 0
    bar = tqdm(loader, desc=desc, disable=not (progress and ctx.is_main), dynamic_ncols=True, leave=False)
    for points, labels in bar:
        idx = order[position:position + labels.shape[0]]
        position += labels.shape[0]
        points = points.to(ctx.device, non_blocking=True)
        total = None
        for v in range(votes):
            view = points if scales is None or v == 0 else points * scales[v, idx].to(points)[:, None, :]
            with autocast(ctx.device, precision):
                p = torch.cat([model(part).float().softmax(dim=1)
                               for part in view.split(forward_batch or view.shape[0])])
            total = p if total is None else total + p
        probs.append((total / votes).cpu())
        targets.append(labels)
    bar.close()
    mine = (order[:position].numpy(), torch.cat(probs).numpy() if probs else np.zeros((0, 0), np.float32),
            torch.cat(targets).numpy() if targets else np.zeros(0, np.int64))
    n = len(dataset)
    all_probs, all_targets, filled = None, np.zeros(n, dtype=np.int64), np.zeros(n, dtype=bool)
    for indices, p, t in gather_objects(mine, ctx):
        if len(indices) == 0:
            continue
        if all_probs is None:
            all_probs = np.zeros((n, p.shape[1]), dtype=np.float32)
        all_probs[indices], all_targets[indices], filled[indices] = p, t, True
    if all_probs is None or not filled.all():
        raise RuntimeError(f"{(~filled).sum() if all_probs is not None else n} of {n} samples got no prediction")
    return Predictions(probs=all_probs, targets=all_targets)
