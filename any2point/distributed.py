"""Processes and devices: one process, or DistributedDataParallel over several.

``torchrun`` (or the SLURM launcher through submitit) starts one process per device and sets
RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR / MASTER_PORT; :func:`setup` joins them into a
process group (gloo on CPU, nccl on CUDA). Without ``trainer.strategy=ddp`` everything runs in
one process and the helpers here are no-ops.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

__all__ = ["DistContext", "setup", "cleanup", "broadcast_object", "gather_objects", "barrier", "resolve_device",
           "sync_buffers"]

log = logging.getLogger(__name__)

ACCELERATORS = ("cpu", "cuda", "auto")
STRATEGIES = ("single", "ddp")
BACKENDS = ("auto", "gloo", "nccl")


@dataclass(frozen=True)
class DistContext:
    device: torch.device
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1 or (dist.is_available() and dist.is_initialized())


def resolve_device(accelerator: str, local_rank: int = 0) -> torch.device:
    if accelerator not in ACCELERATORS:
        raise ValueError(f"trainer.accelerator must be one of {', '.join(ACCELERATORS)}, got {accelerator!r}")
    if accelerator == "auto":
        accelerator = "cuda" if torch.cuda.is_available() else "cpu"
    if accelerator == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError("trainer.accelerator=cuda but no CUDA device is visible to PyTorch; "
                               "use trainer=cpu (or trainer.accelerator=cpu)")
        torch.cuda.set_device(local_rank % torch.cuda.device_count())
        return torch.device("cuda", local_rank % torch.cuda.device_count())
    return torch.device("cpu")


def _export_slurm_env() -> None:
    """Inside a submitit SLURM job, derive the torch.distributed variables from SLURM's."""
    try:
        from submitit.helpers import TorchDistributedEnvironment
    except ImportError as exc:
        raise RuntimeError("trainer=ddp under SLURM needs submitit: pip install 'any2point[slurm]'") from exc
    TorchDistributedEnvironment().export(set_cuda_visible_devices=False)


def setup(trainer) -> DistContext:
    """The process's device, rank and world size; joins the process group for ``strategy=ddp``."""
    strategy = trainer.strategy
    if strategy not in STRATEGIES:
        raise ValueError(f"trainer.strategy must be one of {', '.join(STRATEGIES)}, got {strategy!r}")
    if trainer.backend not in BACKENDS:
        raise ValueError(f"trainer.backend must be one of {', '.join(BACKENDS)}, got {trainer.backend!r}")
    if strategy == "single":
        return DistContext(device=resolve_device(trainer.accelerator))

    if "RANK" not in os.environ and "SLURM_PROCID" in os.environ and int(os.environ.get("SLURM_NTASKS", "1")) > 1:
        _export_slurm_env()
    missing = [k for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT") if k not in os.environ]
    if missing:
        raise RuntimeError(
            f"trainer=ddp needs a launcher that starts one process per device (environment lacks "
            f"{', '.join(missing)}): run `torchrun --nproc_per_node=N -m any2point.train trainer=ddp ...`, "
            f"or use hydra/launcher=slurm with tasks_per_node=N")
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", rank))
    device = resolve_device(trainer.accelerator, local_rank)
    backend = trainer.backend if trainer.backend != "auto" else ("nccl" if device.type == "cuda" else "gloo")
    if backend == "nccl" and device.type != "cuda":
        raise ValueError("trainer.backend=nccl needs CUDA devices; use trainer.backend=gloo on CPU")
    if not dist.is_initialized():
        dist.init_process_group(backend=backend, rank=rank, world_size=world,
                                device_id=device if device.type == "cuda" else None)
    log.info("process %d of %d on %s (%s)", rank, world, device, backend)
    return DistContext(device=device, rank=rank, world_size=world, local_rank=local_rank)


def cleanup() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier(ctx: DistContext) -> None:
    if ctx.distributed:
        dist.barrier()


def broadcast_object(obj: Any, ctx: DistContext, src: int = 0) -> Any:
    """``obj`` as held by rank ``src``, on every rank."""
    if not ctx.distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def gather_objects(obj: Any, ctx: DistContext) -> list[Any]:
    """Every rank's ``obj``, in rank order, on every rank."""
    if not ctx.distributed:
        return [obj]
    out: list[Any] = [None] * ctx.world_size
    dist.all_gather_object(out, obj)
    return out


def sync_buffers(module: torch.nn.Module, ctx: DistContext, src: int = 0) -> None:
    """Copy rank ``src``'s buffers (BatchNorm statistics) to every rank. DDP broadcasts them at the
    start of each training forward, so after the last step every rank holds its own; evaluating
    then would mix models. Parameters are identical on all ranks and are left alone."""
    if not ctx.distributed:
        return
    for buffer in module.buffers():
        dist.broadcast(buffer.data, src=src)
