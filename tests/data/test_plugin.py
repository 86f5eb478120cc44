"""A data format from outside the package: the module that docs/guide/data-formats.md shows,
installed as a distribution with an ``any2point.data_formats`` entry point, trains through the
command that page shows (``data=base data.format=blobs``), in-process with test-sized settings;
its options are typed (a bad value stops at start-up by its key)."""
from __future__ import annotations

import importlib
import re
import shlex
import sys
from pathlib import Path

import numpy as np
import pytest

from any2point import plugins
from any2point.config import check_train_settings
from any2point.data import build_dataset, registry
from any2point.errors import ConfigError
from any2point.train import run_training
from ..tiny_run import TINY, compose_config, metrics

PAGE = (Path(__file__).resolve().parents[2] / "docs" / "guide" / "data-formats.md").read_text()
PLUGIN = re.search(r"```python\n(.*?)```", PAGE, re.S).group(1)
COMMAND = shlex.split(re.search(r"```text\n(any2point-train .*?)\n```", PAGE, re.S).group(1))[1:]
# the command's source and epochs are the tiny ones already; the rest of TINY sizes the run
SETTINGS = [o for o in TINY if not o.startswith(("data", "source=", "train.epochs="))]


@pytest.fixture
def blobs_installed(tmp_path, monkeypatch):
    """The page's module as the package a2p_blobs of a distribution declaring the entry point."""
    site = tmp_path / "site"
    (site / "a2p_blobs").mkdir(parents=True)
    (site / "a2p_blobs" / "__init__.py").write_text(PLUGIN)
    dist = site / "a2p_blobs-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: a2p-blobs\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[any2point.data_formats]\nblobs = a2p_blobs\n")
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.delitem(sys.modules, "a2p_blobs", raising=False)
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    monkeypatch.setattr(plugins, "_loaded", plugins._loaded - {registry.ENTRY_POINT_GROUP})
    importlib.invalidate_caches()


def test_a_format_registered_by_entry_point_trains_by_data_format(blobs_installed, tmp_path):
    assert "blobs" in registry.list_data_formats()
    cfg = compose_config("train", [*COMMAND, *SETTINGS])
    assert (cfg.data.format, cfg.data.name, cfg.data.clouds_per_class) == ("blobs", "blobs", 6)
    train = build_dataset(cfg.data, "train")
    assert (len(train), train.class_names, train[0][0].shape) == (18, ["blob0", "blob1", "blob2"], (64, 3))
    test = build_dataset(cfg.data, "test")  # no augmentation: the format's normalize (true) shows
    np.testing.assert_allclose(np.linalg.norm(test[0][0].numpy(), axis=1).max(), 1.0, atol=1e-5)
    result = run_training(cfg, tmp_path / "run")
    m = metrics(tmp_path / "run")
    assert m["data"] == "blobs" and m["classes"] == 3 and 0.0 <= result["oa"] <= 100.0


def test_a_plugin_format_checks_its_own_keys_at_start_up(blobs_installed):
    cfg = compose_config("train", [*COMMAND, *SETTINGS, "data.clouds_per_class=0"])
    with pytest.raises(ConfigError, match=r"^data\.clouds_per_class=0 must be an integer >= 1$"):
        check_train_settings(cfg)
    cfg = compose_config("train", [*COMMAND, *SETTINGS, "+data.protocol.fps_pools=2"])
    with pytest.raises(ConfigError, match=r"data\.protocol\.fps_pools > 1 needs stored clouds; data\.format 'blobs'"):
        check_train_settings(cfg)
