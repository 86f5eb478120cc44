"""The six paper experiments compose to the per-run table and recipe (docs/method.md#per-run-settings, #training-recipe).

The table below is copied from docs/method.md#per-run-settings by hand, not read from the configs: a value that
drifts in an experiment file (or in a preset it must not depend on) fails here."""
from __future__ import annotations

import importlib.resources

import pytest
from hydra import compose
from omegaconf import OmegaConf

import any2point.config  # noqa: F401  (registers the schemas)
from any2point.config import CONFIG_MODULE

pytestmark = [pytest.mark.filterwarnings("ignore:Class `DataConfig` subclasses `Dict`:UserWarning"),
              pytest.mark.usefixtures("hydra_conf")]  # conftest.py

# run: (source, dataset, r, s, c, g, g3, t, k, inject, pool)  -- docs/method.md#per-run-settings
TABLE = {
    "clip_text_scanobjectnn": ("clip_text", "scan", 16, 0.3, 0.3, 2, 0.08, None, 81, "input_and_every", "mean"),
    "dinov2_scanobjectnn": ("dinov2", "scan", 8, 0.3, 0.7, 26, 0.16, -1.8, 64, "every", "mean"),
    "imagebind_audio_scanobjectnn": ("imagebind_audio", "scan", 12, 0.3, 0.5, 16, 0.16, -1.4, 64, "input", "mean"),
    "clip_text_modelnet40": ("clip_text", "modelnet", 16, 0.3, 0.5, 2, 0.16, None, 64, "input", "mean"),
    "dinov2_modelnet40": ("dinov2", "modelnet", 8, 1.0, 0.1, 26, 0.16, -1.4, 81, "every", "mean_max"),
    "imagebind_audio_modelnet40": ("imagebind_audio", "modelnet", 8, 1.0, 0.1, 16, 0.16, -1.4, 81, "input",
                                   "mean_max"),
}
# docs/method.md#guided-adapter, item 6: inside the frozen source during training
SOURCE_DROPOUT = {
    "clip_text_scanobjectnn": {}, "clip_text_modelnet40": {},
    "dinov2_scanobjectnn": {"attn_drop_rate": 0.1}, "imagebind_audio_scanobjectnn": {"attn_drop_rate": 0.1},
    "dinov2_modelnet40": {"drop_path_rate": 0.1}, "imagebind_audio_modelnet40": {"drop_path_rate": 0.1},
}


@pytest.mark.parametrize("run", sorted(TABLE))
def test_experiment_composes_to_its_row_of_the_table(run):
    source, dataset, r, s, c, g, g3, t, k, inject, pool = TABLE[run]
    cfg = compose("train", overrides=[f"experiment={run}"])
    m = cfg.model
    a, p, tok = m.adapter, m.projection, m.tokenizer
    assert cfg.source.name == source and cfg.peft.name == "any2point"
    assert (a.rank, a.scale, a.coef, a.cell, a.voxel, a.pool) == (r, s, c, g, g3, pool)
    assert (tok.k, p.inject) == (k, inject)
    if t is None:  # 1D source: no camera, the lines span CLIP's 77 rows
        assert p.length == 77
    else:
        assert p.translation == t
    assert tok.normalize == dataset  # offsets: per-axis group max (scan) or std (modelnet)
    assert m.init == dataset  # xavier (scan) or trunc_normal 0.02 (modelnet)
    assert m.cls_position == "random" and m.cls_token == ("random" if source == "clip_text" else "source")
    assert dict(cfg.source.options).items() >= SOURCE_DROPOUT[run].items()
    assert m.source_dropout == bool(SOURCE_DROPOUT[run])
    assert (a.mini_heads, a.mini_head_dim, a.dropout) == (6, 2, 0.1)
    assert list(m.head.hidden) == [256, 256] and m.head.dropout == 0.5


@pytest.mark.parametrize("run", sorted(TABLE))
def test_experiment_trains_with_the_paper_recipe_and_data(run):
    dataset = TABLE[run][1]
    cfg = compose("train", overrides=[f"experiment={run}"])
    tr = cfg.train
    assert (tr.epochs, tr.batch_size, tr.eval_batch_size, tr.lr, tr.weight_decay, tr.warmup_epochs, tr.warmup_lr,
            tr.min_lr, tr.grad_clip, tr.label_smoothing) == (300, 32, 64, 5e-4, 0.05, 10, 1e-6, 1e-6, 10.0, 0.0)
    assert cfg.trainer.precision == "32"  # the release trains in float32
    d = cfg.data
    assert d.num_points == 1024 and d.protocol.train_fps == 1200 and d.protocol.fps_pools > 1  # per-epoch FPS
    augment = OmegaConf.to_container(d.augment)
    if dataset == "scan":
        assert d.name == "scanobjectnn_pb_t50_rs"
        assert augment == [{"name": "scale", "low": 0.9, "high": 1.1}, {"name": "center"},
                           {"name": "rotate", "max_degrees": 180}]
        assert OmegaConf.to_container(d.eval_transforms) == [{"name": "center"}] and d.up_axis == "y"
    else:
        assert d.name == "modelnet40_resampled" and d.presample_points == 8192 and d.normalize
        assert augment == [{"name": "scale", "low": 0.6667, "high": 1.5}, {"name": "translate", "shift": 0.2}]
        assert not d.get("eval_transforms")


@pytest.mark.parametrize("run", sorted(TABLE))
def test_experiment_file_states_every_value_itself(run):
    """No value of the table row comes from model/<source>.yaml (a source-keyed preset)."""
    text = importlib.resources.files(CONFIG_MODULE).joinpath("experiment", f"{run}.yaml").read_text()
    model = OmegaConf.create(text).model
    assert {"init", "cls_token", "cls_position", "source_dropout"} <= set(model)
    assert {"rank", "scale", "coef", "cell", "voxel", "pool"} <= set(model.adapter)
    assert {"k", "normalize"} <= set(model.tokenizer)
    assert "inject" in model.projection
    assert ("length" if TABLE[run][7] is None else "translation") in model.projection


def test_modelnet_experiment_takes_the_hdf5_release_as_an_option():
    cfg = compose("train", overrides=["experiment=dinov2_modelnet40", "data=modelnet40"])
    assert cfg.data.name == "modelnet40" and cfg.model.adapter.pool == "mean_max"


def test_bf16_is_an_opt_in_over_the_recipe():
    cfg = compose("train", overrides=["experiment=clip_text_scanobjectnn", "trainer=gpu"])
    assert cfg.trainer.name == "gpu" and cfg.trainer.precision == "32"
    cfg = compose("train", overrides=["experiment=clip_text_scanobjectnn", "trainer=gpu", "trainer.precision=bf16"])
    assert cfg.trainer.precision == "bf16"
