"""The Hydra configs: every option of every group composes against the typed schemas, the
schemas reject misspelt keys and wrong types by name, experiments carry the release's settings,
and the model section composed by Hydra is the one ``create_model`` builds."""
from __future__ import annotations

import importlib.resources
import inspect

import pytest
from hydra import compose
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf

import any2point
import any2point.config  # noqa: F401  (registers the schemas)
from any2point.config import (CONFIG_MODULE, check_data_values, check_eval_settings, check_required,
                              check_train_settings)
from any2point.model import ModelConfig
from any2point.peft import PeftConfig
from any2point.backbones.registry import get_source_spec, list_sources

# the data schema types common keys and lets dataset-specific ones through (see any2point.config)
pytestmark = [pytest.mark.filterwarnings("ignore:Class `DataConfig` subclasses `Dict`:UserWarning"),
              pytest.mark.usefixtures("hydra_conf")]  # conftest.py

CONF = importlib.resources.files(CONFIG_MODULE)
GROUPS = ["source", "data", "model", "peft", "trainer", "experiment"]


def options(group: str) -> list[str]:
    return sorted(p.name[:-5] for p in CONF.joinpath(group).iterdir() if p.name.endswith(".yaml"))


def _full_message(exc: BaseException) -> str:
    parts = []
    while exc is not None:
        parts.append(str(exc))
        exc = exc.__cause__ or exc.__context__
    return "\n".join(parts)


# model/base and data/base are what the options start from (data=base needs data.format=<name>:
# tests/data/test_plugin.py trains with it)
@pytest.mark.parametrize("group,option", [(g, o) for g in GROUPS for o in options(g)
                                          if (g, o) not in {("model", "base"), ("data", "base")}])
def test_every_option_of_every_group_composes(group, option):
    cfg = compose("train", overrides=[f"{group}={option}"])
    model = OmegaConf.to_object(cfg.model)
    assert isinstance(model, ModelConfig) and isinstance(OmegaConf.to_object(cfg.peft), PeftConfig)
    assert cfg.train.epochs > 0 and cfg.train.batch_size > 0 and cfg.train.lr > 0 and cfg.data.num_points > 0
    assert "root" in cfg.data.keys() and isinstance(cfg.seed, int)
    if not OmegaConf.is_missing(cfg.data, "root"):
        check_required(cfg)  # nothing else left unset
    # every shipped value passes the start-up checks (nothing is read); an experiment is a whole
    # run, so its sections must also fit together (a source preset's k may need more points than
    # the quickstart data has)
    OmegaConf.to_object(cfg.train), OmegaConf.to_object(cfg.trainer), check_data_values(cfg.data)
    if group == "experiment":
        check_train_settings(cfg)


@pytest.mark.parametrize("data", [o for o in options("data") if o != "base"])
def test_eval_config_composes_with_every_data_config(data):
    cfg = compose("eval", overrides=["checkpoint=/some/run", f"data={data}"])
    assert cfg.data.name == data and cfg.eval.votes == 1 and cfg.eval.num_points is None
    check_eval_settings(cfg)
    assert compose("eval", overrides=["checkpoint=/some/run"]).data is None  # default: the checkpoint's data


def test_eval_requires_a_checkpoint():
    with pytest.raises(ValueError, match="checkpoint"):
        check_required(compose("eval"))


def test_default_is_the_offline_quickstart():
    cfg = compose("train")
    assert cfg.source.name == "minilm" and cfg.source.pretrained and cfg.data.name == "shapes"
    assert cfg.peft.name == "any2point" and cfg.trainer.accelerator == "cpu" and cfg.trainer.strategy == "single"


MISSPELT = [("train.epohcs=3", "train.epohcs"), ("data.num_pionts=64", "data.num_pionts"),
            ("model.adapter.rnak=4", "model.adapter.rnak"), ("sed=1", "sed")]
WRONG_TYPE = [("train.epochs=abc", "train.epochs"), ("train.lr=fast", "train.lr"),
              ("data.num_points=many", "data.num_points"), ("seed=x", "seed"),
              ("model.adapter.rank=wide", "model.adapter.rank"), ("trainer.deterministic=maybe", "trainer.deterministic")]


@pytest.mark.parametrize("override,key", MISSPELT + WRONG_TYPE)
def test_a_misspelt_key_or_a_wrong_type_fails_with_the_key_name(override, key):
    with pytest.raises(ConfigCompositionException) as info:
        compose("train", overrides=[override])
    assert key in _full_message(info.value)


def test_dataset_specific_keys_are_typed_by_their_config_and_overridable():
    cfg = compose("train", overrides=["data.samples_per_class.train=3", "data=shapes"])
    assert cfg.data.samples_per_class.train == 3
    with pytest.raises(ConfigCompositionException, match="variant"):
        compose("train", overrides=["data=shapes", "data.variant=obj_bg"])  # a ScanObjectNN key


def test_a_data_config_without_a_common_key_is_reported(tmp_path):
    cfg = OmegaConf.merge(OmegaConf.structured(any2point.config.TrainAppConfig), {"data": {"name": "mine"}})
    with pytest.raises(ValueError, match=r"data\.format.*data\.normalize|data\.normalize"):
        check_required(cfg)


@pytest.mark.parametrize("source", list_sources())
def test_every_registered_source_has_a_source_config_whose_options_its_factory_takes(source):
    assert source in options("source"), f"conf/source/{source}.yaml is missing"
    cfg = compose("train", overrides=[f"source={source}"])
    assert cfg.source.name == source
    params = inspect.signature(get_source_spec(source).factory).parameters
    takes_any = any(p.kind is p.VAR_KEYWORD for p in params.values())
    assert takes_any or set(cfg.source.options) <= set(params), f"{source}: options {dict(cfg.source.options)}"
    if cfg.source.weights is not None:
        assert "weights" in params


@pytest.mark.parametrize("source", list_sources())
def test_composed_model_section_is_what_create_model_uses(source):
    cfg = compose("train", overrides=[f"source={source}"])
    assert OmegaConf.to_object(cfg.model) == any2point.model_config(source)


def test_a_source_without_a_model_preset_runs_on_base(tmp_path):
    cfg = compose("train", overrides=["source=tiny_1d", "model=base"])
    assert OmegaConf.to_object(cfg.model) == any2point.model_config("no_such_preset")


def test_clip_text_is_bidirectional_by_default():
    assert compose("train", overrides=["source=clip_text"]).source.options == {"causal": False}


# The paper experiments against the per-run table (docs/method.md#per-run-settings): tests/model/test_paper_experiments.py


def test_command_line_beats_experiment():
    cfg = compose("train", overrides=["experiment=dinov2_modelnet40", "train.epochs=2", "source=tiny_2d"])
    assert cfg.train.epochs == 2 and cfg.source.name == "tiny_2d"
    # a paper experiment states all its values: they go over the chosen source's preset
    assert cfg.model.adapter.cell == 26 and cfg.model.adapter.coef == 0.1 and cfg.model.tokenizer.k == 81


def test_modelnet40_cpu_experiment_trains_minilm_with_a_validation_split():
    cfg = compose("train", overrides=["experiment=modelnet40_cpu"])
    assert cfg.source.name == "minilm" and cfg.data.name == "modelnet40" and cfg.data.val_fraction > 0
    assert cfg.data.root.endswith("modelnet40_1024_h5")


def test_output_paths_are_decided_in_one_place():
    cfg = compose("train", return_hydra_config=True, overrides=["hydra.job.num=0"])
    h = cfg.hydra
    assert h.job.chdir is False
    assert h.run.dir.startswith("outputs/") and h.sweep.dir.startswith("multirun/")
    assert "override_dirname" in OmegaConf.to_container(h.sweep, resolve=False)["subdir"]
    assert "data.root" in h.job.config.override_dirname.exclude_keys


def test_slurm_launcher_config_composes():
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    cfg = compose("train", overrides=["hydra/launcher=slurm"], return_hydra_config=True)
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher") and launcher.max_num_timeout > 0


def test_sweep_job_folders_stay_short_and_flat():
    from any2point.config import job_dirname

    assert job_dirname("source=tiny_1d,train.lr=0.001") == "source=tiny_1d,train.lr=0.001"
    assert job_dirname("source.options.cache=/a/b") == "source.options.cache=_a_b"
    many = ",".join(f"data.key{i}=value{i}" for i in range(40))
    short = job_dirname(many)
    assert len(short) == 120 and short.startswith("data.key0=value0,") and short != job_dirname(many + ",x=1")
