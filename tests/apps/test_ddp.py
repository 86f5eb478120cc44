"""Two-process DistributedDataParallel training on CPU (gloo, through torchrun): it completes,
only rank 0 writes, and its metrics are those of the whole test set evaluated in one process."""
from __future__ import annotations

import subprocess
import sys

import pytest

from any2point.evaluate import run_eval
from ..tiny_run import TINY, compose_config, env, metrics, run_module


@pytest.mark.slow  # two torchrun workers and an evaluation: about 40 s on 2 cores
def test_two_process_cpu_ddp_metrics_cover_the_whole_test_set(tmp_path):
    run = tmp_path / "run"
    # 3 classes x 5 test samples = 15: the sampler pads one rank's share, which must count once
    overrides = [o for o in TINY if not o.startswith(("data.class_names", "data.samples_per_class.test"))] + [
        "data.class_names=[sphere,cube,torus]", "data.samples_per_class.test=5", "data.val_fraction=0.25",
        "train.epochs=2", "train.batch_size=4", "trainer=ddp", "trainer.num_workers=0", "trainer.progress=false", f"hydra.run.dir={run}"]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m",
           "any2point.train", *overrides]
    done = subprocess.run(cmd, cwd=tmp_path, env=env(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    m = metrics(run)
    assert m["world_size"] == 2 and m["test_samples"] == 15 and m["split"] == "test"
    assert (m["train_samples"], m["val_samples"]) == (12, 6)  # 2 of each class's 6 held out

    single = run_eval(compose_config("eval", [f"checkpoint={run}", "trainer.progress=false"]), tmp_path / "eval")
    assert single["samples"] == 15
    assert (single["oa"], single["macc"]) == (m["oa"], m["macc"])
    done = run_module("any2point.evaluate", [f"checkpoint={run}", "eval.split=val", f"hydra.run.dir={tmp_path / 'ev'}"],
                      cwd=tmp_path)  # the eval app itself
    assert done.returncode == 0, done.stderr[-3000:]
    assert metrics(tmp_path / "ev")["oa"] == m["val_oa"]
