"""ScanObjectNN (three variants), ModelNet40 resampled and the user folder, from small files
written in the official layouts; the FPS cache of per-file datasets."""
from __future__ import annotations

import numpy as np
import pytest

from any2point.data import build_dataset, read_points
from any2point.data.scanobjectnn import CLASS_NAMES
from any2point.errors import DataError
from ..data_files import (box_mesh, compose_data, random_clouds, write_labelled_h5, write_obj, write_off, write_ply,
                         write_text_cloud)

SCANOBJECTNN_FILES = {
    "scanobjectnn_obj_bg": "main_split/{split}_objectdataset.h5",
    "scanobjectnn_obj_only": "main_split_nobg/{split}_objectdataset.h5",
    "scanobjectnn_pb_t50_rs": "main_split/{split}_objectdataset_augmentedrot_scale75.h5",
}


# ----------------------------------------------------------------------------- ScanObjectNN

@pytest.mark.parametrize("name", sorted(SCANOBJECTNN_FILES))
def test_scanobjectnn_variants_load_from_the_official_layout(tmp_path, name):
    h5_files = tmp_path / "ScanObjectNN" / "h5_files"
    sizes = {"training": 30, "test": 15}
    for split, n in sizes.items():
        path = h5_files / SCANOBJECTNN_FILES[name].format(split=split)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_labelled_h5(path, random_clouds(n, 96, seed=n), np.arange(n) % 15, label_shape="n")
    for root in (h5_files, h5_files.parent):  # the h5_files folder or the one holding it
        cfg = compose_data(name, root=root, num_points=32, protocol={"train_fps": 48},
                           cache_dir=str(tmp_path / "cache"))
        assert cfg.up_axis == "y"
        train, test = build_dataset(cfg, "train"), build_dataset(cfg, "test")
        assert (len(train), len(test)) == (30, 15)
        assert train.class_names == CLASS_NAMES == ["bag", "bin", "box", "cabinet", "chair", "desk", "display",
                                                    "door", "shelf", "table", "bed", "pillow", "sink", "sofa",
                                                    "toilet"]
        assert train[0][0].shape == (32, 3) and test[14][1] == 14
    other = next(n for n in SCANOBJECTNN_FILES if SCANOBJECTNN_FILES[n] != SCANOBJECTNN_FILES[name])
    with pytest.raises(DataError, match=r"missing ScanObjectNN .*expected main_split.*hkust-vgd\.github\.io"):
        build_dataset(compose_data(other, root=h5_files, cache_dir=str(tmp_path / "cache")), "test")


def test_scanobjectnn_missing_root_names_the_download_page(tmp_path):
    with pytest.raises(DataError, match=r"not found.*main_split/training_objectdataset\.h5.*hkust-vgd"):
        build_dataset(compose_data("scanobjectnn_obj_bg", root=tmp_path / "none"), "train")


# ----------------------------------------------------------------------------- ModelNet40 resampled

def _write_resampled(root, classes, per_class, points, split="train"):
    root.mkdir(parents=True, exist_ok=True)
    (root / "modelnet40_shape_names.txt").write_text("\n".join(classes) + "\n")
    names, clouds = [], {}
    for c, cls in enumerate(classes):
        (root / cls).mkdir(exist_ok=True)
        for k in range(per_class):
            shape_id = f"{cls}_{k + 1:04d}"
            cloud = random_clouds(1, points, seed=100 * c + k)[0] * (c + 1) + c
            write_text_cloud(root / cls / f"{shape_id}.txt", cloud, sep=",")
            names.append(shape_id)
            clouds[shape_id] = cloud
    (root / f"modelnet40_{split}.txt").write_text("\n".join(names) + "\n")
    return names, clouds


def test_modelnet40_resampled_presamples_once_and_caches(tmp_path, fps_calls):
    classes = ["airplane", "night_stand", "range_hood"]  # class names with underscores
    names, clouds = _write_resampled(tmp_path / "modelnet40_normal_resampled", classes, 3, 300)
    cfg = compose_data("modelnet40_resampled", root=tmp_path / "modelnet40_normal_resampled", num_points=32,
                       protocol={"train_fps": 48}, presample_points=128, cache_dir=str(tmp_path / "cache"))
    train = build_dataset(cfg, "train")
    assert len(train) == 9 and train.class_names == classes
    np.testing.assert_array_equal(train.labels, np.repeat([0, 1, 2], 3))
    assert sum(fps_calls) == 9
    assert len(list((tmp_path / "cache").glob("mn40resampled-*-k128-*.npy"))) == 9
    again = build_dataset(cfg, "train")
    assert sum(fps_calls) == 9  # warm cache: no FPS
    np.testing.assert_array_equal(again._pools, train._pools)
    (tmp_path / "modelnet40_normal_resampled" / "modelnet40_test.txt").write_text("night_stand_0002\n")
    test = build_dataset(cfg, "test")
    expected = read_points(tmp_path / "modelnet40_normal_resampled" / "night_stand" / "night_stand_0002.txt", 32)
    np.testing.assert_allclose(test[0][0].numpy(), expected, atol=1e-6)
    assert test[0][1] == 1


def test_modelnet40_resampled_bad_listing(tmp_path):
    root = tmp_path / "r"
    _write_resampled(root, ["chair"], 2, 50)
    (root / "modelnet40_train.txt").write_text("chair_0001\nsofa_0001\n")
    with pytest.raises(DataError, match=r"modelnet40_train\.txt.*line 2.*'sofa', which is not in the class list"):
        build_dataset(compose_data("modelnet40_resampled", root=root, cache=False), "train")
    (root / "modelnet40_train.txt").write_text("chair_0001\nchair_0009\n")
    with pytest.raises(DataError, match=r"1 listed shape file\(s\) are missing.*chair_0009\.txt"):
        build_dataset(compose_data("modelnet40_resampled", root=root, cache=False), "train")
    with pytest.raises(DataError, match=r"modelnet40_normal_resampled\.zip"):
        build_dataset(compose_data("modelnet40_resampled", root=tmp_path / "absent"), "train")


# ----------------------------------------------------------------------------- folder

def _folder(tmp_path):
    root = tmp_path / "mine"
    v, quads = box_mesh()
    for split in ("train", "test"):
        for cls in ("box", "blob", "ring"):
            (root / cls / split).mkdir(parents=True)
    for k in range(3):
        write_off(root / "box" / "train" / f"b{k}.off", v * (k + 1), quads)
        write_obj(root / "box" / "train" / f"b{k}.obj", v, quads, negative=bool(k % 2))
        np.save(root / "blob" / "train" / f"c{k}.npy", random_clouds(1, 500, seed=k)[0])
        write_ply(root / "ring" / "train" / f"r{k}.ply", random_clouds(1, 80, seed=10 + k)[0], None,
                  "binary_big_endian")
    write_off(root / "box" / "test" / "t.off", v, quads)
    write_text_cloud(root / "blob" / "test" / "t.xyz", random_clouds(1, 300, seed=7)[0])
    (root / "ring" / "test" / ".DS_Store").write_bytes(b"\x00")  # hidden files are ignored
    return root


def _folder_cfg(root, tmp_path, **values):
    return compose_data("folder", root=root, num_points=64, protocol={"train_fps": 96}, mesh_points=1024,
                        cache_dir=str(tmp_path / "cache"), **values)


def test_folder_of_mixed_files(tmp_path, fps_calls):
    root = _folder(tmp_path)
    cfg = _folder_cfg(root, tmp_path, val_fraction=0.0)
    train, test = build_dataset(cfg, "train"), build_dataset(cfg, "test")
    assert train.class_names == test.class_names == ["blob", "box", "ring"]
    assert len(train) == 12 and len(test) == 2 and train.skipped == []
    np.testing.assert_array_equal(np.bincount(train.labels), [3, 6, 3])
    # meshes (1,024 samples) and the 500-point clouds, then the 2 test files; the 80-point clouds are kept whole
    assert sum(fps_calls) == 9 + 2
    for i in range(len(train)):
        points, _ = train[i]
        assert points.shape == (64, 3) and np.isfinite(points.numpy()).all()
    # the test protocol is the prediction path: read_points gives the same cloud
    build_dataset(cfg, "train")
    assert sum(fps_calls) == 9 + 2  # cached per file
    expected = read_points(root / "box" / "test" / "t.off", 64, mesh_points=1024)
    np.testing.assert_allclose(test[1][0].numpy(), expected, atol=1e-6)
    val = build_dataset(_folder_cfg(root, tmp_path, val_fraction=0.3), "val")
    assert sorted(set(val.labels.tolist())) == [0, 1, 2]


def test_folder_bad_files_raise_or_are_skipped_and_counted(tmp_path):
    root = _folder(tmp_path)
    bad_nan = random_clouds(1, 50)[0]
    bad_nan[4] = np.nan
    write_text_cloud(root / "blob" / "train" / "nan.txt", bad_nan)
    (root / "blob" / "train" / "notes.docx").write_text("hello")
    write_off(root / "box" / "train" / "empty.off", np.zeros((0, 3)), [])
    write_off(root / "box" / "train" / "flat.off", np.array([[0, 0, 0], [1, 0, 0], [2, 0, 0.0]]), [[0, 1, 2]])
    raw = write_ply(root / "ring" / "train" / "cut.ply", random_clouds(1, 80)[0], None, "binary_little_endian")
    raw.write_bytes(raw.read_bytes()[:-20])

    with pytest.raises(DataError) as info:
        build_dataset(_folder_cfg(root, tmp_path), "train")
    assert "mine/blob/train/" in str(info.value)

    cfg = _folder_cfg(root, tmp_path, on_error="skip", val_fraction=0.0)
    train = build_dataset(cfg, "train")
    assert len(train) == 12
    reasons = {path.rsplit("/", 1)[1]: reason for path, reason in train.skipped}
    assert set(reasons) == {"nan.txt", "notes.docx", "empty.off", "flat.off", "cut.ply"}
    assert "point 4 has a NaN" in reasons["nan.txt"]
    assert "unsupported file type '.docx'" in reasons["notes.docx"] and ".ply" in reasons["notes.docx"]
    assert "empty" in reasons["empty.off"] and "zero area" in reasons["flat.off"]
    assert "truncated" in reasons["cut.ply"]

    for name in reasons:
        next(root.glob(f"*/train/{name}")).unlink()
    cfg.class_names = ["blob", "box"]
    with pytest.raises(DataError, match=r"ring.*class folder 'ring' is not in data.class_names"):
        build_dataset(_folder_cfg(root, tmp_path, class_names=["blob", "box"]), "train")
    limited = build_dataset(cfg, "train")
    assert limited.class_names == ["blob", "box"] and len(limited) == 9
    assert sum("not in data.class_names" in r for _, r in limited.skipped) == 3


def test_folder_missing_root_says_what_is_expected(tmp_path):
    with pytest.raises(DataError, match=r"not found.*one folder per class, each with train/ and test/"):
        build_dataset(_folder_cfg(tmp_path / "nothing", tmp_path), "train")
    with pytest.raises(DataError, match=r"data.root is not set"):
        build_dataset(compose_data("folder"), "train")


# ----------------------------------------------------------------------------- configs

DATA_CONFIGS = ["folder", "modelnet40", "modelnet40_resampled", "scanobjectnn_obj_bg", "scanobjectnn_obj_only",
                "scanobjectnn_pb_t50_rs", "shapes"]


def test_every_data_config_composes_with_the_primary_train_config():
    """The data group against the typed ``train`` schema; the shapes default builds as composed."""
    import importlib.resources

    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    import any2point.config  # noqa: F401  (registers the schemas)

    shipped = sorted(p.name[:-5] for p in (importlib.resources.files("any2point.conf") / "data").iterdir()
                     if p.name.endswith(".yaml"))
    assert shipped == sorted(["base", *DATA_CONFIGS])  # base.yaml: what every data file starts from
    GlobalHydra.instance().clear()
    with initialize_config_module(config_module="any2point.conf", version_base=None):
        for name in DATA_CONFIGS:
            data = compose(config_name="train", overrides=[f"data={name}"]).data
            assert data.name == name and data.format and "augment" in data and "train_fps" in data.protocol
        data = compose(config_name="train", overrides=["data=shapes", "data.samples_per_class.train=2"]).data
    train = build_dataset(data, "train")
    assert len(train) == 2 * len(train.class_names) and train[0][0].shape == (data.num_points, 3)
