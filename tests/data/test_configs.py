"""The data configs state only what differs from ``conf/data/base.yaml`` (and the ScanObjectNN
variants only what differs from OBJ_BG), yet every data option and every experiment composes
to exactly the ``data`` section it composed to before that split: ``composed_configs.json``
holds ``OmegaConf.to_container(cfg.data, resolve=False)`` of each, recorded from the flat files
(the other sections are not the data files' business; an experiment that changes its data
settings on purpose updates its entry)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf

import any2point.config  # noqa: F401  (registers the schemas)

CONF = Path(__file__).resolve().parents[2] / "conf"
EXPECTED = json.loads((Path(__file__).parents[1] / "composed_configs.json").read_text())


@pytest.fixture(scope="module")
def composed():
    GlobalHydra.instance().clear()
    try:
        with initialize_config_module(config_module="any2point.conf", version_base="1.3"):
            yield lambda override: compose("train", overrides=[override])
    finally:
        GlobalHydra.instance().clear()


def test_every_data_option_and_experiment_is_recorded():
    data = {f"data={p.stem}" for p in (CONF / "data").glob("*.yaml")} - {"data=base"}
    experiments = {f"experiment={p.stem}" for p in (CONF / "experiment").glob("*.yaml")}
    assert data | experiments == set(EXPECTED)


@pytest.mark.parametrize("override", sorted(EXPECTED))
def test_composes_to_the_recorded_config(composed, override):
    cfg = composed(override)
    got = OmegaConf.to_container(cfg.data, resolve=False)
    assert got == EXPECTED[override]
