"""Config values are checked where each config is defined: a bad value stops the app right
after composition, before any data or checkpoint is read, with one line naming the full key
(and the allowed values of an enum-like setting) and the documented exit status."""
from __future__ import annotations

import subprocess
import sys
import time

import pytest
from hydra.core.global_hydra import GlobalHydra

from any2point import evaluate, train
from any2point.adapters import AdapterConfig
from any2point.config import TrainConfig, TrainerConfig, check_train_settings
from any2point.errors import USER_ERROR_EXIT, ConfigError
from any2point.model import ModelConfig
from any2point.projections import ProjectionConfig
from any2point.tokenizer import PointTokenizer, TokenizerConfig, check_cloud_size
from ..tiny_run import IN_PROCESS, compose_config, env

pytestmark = pytest.mark.filterwarnings("ignore:Class `DataConfig` subclasses `Dict`:UserWarning")

# (override, the start of the one-line message): the key first, then what it must be
BAD_TRAIN_VALUES = [
    ("model.adapter.pool=max", "model.adapter.pool='max' is not one of: mean, mean_max"),
    ("data.format=nope", "data.format='nope' is not one of: folder, modelnet40_h5, modelnet40_resampled, "
                         "scanobjectnn, shapes"),
    ("train.lr=-1", "train.lr=-1.0 must be a finite number > 0"),
    ("model.projection.inject=sometimes", "model.projection.inject='sometimes' is not one of: input, every, "
                                          "input_and_every, none"),
    ("data.num_points=3", "data.num_points=3, too few for the tokenizer"),
    ("train.batch_size=0", "train.batch_size=0 must be an integer >= 1"),
    ("model.adapter.cell=0", "model.adapter.cell=0.0 must be a finite number > 0"),
    ("trainer.threads=-1", "trainer.threads=-1 must be null (torch's default) or an integer >= 1"),
    ("model.tokenizer.stages=0", "model.tokenizer.stages=0 must be an integer >= 1"),
    ("data.val_fraction=1.5", "data.val_fraction=1.5 must be a finite number >= 0 and < 1"),
    ("train.warmup_epochs=-3", "train.warmup_epochs=-3.0 must be a finite number >= 0"),
    # the other enum-like settings and ranges
    ("model.projection.kind=drawn", "model.projection.kind='drawn' is not one of: virtual, learned"),
    ("model.adapter.reference=cloud", "model.adapter.reference='cloud' is not one of: voxel, uniform"),
    ("model.tokenizer.normalize=none", "model.tokenizer.normalize='none' is not one of: scan, modelnet"),
    ("model.init=xavier", "model.init='xavier' is not one of: torch, scan, modelnet"),
    ("model.cls_token=zero", "model.cls_token='zero' is not one of: source, random"),
    ("model.cls_position=zero", "model.cls_position='zero' is not one of: source, random"),
    ("trainer.precision=16", "trainer.precision='16' is not one of: 32, bf16"),
    ("trainer.accelerator=tpu", "trainer.accelerator='tpu' is not one of: cpu, cuda, auto"),
    ("data.up_axis=w", "data.up_axis='w' is not one of: x, y, z"),
    ("model.tokenizer.k=0", "model.tokenizer.k=0 must be an integer >= 1"),
    ("model.tokenizer.k=500", "model.tokenizer.k=500 neighbours, but this stage groups"),
    ("model.head.dropout=1", "model.head.dropout=1.0 must be a finite number >= 0 and < 1"),
    ("train.lr=inf", "train.lr=inf must be a finite number > 0"),
    ("train.min_lr=0.5", "train.min_lr=0.5 must be a finite number >= 0 and <= 0.001"),
    ("train.warmup_lr=2", "train.warmup_lr=2.0 must be a finite number >= 0 and <= 0.001"),
    ("train.epochs=0", "train.epochs=0 must be an integer >= 1"),
    ("train.batch_size=1", "train.batch_size=1 must be at least 2: the head's BatchNorm layers"),
    ("train.betas=[0.9,1.5]", "train.betas[1]=1.5 must be a finite number >= 0 and < 1"),
    ("train.grad_clip=0", "train.grad_clip=0.0 must be a finite number > 0"),
    ("peft=lora peft.lora_rank=0", "peft.lora_rank=0 must be an integer >= 1"),
    ("peft=prompt peft.prompt_tokens=0", "peft.prompt_tokens=0 must be an integer >= 1"),
    ("+data.protocol.fps_pools=0", "data.protocol.fps_pools=0 must be an integer >= 1"),
    ("data.augment=[{name:spin}]", "data.augment: unknown augmentation 'spin'"),
    # one name per model (issue 27): the bottleneck baseline's old spellings name the one to use
    ("model.adapter.guided=false", "model.adapter.guided was removed: peft=any2point is the guided adapter, "
                                   "peft=bottleneck the bottleneck alone"),
    ("peft=adapter", "peft=adapter is now peft=bottleneck"),
]


def _run_main(app, monkeypatch, capsys, argv):
    """The app's console entry point in this process with ``argv``: (exit status, stderr, seconds)."""
    monkeypatch.setattr(sys, "argv", [app.__name__, *argv])
    GlobalHydra.instance().clear()
    start = time.perf_counter()
    try:
        with pytest.raises(SystemExit) as stop:
            app.main()
    finally:
        GlobalHydra.instance().clear()
    return stop.value.code, capsys.readouterr().err, time.perf_counter() - start


@pytest.mark.parametrize("override, message", BAD_TRAIN_VALUES, ids=[o for o, _ in BAD_TRAIN_VALUES])
def test_a_bad_training_value_stops_at_start_up_with_one_line(tmp_path, monkeypatch, capsys, override, message):
    # a data root that does not exist: had any data been read first, the run would have ended
    # in that DataError instead (and no model is built: the check is seconds)
    status, err, seconds = _run_main(train, monkeypatch, capsys, [
        *IN_PROCESS, "source=tiny_1d", "data=modelnet40", f"data.root={tmp_path / 'nowhere'}", *override.split(),
        f"hydra.run.dir={tmp_path / 'run'}"])
    assert status == USER_ERROR_EXIT == 1
    assert err.startswith(f"any2point-train: error: {message}"), err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert seconds < 10


def test_a_format_that_needs_stored_clouds_is_refused_at_start_up(tmp_path, monkeypatch, capsys):
    status, err, _ = _run_main(train, monkeypatch, capsys, [
        *IN_PROCESS, "source=tiny_1d", "data=shapes", "+data.protocol.fps_pools=2", f"hydra.run.dir={tmp_path}"])
    assert status == 1 and err.startswith("any2point-train: error: data.protocol.fps_pools > 1 needs stored clouds; "
                                          "data.format 'shapes' has none")


@pytest.mark.parametrize("override, message", [
    ("eval.votes=0", "eval.votes=0 must be an integer >= 1"),
    ("eval.split=holdout", "eval.split='holdout' is not one of: auto, test, val, train"),
    ("eval.normalize=std", "eval.normalize='std' is not one of: scan, modelnet"),
    ("eval.vote_scale=[1.2,0.8]", "eval.vote_scale[1]=0.8 must be a finite number >= 1.2"),
    ("eval.num_points=0", "eval.num_points=0 must be null (the checkpoint's) or an integer >= 1"),
    ("trainer.num_workers=-2", "trainer.num_workers=-2 must be an integer >= 0"),
    ("data=shapes data.format=nope", "data.format='nope' is not one of"),
])
def test_a_bad_evaluation_value_stops_before_the_checkpoint_is_read(tmp_path, monkeypatch, capsys, override,
                                                                    message):
    status, err, _ = _run_main(evaluate, monkeypatch, capsys, [
        *IN_PROCESS, f"checkpoint={tmp_path / 'no_such_run'}", *override.split(), f"hydra.run.dir={tmp_path / 'e'}"])
    assert status == 1 and err.startswith(f"any2point-eval: error: {message}"), err
    assert len(err.strip().splitlines()) == 1


def test_a_sweep_over_an_old_spelling_is_refused_and_todays_pass_as_they_are():
    from any2point.hydra_app import refuse_old_spellings

    with pytest.raises(ConfigError, match="^peft=adapter is now peft=bottleneck"):
        refuse_old_spellings(["source=minilm", "peft=any2point,adapter"])
    with pytest.raises(ConfigError, match="^model.adapter.guided was removed"):
        refuse_old_spellings(["+model.adapter.guided=true"])
    today = ["peft=any2point,bottleneck", "model.adapter.rank=8", "model.adapter.view_cells=false"]
    assert refuse_old_spellings(today) == today


def test_the_console_script_stops_in_seconds_with_status_1_and_no_traceback(tmp_path):
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", "import sys; from any2point.train import main; sys.exit(main())",
                           "model.adapter.pool=max", f"hydra.run.dir={tmp_path / 'run'}"],
                          cwd=tmp_path, env=env(), capture_output=True, text=True, timeout=120)
    seconds = time.perf_counter() - start
    assert done.returncode == USER_ERROR_EXIT
    assert done.stderr == "any2point-train: error: model.adapter.pool='max' is not one of: mean, mean_max\n"
    assert done.stdout == ""
    assert seconds < 60  # imports (torch) included; on a quiet machine about 4 s


# ----------------------------------------------------------------------------- the dataclasses themselves

def test_the_dataclasses_refuse_bad_values_when_built_from_python():
    with pytest.raises(ConfigError, match=r"^model\.adapter\.pool='max' is not one of: mean, mean_max$"):
        AdapterConfig(pool="max")
    with pytest.raises(ConfigError, match=r"^model\.projection\.inject='sometimes'"):
        ModelConfig(projection=ProjectionConfig(inject="sometimes"))
    with pytest.raises(ConfigError, match=r"^model\.tokenizer\.blocks=\[2, 1, 1\] must have one entry per stage"):
        TokenizerConfig(stages=2)
    with pytest.raises(ConfigError, match=r"^model\.tokenizer\.centres=\[64, 128, 32\]"):
        TokenizerConfig(centres=[64, 128, 32])
    with pytest.raises(ConfigError, match=r"model\.adapter\.view_cells=false with model\.adapter\.reference=uniform"):
        AdapterConfig(view_cells=False, reference="uniform")
    with pytest.raises(ConfigError, match=r"^train\.min_lr=0\.1 must be a finite number >= 0 and <= 0\.01$"):
        TrainConfig(lr=0.01, min_lr=0.1)
    with pytest.raises(ConfigError, match=r"^trainer\.threads=0 must be null"):
        TrainerConfig(threads=0)
    assert AdapterConfig(pool="mean_max").pool == "mean_max" and TrainerConfig(threads=2).threads == 2


def test_the_tokenizer_and_the_start_up_check_share_one_cloud_size_rule():
    config = TokenizerConfig(k=20, blocks=[1, 1, 1], bottleneck=[None, None, 8])
    tokenizer = PointTokenizer(48, config)
    tokenizer(torch_randn(2, 128, 3))  # stages group 128, 64 and 32 points: k=20 fits
    check_cloud_size(config, 128)
    for check in (lambda: check_cloud_size(config, 64), lambda: tokenizer(torch_randn(2, 64, 3))):
        with pytest.raises(ConfigError, match=r"model\.tokenizer\.k=20 neighbours, but this stage groups 16 points "
                                              r"\(stage 3 of 3"):
            check()
    fixed = TokenizerConfig(centres=[64, 32, 16], k=8, blocks=[1, 1, 1], bottleneck=[None, None, 8])
    with pytest.raises(ConfigError, match=r"^data\.num_points=48, too few for the tokenizer: stage 1 of 3 would pick "
                                          r"64 centres from 48 points"):
        check_cloud_size(fixed, 48)
    with pytest.raises(ConfigError, match=r"^clouds have 48 points, too few for the tokenizer"):
        PointTokenizer(48, fixed)(torch_randn(1, 48, 3))


def torch_randn(*shape):
    import torch

    return torch.randn(*shape, generator=torch.Generator().manual_seed(0))


def test_a_warm_up_longer_than_the_run_is_allowed_with_a_warning(caplog):
    cfg = compose_config("train", ["source=tiny_1d", "data.num_points=64", "train.epochs=2", "train.warmup_epochs=5"])
    with caplog.at_level("WARNING", logger="any2point.config"):
        check_train_settings(cfg)
    assert "train.warmup_epochs=5.0 is longer than train.epochs=2" in caplog.text


def test_evaluation_points_too_few_for_the_checkpoints_tokenizer_are_refused_before_data(finished_tiny_run,
                                                                                        tmp_path):
    from any2point.evaluate import run_eval

    cfg = compose_config("eval", [f"checkpoint={finished_tiny_run}", "eval.num_points=8", "data=modelnet40",
                                  f"data.root={tmp_path / 'nowhere'}"])  # reading data would be a DataError
    with pytest.raises(ConfigError, match=r"^eval\.num_points=8, too few for the tokenizer|"
                                          r"^model\.tokenizer\.k=\d+ neighbours, .*eval\.num_points=8"):
        run_eval(cfg, tmp_path / "eval")
