"""Training runs: what a run writes, evaluation of its checkpoint, the recipe's optimizer and
schedule, a missing test split, and exact resumption after SIGKILL."""
from __future__ import annotations

import csv
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import any2point
from any2point.data import build_dataset
from any2point.distributed import DistContext
from any2point.engine import make_loader, predict, vote_scales
from any2point.checkpoint import load_checkpoint
from any2point.errors import CheckpointMismatchError, ConfigError, TrainingDivergedError
from any2point.evaluate import run_eval
from any2point.run.resume import read_training_state
from any2point.optim import build_optimizer, build_scheduler, lr_at, parameter_groups
from any2point.train import run_training
from ..tiny_run import TINY, compose_config, env, metrics

RUN_FILES = ["metrics.json", "checkpoint.safetensors", "checkpoint.json", "best_val.safetensors", "best_val.json",
             "last.safetensors", "history.csv", "per_class_test.csv", "per_class_test.json", "confusion_test.png",
             "per_class_val.csv", "confusion_val.png"]


def test_one_epoch_run_writes_everything_and_eval_reproduces_its_metrics(tmp_path):
    run = tmp_path / "run"
    cfg = compose_config("train", TINY + ["data.val_fraction=0.25"])
    result = run_training(cfg, run)

    for name in RUN_FILES:
        assert (run / name).is_file(), name
    assert any((run / "tensorboard").glob("events.out.tfevents.*"))
    m = metrics(run)
    assert m == result
    assert m["split"] == "test" and m["oa"] == m["test_oa"] and m["macc"] == m["test_macc"]
    assert m["source"] == "tiny_1d" and m["data"] == "shapes" and m["peft"] == "any2point" and m["epochs"] == 1
    assert m["best_val_epoch"] == 1 and m["best_val_oa"] == m["val_oa"] and m["test_skipped"] is None
    assert 0 < m["trainable_params_without_head"] < m["trainable_params"] and m["seconds"] > 0
    assert 0 <= m["oa"] <= 100 and 0 <= m["macc"] <= 100
    with open(run / "history.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["epoch"] for r in rows] == ["1"] and float(rows[0]["val_oa"]) == m["val_oa"]
    per_class = json.loads((run / "per_class_test.json").read_text())
    assert [c["class"] for c in per_class["classes"]] == ["sphere", "cube", "torus", "cone"]
    assert sum(c["support"] for c in per_class["classes"]) == m["test_samples"] == 12
    info = json.loads((run / "checkpoint.json").read_text())
    assert info["config"]["train"]["epochs"] == 1 and info["num_points"] == 64 and info["epoch"] == 1

    evaluated = run_eval(compose_config("eval", [f"checkpoint={run}", "trainer.progress=false"]), tmp_path / "eval")
    assert (evaluated["split"], evaluated["oa"], evaluated["macc"]) == ("test", m["oa"], m["macc"])
    assert metrics(tmp_path / "eval")["oa"] == m["oa"]
    val = run_eval(compose_config("eval", [f"checkpoint={run}/best_val.safetensors", "eval.split=val"]),
                   tmp_path / "eval_val")
    assert val["oa"] == m["best_val_oa"]

    other = run_eval(compose_config("eval", [f"checkpoint={run}", "eval.num_points=32", "eval.normalize=modelnet",
                                             "eval.votes=2"]), tmp_path / "eval_other")
    assert (other["num_points"], other["normalize"], other["votes"], other["samples"]) == (32, "modelnet", 2, 12)
    with pytest.raises(CheckpointMismatchError, match="trained on source 'tiny_1d', not 'tiny_2d'"):
        run_eval(compose_config("eval", [f"checkpoint={run}", "expect.source=tiny_2d"]), tmp_path / "e1")
    with pytest.raises(CheckpointMismatchError, match=r"only in the checkpoint: \['cone'\]"):
        run_eval(compose_config("eval", [f"checkpoint={run}", "data=shapes", "data.class_names=[sphere,cube,torus]"]),
                 tmp_path / "e2")


def test_voting_averages_the_plain_and_rescaled_passes():
    model = any2point.create_model("tiny_2d", num_classes=4).eval()
    dataset = build_dataset(compose_config("train", TINY).data, "test")
    ctx = DistContext(device=torch.device("cpu"))
    plain = predict(model, make_loader(dataset, 5, ctx, train=False, seed=0), ctx)
    voted = predict(model, make_loader(dataset, 5, ctx, train=False, seed=0), ctx, votes=3, vote_scale=(0.8, 1.2),
                    seed=7)
    scales = vote_scales(len(dataset), 3, (0.8, 1.2), seed=7)
    assert torch.equal(scales[0], torch.ones(len(dataset), 3)) and not torch.equal(scales[1], scales[2])
    clouds = torch.stack([dataset[i][0] for i in range(len(dataset))])
    with torch.no_grad():
        by_hand = sum(model(clouds * scales[v][:, None, :]).softmax(dim=1) for v in range(3)) / 3
    np.testing.assert_allclose(voted.probs, by_hand.numpy(), atol=1e-5)
    np.testing.assert_allclose(plain.probs, model(clouds).softmax(dim=1).detach().numpy(), atol=1e-5)
    assert (plain.targets == dataset.labels).all() and not np.allclose(plain.probs, voted.probs)


def _modelnet40_train_only(root: Path, classes=("airplane", "bed", "chair"), per_class: int = 8) -> Path:
    """A ModelNet40-layout folder holding only the training file (like the shared copy)."""
    root.mkdir()
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(len(classes)), per_class)
    clouds = rng.normal(size=(len(labels), 64, 3)).astype(np.float32) * (1 + labels[:, None, None])
    clouds /= np.linalg.norm(clouds, axis=-1).max(axis=1)[:, None, None]
    with h5py.File(root / "ply_data_train0.h5", "w") as f:
        f["data"], f["label"] = clouds, labels[:, None].astype(np.uint8)
    (root / "shape_names.txt").write_text("\n".join(classes) + "\n")
    return root


def test_a_missing_test_split_is_skipped_and_validation_reported(tmp_path):
    root = _modelnet40_train_only(tmp_path / "mn40")
    overrides = [o for o in TINY if not o.startswith("data.")] + [
        "data=modelnet40", f"data.root={root}", "data.num_points=64", "data.protocol.train_fps=64",
        "data.val_fraction=0.25", "data.cache=false"]
    m = run_training(compose_config("train", overrides), tmp_path / "run")
    assert m["split"] == "val" and m["oa"] == m["val_oa"] and "test_oa" not in m
    assert "no ModelNet40 test files" in m["test_skipped"]
    assert (tmp_path / "run" / "per_class_val.csv").is_file() and not (tmp_path / "run" / "per_class_test.csv").exists()
    evaluated = run_eval(compose_config("eval", [f"checkpoint={tmp_path / 'run'}"]), tmp_path / "eval")
    assert (evaluated["split"], evaluated["oa"]) == ("val", m["oa"])  # auto: no test split -> validation


def test_resuming_with_other_settings_is_refused_by_key(tmp_path):
    run_training(compose_config("train", TINY), tmp_path)
    with pytest.raises(ValueError, match=r"train\.lr: [0-9.e-]+ -> 0\.123.*train\.resume=false"):
        run_training(compose_config("train", TINY + ["train.lr=0.123"]), tmp_path)


def test_a_bottleneck_run_saved_under_its_old_spelling_resumes_as_peft_bottleneck(tmp_path):
    """A resumable state written before issue 27 by ``peft=adapter``: its fingerprint names that
    method and ``model.adapter.guided``, its tensors sit under ``adapters.blocks.<i>.bottleneck.``."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    run_training(compose_config("train", TINY + ["peft=bottleneck"]), tmp_path)
    final = load_file(str(tmp_path / "checkpoint.safetensors"))
    state_path = tmp_path / "last.safetensors"
    with safe_open(str(state_path), framework="pt") as f:
        metadata = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    old = {}
    for key, value in tensors.items():
        if key.startswith("model/bottlenecks."):
            _, block, rest = key[len("model/"):].split(".", 2)
            key = f"model/adapters.blocks.{block}.bottleneck.{rest}"
        old[key] = value
    info = json.loads(metadata["any2point_training_state"])
    info["fingerprint"] |= {"peft.name": "adapter", "model.adapter.guided": True}
    save_file(old, str(state_path), metadata={"any2point_training_state": json.dumps(info)})

    run_training(compose_config("train", TINY + ["peft=bottleneck"]), tmp_path)  # resumes after its last epoch
    resumed = load_file(str(tmp_path / "checkpoint.safetensors"))
    assert set(resumed) == set(final) and all(torch.equal(resumed[k], final[k]) for k in final)


def test_a_state_written_before_a_method_setting_existed_resumes_with_its_default(tmp_path):
    """``peft.source_norms`` came after runs already saved resumable states: such a state lacks
    the key, and its run is today's with the setting off."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    run_training(compose_config("train", TINY), tmp_path)
    final = load_file(str(tmp_path / "checkpoint.safetensors"))
    state_path = tmp_path / "last.safetensors"
    with safe_open(str(state_path), framework="pt") as f:
        metadata, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    info = json.loads(metadata["any2point_training_state"])
    assert info["fingerprint"].pop("peft.source_norms") is False
    save_file(tensors, str(state_path), metadata={"any2point_training_state": json.dumps(info)})

    run_training(compose_config("train", TINY), tmp_path)  # resumes after its last epoch
    resumed = load_file(str(tmp_path / "checkpoint.safetensors"))
    assert set(resumed) == set(final) and all(torch.equal(resumed[k], final[k]) for k in final)
    with pytest.raises(ValueError, match=r"peft\.source_norms: False -> True"):
        run_training(compose_config("train", TINY + ["peft.source_norms=true"]), tmp_path)


def test_bf16_on_cpu_is_refused_clearly(tmp_path):
    with pytest.raises(ValueError, match="precision=bf16 is for CUDA"):
        run_training(compose_config("train", TINY + ["trainer.precision=bf16"]), tmp_path)


def test_compile_with_activation_checkpointing_is_refused_clearly(tmp_path):
    with pytest.raises(ValueError, match="trainer.compile=true and trainer.activation_checkpointing=true"):
        run_training(compose_config("train", TINY + ["trainer.compile=true", "trainer.activation_checkpointing=true"]),
                     tmp_path)


def _tiny(*overrides: str) -> list[str]:
    """TINY with ``overrides`` in place of its own values of the same keys."""
    keys = {o.split("=", 1)[0] for o in overrides}
    return [o for o in TINY if o.split("=", 1)[0] not in keys] + list(overrides)


def test_a_training_split_smaller_than_a_batch_is_refused_by_key(tmp_path):
    with pytest.raises(ConfigError, match=r"^train\.batch_size=32 is more than the 24 training samples; an epoch "
                                          r"drops its last incomplete batch"):
        run_training(compose_config("train", _tiny("train.batch_size=32")), tmp_path)


def test_a_run_whose_only_step_diverges_saves_nothing(tmp_path):
    # 8 training clouds in one batch: the single step at lr 1e308 overflows every trained tensor
    # and no later step sees a non-finite loss (before the guard this run ended with status 0)
    with pytest.raises(TrainingDivergedError, match=r"^training diverged in epoch 1: \d+ trained tensors hold NaN or "
                                                    r"infinite values .*lower train\.lr \(now 1e\+308\) or check "
                                                    r"the data; nothing was saved$"):
        run_training(compose_config("train", _tiny("data.samples_per_class.train=2", "train.lr=1e308")), tmp_path)
    assert not any((tmp_path / name).exists() for name in ("last.safetensors", "checkpoint.safetensors",
                                                           "checkpoint.json", "metrics.json"))


def test_an_update_beyond_float32_stops_the_run_clearly(tmp_path):
    # lr / Adam's first bias correction is finite in Python but beyond float32: torch refuses the step
    with pytest.raises(TrainingDivergedError, match=r"^the optimizer step overflowed at epoch 1, step 1 \(.*overflow\): "
                                                    r"lower train\.lr$"):
        run_training(compose_config("train", _tiny("train.lr=1e300")), tmp_path)
    assert not (tmp_path / "last.safetensors").exists()


def test_a_diverging_epoch_stops_the_run_and_keeps_the_last_good_one(tmp_path):
    # 16 training clouds, 4 of them for validation, one batch of 12 per epoch: epoch 1 is the
    # warm-up's first step (lr 1e-6), epoch 2 steps at train.lr=1e308
    cfg = compose_config("train", _tiny("data.samples_per_class.train=4", "data.val_fraction=0.25",
                                        "train.batch_size=12", "train.epochs=2", "train.warmup_epochs=1",
                                        "train.warmup_lr=1e-6", "train.lr=1e308"))
    with pytest.raises(TrainingDivergedError, match=r"^training diverged in epoch 2: .*; the files of epoch 1 "
                                                    r"\(last\.safetensors, best_val\.\*\) are kept as they were$"):
        run_training(cfg, tmp_path)
    state = read_training_state(tmp_path / "last.safetensors")
    assert state.epoch == 1 and all(bool(torch.isfinite(t).all()) for t in state.tensors.values())
    best = load_checkpoint(tmp_path / "best_val.safetensors")  # the pair of epoch 1, whole and finite
    assert best.info["epoch"] == 1 and all(bool(torch.isfinite(t).all()) for t in best.model.state_dict().values())
    assert not (tmp_path / "checkpoint.safetensors").exists() and not (tmp_path / "metrics.json").exists()
    with open(tmp_path / "history.csv") as f:
        assert [row["epoch"] for row in csv.DictReader(f)] == ["1"]


def test_schedule_warms_up_linearly_then_follows_a_cosine_to_min_lr():
    kw = dict(total_steps=100, warmup_steps=10, lr=1e-3, warmup_lr=1e-6, min_lr=1e-5)
    assert lr_at(0, **kw) == 1e-6
    assert lr_at(5, **kw) == pytest.approx(1e-6 + (1e-3 - 1e-6) / 2)
    assert lr_at(10, **kw) == 1e-3
    assert lr_at(99, **kw) == pytest.approx(1e-5)
    mid = 10 + (99 - 10) / 2
    assert lr_at(int(mid), **kw) == pytest.approx(1e-5 + 0.5 * (1e-3 - 1e-5) * (1 + math.cos(math.pi * 44 / 89)))
    after = [lr_at(s, **kw) for s in range(10, 100)]
    assert all(a >= b for a, b in zip(after, after[1:]))

    model = torch.nn.Linear(3, 2)
    opt = build_optimizer(model, 1e-3, 0.05)
    sched = build_scheduler(opt, steps_per_epoch=10, epochs=10, warmup_epochs=1, lr=1e-3, warmup_lr=1e-6, min_lr=1e-5)
    seen = []
    for _ in range(100):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert seen == pytest.approx([lr_at(s, **kw) for s in range(100)], rel=1e-12)


def test_weight_decay_by_role_not_by_shape():
    model = any2point.create_model("tiny_2d", num_classes=3)
    decay, no_decay = parameter_groups(model, 0.05)
    assert decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0.0
    ids = {id(p) for g in (decay, no_decay) for p in g["params"]}
    assert ids == {id(p) for p in model.parameters() if p.requires_grad}
    assert not any(id(p) in ids for p in model.source.parameters())
    decayed = {id(p) for p in decay["params"]}
    # decayed: exactly the projection matrices (Linear weights and the mini attention's stacked per-view ones)
    matrices = {id(m.weight) for m in model.modules() if isinstance(m, torch.nn.Linear)}
    attention = model.adapters.mini_attention
    matrices |= {id(attention.qkv_weight), id(attention.out_weight)}
    assert decayed == {i for i in matrices if i in ids}
    # not decayed whatever their shape: the stacked per-view norms (2-D), tokens and positions
    for p in (attention.norm_weight, attention.norm_bias, model.cls_token, model.cls_position):
        assert id(p) not in decayed
    assert attention.norm_weight.ndim == 2


# ----------------------------------------------------------------------------- kill and resume

RESUME = [o for o in TINY if not o.startswith(("train.epochs", "data.samples_per_class.train"))] + [
    "train.epochs=4", "data.samples_per_class.train=96", "train.warmup_epochs=1", "data.val_fraction=0.2",
    "trainer.threads=1"]  # two runs side by side on two cores


def _train_cmd(run_dir: Path) -> list[str]:
    return [sys.executable, "-m", "any2point.train", *RESUME, f"hydra.run.dir={run_dir}"]


def _history(run_dir: Path) -> list[dict]:
    with open(run_dir / "history.csv") as f:
        return [{k: v for k, v in r.items() if k not in ("seconds", "samples_per_s")} for r in csv.DictReader(f)]


@pytest.mark.slow  # three training processes, one killed mid-epoch: about 56 s on 2 cores
def test_sigkill_mid_epoch_then_rerun_gives_the_uninterrupted_result(tmp_path):
    killed, straight = tmp_path / "killed", tmp_path / "straight"
    # the uninterrupted run goes alongside: results do not depend on timing
    uninterrupted = subprocess.Popen(_train_cmd(straight), cwd=tmp_path, env=env(), stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, text=True)
    proc = subprocess.Popen(_train_cmd(killed), cwd=tmp_path, env=env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        # last.safetensors first appears when epoch 1 is complete; an epoch here is ~40 steps (over a second on this
        # machine), so a kill 0.2 s later lands inside epoch 2 without depending on how long epoch 1 took
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and proc.poll() is None and not (killed / "last.safetensors").is_file():
            time.sleep(0.01)
        assert proc.poll() is None, f"the run ended before it could be killed: {proc.stderr.read()[-2000:]}"
        time.sleep(0.2)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    state = read_training_state(killed / "last.safetensors")
    assert 1 <= state.epoch < 4 and not (killed / "metrics.json").exists()

    resumed = subprocess.run(_train_cmd(killed), cwd=tmp_path, env=env(), capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resuming {killed} after epoch {state.epoch} of 4" in resumed.stderr + resumed.stdout
    assert uninterrupted.wait(timeout=300) == 0, uninterrupted.stderr.read()[-3000:]

    a, b = metrics(killed), metrics(straight)
    for measured in ("seconds", "peak_rss_mb"):  # what the machine measured, not what the run computed
        assert a.pop(measured) > 0 and b.pop(measured) > 0
    assert a == b
    assert _history(killed) == _history(straight) and len(_history(killed)) == 4
    for name in ("checkpoint.safetensors", "best_val.safetensors"):
        ta, tb = load_file(str(killed / name)), load_file(str(straight / name))
        assert ta.keys() == tb.keys() and all(torch.equal(ta[k], tb[k]) for k in ta), name
