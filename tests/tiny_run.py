"""Shared by the run tests: test-sized training settings and ways to start the apps."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf

import any2point.config  # noqa: F401  (registers the schemas)

# A tiny random source on a few procedural shapes: a run takes seconds on a CPU.
TINY = ["source=tiny_1d", "data=shapes", "data.num_points=64", "data.protocol.train_fps=80",
        "data.class_names=[sphere,cube,torus,cone]", "data.samples_per_class.train=6",
        "data.samples_per_class.test=3", "train.epochs=1", "train.batch_size=8", "train.eval_batch_size=8",
        "train.warmup_epochs=0", "trainer.progress=false"]


# Runs started inside the pytest process leave its allocator alone (glibc's mallopt settings are
# process-wide and cannot be undone); test_runtime checks them in a subprocess.
IN_PROCESS = ["trainer.reuse_host_memory=false"]


def compose_config(name: str, overrides: list[str]):
    """The composed ``train`` or ``eval`` config, for a run inside the test process (``IN_PROCESS``)."""
    GlobalHydra.instance().clear()
    try:
        with initialize_config_module(config_module="any2point.conf", version_base="1.3"):
            return compose(name, overrides=[*IN_PROCESS, *overrides])
    finally:
        GlobalHydra.instance().clear()


def env() -> dict:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}


def run_module(module: str, args: list[str], cwd: Path, timeout: float = 300, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", module, *args], cwd=cwd, env=env(), capture_output=True, text=True,
                          timeout=timeout, **kw)


def metrics(run_dir: Path) -> dict:
    return json.loads((Path(run_dir) / "metrics.json").read_text())


def write_experiment(conf_dir: Path, name: str, overrides: list[str]) -> Path:
    """``conf_dir/experiment/<name>.yaml`` holding ``overrides`` (``group=option`` entries become
    defaults-list overrides), for ``hydra.searchpath=[file://conf_dir] experiment=<name>``."""
    groups = [o.split("=", 1) for o in overrides if "=" in o and "." not in o.split("=", 1)[0]]
    values = OmegaConf.from_dotlist([o for o in overrides if "." in o.split("=", 1)[0]])
    defaults = "".join(f"  - override /{g}: {v}\n" for g, v in groups)
    path = Path(conf_dir) / "experiment" / f"{name}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("# @package _global_\n" + (f"defaults:\n{defaults}" if defaults else "") + OmegaConf.to_yaml(values))
    return path
