"""The data-format registry: each built-in format is a registered unit (loader, typed options,
traits), the ``data`` section converts once to its options, and a bad value of any key a
format defines stops by its ``data.`` key before anything is read."""
from __future__ import annotations

from dataclasses import dataclass, fields

import pytest
from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra

from any2point.config import check_data_values
from any2point.data import DataOptions, LoadedSplit, data_options, list_data_formats, register_data_format, registry
from any2point.data.folder import FolderOptions, load_folder
from any2point.data.h5sets import H5Options
from any2point.data.modelnet40_resampled import ResampledOptions
from any2point.data.scanobjectnn import ScanObjectNNOptions
from any2point.data.shapes import ShapesOptions
from any2point.errors import ConfigError

pytestmark = pytest.mark.filterwarnings("ignore:Class `DataConfig` subclasses `Dict`:UserWarning")

# name -> (options class, stored clouds, normalize by default): what the loaders dict and its two
# trait sets said before the registry
BUILT_IN = {
    "modelnet40_h5": (H5Options, True, False),
    "modelnet40_resampled": (ResampledOptions, True, True),
    "scanobjectnn": (ScanObjectNNOptions, True, False),
    "folder": (FolderOptions, False, True),
    "shapes": (ShapesOptions, False, True),
}


@pytest.fixture(scope="module")
def data_config():
    GlobalHydra.instance().clear()
    try:
        with initialize_config_module(config_module="any2point.conf", version_base="1.3"):
            yield lambda *overrides: compose("train", overrides=list(overrides)).data
    finally:
        GlobalHydra.instance().clear()


def test_the_built_in_formats_are_registered_with_their_options_and_traits():
    assert set(BUILT_IN) <= set(list_data_formats())
    for name, (options, stored, normalize) in BUILT_IN.items():
        spec = registry.get_data_format(name)
        defaults = {f.name: f.default for f in fields(spec.options)}
        assert (spec.options, spec.stored_clouds, defaults["normalize"]) == (options, stored, normalize)
        assert spec.description, name


@pytest.mark.parametrize("fmt, normalize", [("shapes", True), ("modelnet40_h5", False), ("folder", True)])
def test_base_yaml_leaves_normalize_to_the_format(data_config, fmt, normalize):
    options = data_options(data_config("data=base", f"data.format={fmt}"))
    assert (type(options), options.name, options.normalize) == (BUILT_IN[fmt][0], fmt, normalize)


def test_the_data_section_converts_once_to_typed_options(data_config):
    options = data_options(data_config("data=scanobjectnn_pb_t50_rs"))
    assert isinstance(options, ScanObjectNNOptions) and options.variant == "pb_t50_rs"
    assert options.class_names[:3] == ["bag", "bin", "box"] and options.max_points_per_collection == 50_000_000
    assert options.protocol.train_fps == 1200 and options.protocol.fps_pools == 1
    assert data_options(options) is options
    shapes = data_options({"name": "shapes", "seeds": {"train": 5}, "samples_per_class": {"test": 2}})
    assert (shapes.seeds, shapes.samples_per_class) == ({"train": 5, "test": 1}, {"train": 64, "test": 2})


@pytest.mark.parametrize("overrides, message", [
    (["data=scanobjectnn_obj_bg", "data.variant=obj_all"],
     "data.variant='obj_all' is not one of: obj_bg, obj_only, pb_t50_rs"),
    (["data=base", "data.format=scanobjectnn"], "data.variant is not set; data.format='scanobjectnn' needs it"),
    (["data=folder", "data.on_error=ignore"], "data.on_error='ignore' is not one of: raise, skip"),
    (["data=folder", "data.mesh_points=0"], "data.mesh_points=0 must be an integer >= 1"),
    (["data=folder", "data.presample_points=0"], "data.presample_points=0 must be null"),
    (["data=modelnet40_resampled", "data.presample_points=-1"], "data.presample_points=-1 must be an integer >= 1"),
    (["data=modelnet40", "data.max_points_per_collection=0"], "data.max_points_per_collection=0 must be null"),
    (["data=shapes", "data.samples_per_class.train=-1"], "data.samples_per_class.train=-1 must be an integer >= 0"),
    (["data=shapes", "data.class_names=[sphere,teapot]"], "data.class_names ['teapot'] are not procedural shapes"),
    (["data=shapes", "data.noise=-0.1"], "data.noise=-0.1 must be a finite number >= 0"),
    (["data=shapes", "+data.protocol.train_pfs=99"], "data.protocol has unknown keys ['train_pfs']"),
    (["data=shapes", "data.protocol.train_fps=0"], "data.protocol.train_fps=0 must be null"),
])
def test_a_bad_value_of_a_format_key_is_refused_by_its_key(data_config, overrides, message):
    with pytest.raises(ConfigError) as err:
        check_data_values(data_config(*overrides))
    assert str(err.value).startswith(message) and "\n" not in str(err.value)


def test_registration_refuses_a_taken_name_and_options_that_are_not_data_options(monkeypatch):
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    with pytest.raises(ValueError, match="a data format named 'folder' is already registered"):
        register_data_format("folder", FolderOptions)(lambda options, split, size: None)
    assert register_data_format("folder", FolderOptions)(load_folder) is load_folder  # the same loader again: fine

    @dataclass
    class Loose:
        size: int = 1

    with pytest.raises(TypeError, match="subclassing DataOptions"):
        register_data_format("loose", Loose)


def test_a_required_setting_of_a_format_is_named(monkeypatch):
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))

    @dataclass
    class NeedsSize(DataOptions):
        size: int = None  # type: ignore[assignment]

        def __post_init__(self):
            super().__post_init__()
            if self.size is None:
                raise ConfigError("data.size is not set: give the cloud size")

    register_data_format("needs_size", NeedsSize)(lambda options, split, size: LoadedSplit(None, None, []))
    with pytest.raises(ConfigError, match=r"^data\.size is not set"):
        data_options({"format": "needs_size"})
    assert data_options({"format": "needs_size", "size": 3, "variant": "ignored"}).size == 3


def test_a_setting_without_default_is_named_when_missing(monkeypatch):
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))

    @dataclass(kw_only=True)
    class Sized(DataOptions):
        size: int

    register_data_format("sized", Sized)(lambda options, split, size: LoadedSplit(None, None, []))
    with pytest.raises(ConfigError, match=r"^data\.size is not set; data\.format='sized' needs it"):
        data_options({"format": "sized"})


def test_base_yaml_alone_asks_for_the_format():
    from any2point.config import check_required
    from ..tiny_run import compose_config

    with pytest.raises(ConfigError, match=r"^missing required config values: data\.format \("):
        check_required(compose_config("train", ["source=tiny_1d", "data=base"]))
