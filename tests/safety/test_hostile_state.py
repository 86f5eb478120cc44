"""Hostile run state: what a user receives or finds in a run directory (a resumable state, a
checkpoint, a locked directory, bad settings) runs nothing and ends in one named error."""
from __future__ import annotations

import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from safetensors import safe_open
from safetensors.torch import save_file

import any2point
from any2point.checkpoint import load_checkpoint, save_checkpoint
from any2point.data.fps_cache import ArrayCache, cached_fps_indices, fps_indices
from any2point.errors import (CheckpointError, ConfigError, DataError, RunDirectoryLockedError, TrainingDivergedError,
                              exit_on_user_error)
from any2point.evaluate import _checkpoint_data_config, run_eval
from any2point.predict import main as predict_main
from any2point.run.resume import TRAINING_STATE, read_training_state
from any2point.run.lock import LOCK_FILE, run_directory_lock
from any2point.train import run_training
from ..tiny_run import TINY, compose_config, env

CLASSES = ["sphere", "cube", "torus", "cone"]


class _Payload:
    """Unpickling this creates ``marker``: proof that a pickle ran."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _pickle_bomb(path: Path, marker: Path) -> Path:
    path.write_bytes(pickle.dumps({"epoch": 1, "model": _Payload(marker)}))
    return path


def _copy(run: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(run, tmp_path / "run"))


def _state_json(path: Path) -> tuple[dict, dict]:
    with safe_open(str(path), framework="pt") as f:
        meta, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    return json.loads(meta["any2point_training_state"]), tensors


def _write_state(path: Path, info: dict, tensors: dict) -> None:
    save_file(tensors, str(path), metadata={"any2point_training_state": json.dumps(info)})


# ----------------------------------------------------------------------------- resumable state

def test_a_pickled_last_pt_is_refused_unopened_and_resume_false_starts_over(tmp_path):
    run, marker = tmp_path / "run", tmp_path / "PWNED"
    run.mkdir()
    _pickle_bomb(run / "last.pt", marker)
    nowhere = [o for o in TINY if not o.startswith("data.")] + [
        "data=modelnet40", f"data.root={tmp_path / 'nowhere'}", "data.num_points=64"]
    with pytest.raises(CheckpointError, match=r"last\.pt is a resumable state in the old pickle format.*"
                                              r"train\.resume=false"):
        run_training(compose_config("train", nowhere), run)  # refused before the (missing) data is read
    assert not marker.exists()
    m = run_training(compose_config("train", TINY + ["train.resume=false"]), run)
    assert m["epochs"] == 1 and not (run / "last.pt").exists() and (run / TRAINING_STATE).is_file()
    assert not marker.exists()


@pytest.mark.parametrize("content", ["pickle", "empty", "garbage", "truncated", "torch_save"])
def test_a_state_that_is_not_safetensors_is_refused_naming_the_file(finished_tiny_run, tmp_path, content):
    run, marker = _copy(finished_tiny_run, tmp_path), tmp_path / "PWNED"
    state = run / TRAINING_STATE
    if content == "pickle":
        _pickle_bomb(state, marker)
    elif content == "torch_save":
        torch.save({"epoch": 1, "payload": _Payload(marker)}, state)
    elif content == "empty":
        state.write_bytes(b"")
    elif content == "garbage":
        state.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    else:
        data = state.read_bytes()
        state.write_bytes(data[:len(data) // 2])
    with pytest.raises(CheckpointError, match=rf"{state}.*(truncated or damaged|not readable).*train\.resume=false"):
        read_training_state(state)
    with pytest.raises(CheckpointError, match=r"train\.resume=false"):
        run_training(compose_config("train", TINY + ["train.epochs=2"]), run)
    assert not marker.exists()


def _tampered(info: dict, tensors: dict, case: str) -> None:
    if case == "epoch_as_string":
        info["epoch"] = "1"
    elif case == "unknown_key":
        info["run_this"] = "os.system('true')"
    elif case == "missing_key":
        del info["rng"]
    elif case == "scheduler_extra_attribute":
        info["scheduler"]["lr_lambdas"] = [{"__class__": "os.system"}]
    elif case == "optimizer_group_key":
        info["optimizer_groups"][0]["evil"] = 1
    elif case == "moment_shape":
        key = next(k for k in tensors if k.startswith("optimizer/") and tensors[k].dim() > 0)
        tensors[key] = torch.zeros(3, 3)
    elif case == "model_tensor_missing":
        del tensors[next(k for k in tensors if k.startswith("model/head."))]
    elif case == "python_rng":
        info["rng"][0]["python"][1] = info["rng"][0]["python"][1][:10]
    elif case == "interpolation_in_fingerprint":
        info["fingerprint"]["data.root"] = "${oc.env:HOME}"
    else:
        raise AssertionError(case)


@pytest.mark.parametrize("case", ["epoch_as_string", "unknown_key", "missing_key", "scheduler_extra_attribute",
                                  "optimizer_group_key", "moment_shape", "model_tensor_missing", "python_rng",
                                  "interpolation_in_fingerprint"])
def test_a_crafted_state_is_refused_with_advice(finished_tiny_run, tmp_path, case):
    run = _copy(finished_tiny_run, tmp_path)
    state = run / TRAINING_STATE
    info, tensors = _state_json(state)
    _tampered(info, tensors, case)
    _write_state(state, info, tensors)
    with pytest.raises(CheckpointError, match=rf"{state}.*train\.resume=false") as err:
        run_training(compose_config("train", TINY + ["train.epochs=2"]), run)
    assert "\n" not in str(err.value)


def test_the_state_holds_no_pickle_and_round_trips(finished_tiny_run):
    info, tensors = _state_json(finished_tiny_run / TRAINING_STATE)
    assert info["epoch"] == 1 and info["best"]["epoch"] is None and info["format"] == 1
    assert {k.split("/")[0] for k in tensors} == {"model", "optimizer", "rng"}
    assert tensors["rng/0/torch"].dtype == torch.uint8
    assert len(info["rng"][0]["python"][1]) == 625 and len(info["rng"][0]["numpy"][1]) == 624


# ----------------------------------------------------------------------------- checkpoint.json

@pytest.fixture
def marker_resolver(tmp_path):
    """An OmegaConf resolver that leaves a file when anything resolves it."""
    marker = tmp_path / "RESOLVED"
    OmegaConf.register_new_resolver("a2p_marker", lambda: marker.write_text("x") or "x", replace=True)
    yield marker
    OmegaConf.clear_resolver("a2p_marker")


def _edit_info(run: Path, edit) -> Path:
    path = run / "checkpoint.json"
    info = json.loads(path.read_text())
    edit(info)
    path.write_text(json.dumps(info))
    return path


@pytest.mark.parametrize("where", ["class", "data_root", "cache_dir", "tokenizer_normalize", "source_option"])
def test_interpolations_in_checkpoint_json_are_refused_and_resolve_nothing(finished_tiny_run, tmp_path, marker_resolver,
                                                                         where, monkeypatch):
    monkeypatch.setenv("A2P_SECRET", "hunter2")
    run = _copy(finished_tiny_run, tmp_path)

    def edit(info):
        if where == "class":
            info["class_names"][0] = "${oc.env:A2P_SECRET}"
        elif where == "data_root":
            info["config"]["data"]["root"] = "${a2p_marker:}"
        elif where == "cache_dir":
            info["config"]["data"]["cache_dir"] = "${a2p_marker:}"
        elif where == "tokenizer_normalize":
            info["model"]["tokenizer"]["normalize"] = "${a2p_marker:}"
        else:
            info["source"]["options"]["depth"] = "${oc.env:A2P_SECRET}"

    path = _edit_info(run, edit)
    with pytest.raises(CheckpointError, match=rf"{path}.*looks like a config interpolation") as err:
        load_checkpoint(run)
    assert "hunter2" not in str(err.value)
    with pytest.raises(CheckpointError, match="interpolation"):
        run_eval(compose_config("eval", [f"checkpoint={run}", "trainer.progress=false"]), tmp_path / "eval")
    assert not marker_resolver.exists() and not (tmp_path / "eval" / "metrics.json").exists()


@pytest.mark.parametrize("case, message", [
    ("unknown_top", r"unknown keys \['post_load_hook'\]"),
    ("unknown_nested", r"model\.adapter: unknown keys \['exec'\]"),
    ("missing", r"missing keys \['class_names'\]"),
    ("num_points_string", r"num_points: expected int, got str"),
    ("class_names_not_list", r"class_names: expected list"),
    ("duplicate_classes", r"class_names: expected a non-empty list of distinct names"),
    ("bool_as_int", r"model\.tokenizer\.k: expected int, got bool"),
    ("source_not_object", r"source: expected an object"),
])
def test_a_malformed_checkpoint_json_is_refused_naming_the_key(finished_tiny_run, tmp_path, case, message):
    run = _copy(finished_tiny_run, tmp_path)

    def edit(info):
        if case == "unknown_top":
            info["post_load_hook"] = "print"
        elif case == "unknown_nested":
            info["model"]["adapter"]["exec"] = 1
        elif case == "missing":
            del info["class_names"]
        elif case == "num_points_string":
            info["num_points"] = "64"
        elif case == "class_names_not_list":
            info["class_names"] = "sphere"
        elif case == "duplicate_classes":
            info["class_names"] = ["a", "a", "b", "c"]
        elif case == "bool_as_int":
            info["model"]["tokenizer"]["k"] = True
        else:
            info["source"] = "tiny_1d"

    path = _edit_info(run, edit)
    with pytest.raises(CheckpointError, match=rf"{path} is not a valid any2point checkpoint description: {message}"):
        load_checkpoint(run)


@pytest.mark.parametrize("text", ["", "{", "[1, 2]", "\xff\xfe", "null", '{"format": "1"}',
                                  '{"format": 1, "config": ' + "[" * 5000 + "]" * 5000 + "}",
                                  '{"format": 1, "config": {"a": ' + '{"a": ' * 900 + "1" + "}" * 901 + "}"])
def test_checkpoint_json_that_is_not_an_object_is_refused(finished_tiny_run, tmp_path, text):
    run = _copy(finished_tiny_run, tmp_path)
    (run / "checkpoint.json").write_bytes(text.encode("latin-1"))
    with pytest.raises(CheckpointError, match=str(run / "checkpoint.json")):
        load_checkpoint(run)


def test_an_oversized_checkpoint_json_is_refused_before_it_is_read(finished_tiny_run, tmp_path):
    from any2point.checkpoint import MAX_INFO_BYTES

    run = _copy(finished_tiny_run, tmp_path)
    with open(run / "checkpoint.json", "r+b") as f:
        f.truncate(MAX_INFO_BYTES + 1)  # sparse: nothing is allocated
    with pytest.raises(CheckpointError, match=rf"checkpoint\.json is {MAX_INFO_BYTES + 1} bytes, more than"):
        load_checkpoint(run)


def test_paths_from_a_checkpoint_are_never_written_to(tmp_path):
    data = {"name": "modelnet40", "root": "/data/mn40", "cache": True, "cache_dir": str(tmp_path / "elsewhere")}
    cfg = _checkpoint_data_config(data, "ckpt")
    assert cfg.cache_dir is None and cfg.root == "/data/mn40" and cfg.cache is True


@pytest.mark.parametrize("damage", ["empty", "truncated", "garbage", "header_lies", "pickle"])
def test_damaged_checkpoint_tensors_end_in_one_line_and_exit_2(finished_tiny_run, tmp_path, damage, capsys):
    run, marker = _copy(finished_tiny_run, tmp_path), tmp_path / "PWNED"
    weights = run / "checkpoint.safetensors"
    data = weights.read_bytes()
    if damage == "empty":
        weights.write_bytes(b"")
    elif damage == "truncated":
        weights.write_bytes(data[:len(data) - 100])
    elif damage == "garbage":
        weights.write_bytes(os.urandom(2048))
    elif damage == "header_lies":  # a header length far beyond the file
        weights.write_bytes((10 ** 12).to_bytes(8, "little") + data[8:])
    else:
        _pickle_bomb(weights, marker)
    with pytest.raises(CheckpointError, match=rf"{weights}.*(truncated|damaged|could not be read)"):
        load_checkpoint(run)
    cloud = tmp_path / "cloud.npy"
    np.save(cloud, np.random.default_rng(0).normal(size=(200, 3)).astype(np.float32))
    assert predict_main([str(run), str(cloud), "--json"]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and len(captured.err.strip().splitlines()) == 1 and str(weights) in captured.err
    assert not marker.exists()


# ----------------------------------------------------------------------------- predict

def test_predict_refuses_clouds_not_finite_in_the_model_dtype_and_prints_strict_json(finished_tiny_run, tmp_path,
                                                                                     monkeypatch, capsys):
    import any2point.predict as predict

    real = predict.read_points

    def reader(path, num_points, seed):
        cloud = real(path, num_points=num_points, seed=seed)
        if "overflow" in str(path):  # what a reader casting 1e39 (finite in float64) to float32 gives
            cloud = cloud.copy()
            with np.errstate(over="ignore"):
                cloud[0, 0] = np.float32(np.float64(1e39))
        return cloud

    monkeypatch.setattr(predict, "read_points", reader)
    rng = np.random.default_rng(0)
    good, bad = tmp_path / "good.npy", tmp_path / "overflow.npy"
    np.save(good, rng.normal(size=(200, 3)))
    np.save(bad, rng.normal(size=(200, 3)))
    assert predict_main([str(finished_tiny_run), str(good), str(bad), str(tmp_path / "missing.npy"), "--json"]) == 1

    def no_constants(name):
        raise AssertionError(f"bare {name} in JSON output")

    lines = [json.loads(line, parse_constant=no_constants) for line in capsys.readouterr().out.splitlines()]
    assert [line["file"] for line in lines] == [str(good), str(bad), str(tmp_path / "missing.npy")]
    assert "topk" in lines[0] and all(np.isfinite(t["prob"]) for t in lines[0]["topk"])
    assert "not finite as float32" in lines[1]["error"] and str(bad) in lines[1]["error"]
    assert "error" in lines[2]


# ----------------------------------------------------------------------------- one writer per run directory

@pytest.mark.slow  # two app processes (about 20 s on an idle 2-core machine)
def test_a_second_trainer_on_a_locked_run_directory_exits_naming_the_holder(tmp_path):
    run = tmp_path / "run"
    base = [o for o in TINY if not o.startswith("train.epochs")] + ["train.epochs=3", "trainer.threads=1",
                                                                    f"hydra.run.dir={run}"]
    first = subprocess.Popen([sys.executable, "-m", "any2point.train", *base], cwd=tmp_path, env=env(),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        # the lock file names the first run as soon as it holds the lock; the run is then paused
        # (SIGSTOP keeps the lock) so that the second one meets it whatever the machine's load
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and first.poll() is None and not (
                (run / LOCK_FILE).is_file() and (run / LOCK_FILE).read_text().strip() == str(first.pid)):
            time.sleep(0.01)
        os.kill(first.pid, signal.SIGSTOP)
        assert first.poll() is None, first.communicate()[1][-2000:]
        second = subprocess.run([sys.executable, "-m", "any2point.train", *base, "train.lr=0.5"], cwd=tmp_path,
                                env=env(), capture_output=True, text=True, timeout=240)
        os.kill(first.pid, signal.SIGCONT)
        out, err = first.communicate(timeout=300)
    finally:
        if first.poll() is None:
            os.kill(first.pid, signal.SIGCONT)
            first.kill()
            first.wait()
    assert second.returncode == 1
    assert f"any2point-train: error: the run directory {run} is in use by another any2point process " \
           f"(PID {first.pid})" in second.stderr
    assert "Traceback" not in second.stderr
    assert first.returncode == 0, err[-3000:]
    overrides = (run / ".hydra" / "overrides.yaml").read_text()
    assert "train.epochs=3" in overrides and "train.lr=0.5" not in overrides
    assert json.loads((run / "metrics.json").read_text())["epochs"] == 3
    assert len((run / "history.csv").read_text().strip().splitlines()) == 1 + 3 and "train.lr=0.5" not in out + err
    info, _ = _state_json(run / TRAINING_STATE)
    assert info["epoch"] == 3
    assert (run / LOCK_FILE).read_text().strip() == str(first.pid)


def test_the_lock_is_reentrant_in_a_process_and_released_after(tmp_path):
    code = ("import sys; from any2point.run.lock import acquire; acquire(sys.argv[1]); "
            "print('locked', flush=True); sys.stdin.read()")
    with run_directory_lock(tmp_path):
        with run_directory_lock(tmp_path):  # the Hydra callback, then run_training
            pass
        other = subprocess.run([sys.executable, "-c", code, str(tmp_path)], input="", capture_output=True,
                               text=True, env=env(), timeout=60)
        assert other.returncode != 0 and "RunDirectoryLockedError" in other.stderr and str(os.getpid()) in other.stderr
    holder = subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True, env=env())
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(RunDirectoryLockedError, match=rf"{tmp_path}.*PID {holder.pid}"):
            with run_directory_lock(tmp_path):
                pass
        holder.kill()  # the kernel releases a killed holder's lock
        holder.wait()
        with run_directory_lock(tmp_path):
            pass
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()


# ----------------------------------------------------------------------------- settings and messages

@pytest.mark.parametrize("override, key", [
    ("train.epochs=0", "train.epochs"), ("train.epochs=-3", "train.epochs"), ("train.val_every=0", "train.val_every"),
    ("train.eval_batch_size=0", "train.eval_batch_size"), ("train.batch_size=0", "train.batch_size"),
    ("model.tokenizer.k=0", "model.tokenizer.k"), ("model.tokenizer.k=17", "model.tokenizer.k"),
])
def test_bad_settings_are_refused_by_key_before_any_data_is_read(tmp_path, override, key):
    # data.root points nowhere: reading data first would be a DataError, not the setting's error
    overrides = [o for o in TINY if not o.startswith("data.")] + [
        "data=modelnet40", f"data.root={tmp_path / 'nowhere'}", "data.num_points=64", override]
    with pytest.raises(ConfigError, match=rf"^{key.replace('.', chr(92) + '.')}"):
        run_training(compose_config("train", overrides), tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_a_diverging_run_stops_with_a_user_error(tmp_path):
    with pytest.raises(TrainingDivergedError, match=r"training loss became nan at epoch 1.*lower train\.lr"):
        run_training(compose_config("train", TINY + ["train.lr=1e30", "train.grad_clip=null"]), tmp_path)


def test_the_tokenizer_refuses_more_neighbours_than_points():
    from any2point.tokenizer import PointTokenizer, TokenizerConfig

    tokenizer = PointTokenizer(48, TokenizerConfig(k=20, blocks=[1, 1, 1], bottleneck=[None, None, 8]))
    tokenizer(torch.randn(2, 128, 3))  # stages group 128, 64 and 32 points: k=20 fits
    with pytest.raises(ValueError, match=r"model\.tokenizer\.k=20 neighbours, but this stage groups 16 points"):
        tokenizer(torch.randn(2, 64, 3))  # stages group 64, 32 and 16 points


def test_user_errors_print_their_message_alone_and_bugs_keep_their_traceback(tmp_path, monkeypatch, capsys):
    @exit_on_user_error("any2point-x")
    def fails(exc):
        raise exc

    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    with pytest.raises(SystemExit) as stop:
        fails(DataError("bad cloud", path="a.ply", index=3))
    assert stop.value.code == 1 and capsys.readouterr().err == "any2point-x: error: a.ply [sample 3]: bad cloud\n"
    with pytest.raises(KeyError):
        fails(KeyError("a bug"))
    monkeypatch.setenv("HYDRA_FULL_ERROR", "1")
    with pytest.raises(DataError):
        fails(DataError("bad cloud"))


@pytest.mark.slow  # four app processes
@pytest.mark.parametrize("args, expected", [
    (["train.epochs=0"], "any2point-train: error: train.epochs=0 must be an integer >= 1"),
    (["data=modelnet40", "data.root=null"], "any2point-train: error: data.root is not set for dataset 'modelnet40'"),
])
def test_the_train_cli_prints_user_errors_without_a_traceback(tmp_path, args, expected):
    tiny = [o for o in TINY if not o.startswith("data.")] if "data=modelnet40" in args else TINY
    cmd = [sys.executable, "-m", "any2point.train", *tiny, *args, f"hydra.run.dir={tmp_path / 'run'}"]
    plain = subprocess.run(cmd, cwd=tmp_path, env=env(), capture_output=True, text=True, timeout=120)
    assert plain.returncode == 1 and expected in plain.stderr and "Traceback" not in plain.stderr + plain.stdout
    full = subprocess.run(cmd, cwd=tmp_path, env={**env(), "HYDRA_FULL_ERROR": "1"}, capture_output=True, text=True,
                          timeout=120)
    assert full.returncode == 1 and "Traceback" in full.stderr


@pytest.mark.slow  # an app process
def test_the_eval_cli_refuses_a_crafted_checkpoint_in_one_line(finished_tiny_run, tmp_path):
    run = _copy(finished_tiny_run, tmp_path)
    _edit_info(run, lambda info: info.update(num_points="64"))
    done = subprocess.run([sys.executable, "-m", "any2point.evaluate", f"checkpoint={run}",
                           f"hydra.run.dir={tmp_path / 'eval'}"], cwd=tmp_path, env=env(), capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert f"any2point-eval: error: {run / 'checkpoint.json'} is not a valid" in done.stderr


# ----------------------------------------------------------------------------- caches

def test_an_unwritable_fps_cache_computes_without_caching(tmp_path, caplog):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    cache = ArrayCache(blocker / "fps")  # cannot be created, even by root
    clouds = np.random.default_rng(0).normal(size=(3, 100, 3)).astype(np.float32)
    with caplog.at_level("WARNING"):
        got = cached_fps_indices(clouds, 10, cache, "key")
    np.testing.assert_array_equal(got, fps_indices(clouds, 10))
    assert "computing without caching" in caplog.text and not cache.enabled
    np.testing.assert_array_equal(cached_fps_indices(clouds, 10, cache, "key"), got)



@pytest.mark.parametrize("num_points", [2, 10**12])
def test_a_checkpoint_asking_for_clouds_its_tokenizer_cannot_group_is_refused(finished_tiny_run, tmp_path,
                                                                               num_points):
    run = _edit_info(_copy(finished_tiny_run, tmp_path), lambda info: info.update(num_points=num_points))
    with pytest.raises(CheckpointError, match="num_points"):
        load_checkpoint(run)
