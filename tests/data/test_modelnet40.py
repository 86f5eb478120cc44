"""ModelNet40 HDF5 release: the shared training files, the release layout, the FPS cache, bad input."""
from __future__ import annotations

import h5py
import numpy as np
import pytest
import torch

from any2point.data import build_dataset
from any2point.data.fps_cache import fps_indices
from any2point.errors import DataError
from ..data_files import (MODELNET40_SHARED, compose_data, need_shared, random_clouds, write_labelled_h5,
                         write_modelnet40_release)

CLASSES = ["airplane", "bed", "chair", "lamp", "sofa"]


@pytest.fixture(scope="module")
def shared_cfg(tmp_path_factory):
    root = need_shared(MODELNET40_SHARED)
    return compose_data("modelnet40", root=root, cache_dir=str(tmp_path_factory.mktemp("fps")), val_fraction=0.1)


# ----------------------------------------------------------------------------- the shared files

def test_shared_training_files_load_through_the_config(shared_cfg):
    cfg = shared_cfg.copy()
    cfg.val_fraction = 0.0
    train = build_dataset(cfg, "train")
    names = (MODELNET40_SHARED / "shape_names.txt").read_text().split()
    assert train.class_names == names and len(names) == 40
    assert len(train) == 9843 and len(train.labels) == 9843
    counts = dict(zip(names, train.class_counts().tolist()))
    assert all(c > 0 for c in counts.values()) and sum(counts.values()) == 9843
    assert counts["airplane"] == 626 and counts["chair"] == 889  # the official training counts
    points, label = train[0]
    assert points.shape == (1024, 3) and points.dtype == torch.float32 and isinstance(label, int)


def test_shared_validation_split_is_stratified(shared_cfg):
    train, val = build_dataset(shared_cfg, "train", seed=5), build_dataset(shared_cfg, "val", seed=5)
    assert len(train) + len(val) == 9843
    assert abs(len(val) - 984) <= 40
    train_counts, val_counts = train.class_counts(), val.class_counts()
    assert (train_counts > 0).all() and (val_counts > 0).all()
    np.testing.assert_array_less(np.abs(val_counts - 0.1 * (train_counts + val_counts)), 1.0)
    assert not np.array_equal(val._rows, build_dataset(shared_cfg, "val", seed=6)._rows)
    assert not set(train._rows) & set(val._rows)


def test_shared_1024_point_files_are_used_whole(shared_cfg, fps_calls):
    """1,024 points and FPS 1,200: no FPS; training takes every point in a new order each epoch."""
    cfg = shared_cfg.copy()
    cfg.val_fraction, cfg.augment = 0.0, []
    train = build_dataset(cfg, "train")
    with h5py.File(MODELNET40_SHARED / "ply_data_train0.h5") as f:
        stored = f["data"][3]
    sample = train[3][0].numpy()
    assert not np.array_equal(sample, stored)
    np.testing.assert_array_equal(np.unique(sample, axis=0), np.unique(stored, axis=0))
    train.set_epoch(1)
    assert not np.array_equal(train[3][0].numpy(), sample)
    assert fps_calls == []


# ----------------------------------------------------------------------------- the release layout

def _small_cfg(root, tmp_path, **values):
    values = {"num_points": 32, "protocol": {"train_fps": 40}, "cache_dir": str(tmp_path / "cache"), **values}
    return compose_data("modelnet40", root=root, **values)


def test_release_layout_with_prefixed_list_and_glob_fallback(tmp_path):
    clouds, labels = random_clouds(30, 64), np.arange(30) % 5
    write_modelnet40_release(tmp_path / "listed", "train", clouds, labels, CLASSES)
    write_modelnet40_release(tmp_path / "globbed", "train", clouds, labels, CLASSES, files=3, listing=False)
    for root in ("listed", "globbed"):
        ds = build_dataset(_small_cfg(tmp_path / root, tmp_path), "train")
        assert len(ds) == 30 and ds.class_names == CLASSES
        np.testing.assert_array_equal(ds.labels, labels)
        assert ds[0][0].shape == (32, 3)


def test_a_root_may_hold_only_the_split_read(tmp_path):
    clouds, labels = random_clouds(12, 64, seed=1), np.arange(12) % 5
    write_modelnet40_release(tmp_path, "test", clouds, labels, CLASSES, files=1)
    test = build_dataset(_small_cfg(tmp_path, tmp_path), "test")
    assert len(test) == 12
    expected = clouds[5][fps_indices(clouds[5:6], 32)[0].astype(np.int64)]
    np.testing.assert_array_equal(test[5][0].numpy(), expected)  # test: FPS num_points, no augmentation
    np.testing.assert_array_equal(test[5][0].numpy(), test[5][0].numpy())
    with pytest.raises(DataError, match=r"train.*expected train_files\.txt and ply_data_train0\.h5"):
        build_dataset(_small_cfg(tmp_path, tmp_path), "train")


def test_val_uses_the_fps_prefix_and_train_a_random_subset_of_the_fps_pool(tmp_path):
    clouds, labels = random_clouds(20, 64, seed=2), np.arange(20) % 5
    write_modelnet40_release(tmp_path, "train", clouds, labels, CLASSES, files=1)
    cfg = _small_cfg(tmp_path, tmp_path, val_fraction=0.25, augment=[])
    val, train = build_dataset(cfg, "val"), build_dataset(cfg, "train")
    row = int(val._rows[0])
    np.testing.assert_array_equal(val[0][0].numpy(), clouds[row][fps_indices(clouds[row:row + 1], 32)[0].astype(int)])
    row = int(train._rows[0])
    pool = {tuple(p) for p in clouds[row][fps_indices(clouds[row:row + 1], 40)[0].astype(int)]}
    picked = {tuple(p) for p in train[0][0].numpy()}
    assert len(picked) == 32 and picked <= pool


def test_fps_is_computed_once_and_cached(tmp_path, fps_calls):
    clouds, labels = random_clouds(40, 64, seed=3), np.arange(40) % 5
    write_modelnet40_release(tmp_path / "mn", "train", clouds, labels, CLASSES)
    cfg = _small_cfg(tmp_path / "mn", tmp_path)
    train = build_dataset(cfg, "train")
    first = sum(fps_calls)
    assert first == 40  # every cloud once, batched per file
    for epoch in (0, 1):
        train.set_epoch(epoch)
        for i in range(len(train)):
            train[i]
    assert sum(fps_calls) == first  # a second epoch recomputes nothing
    val_cfg = cfg.copy()
    val_cfg.val_fraction = 0.2
    build_dataset(cfg, "train"), build_dataset(val_cfg, "val")
    assert sum(fps_calls) == first  # a new run reads the cache; train and val share one entry
    entries = sorted(p.name for p in (tmp_path / "cache").iterdir())
    assert len(entries) == 2 and all(e.endswith(".npy") and not e.startswith(".tmp") for e in entries)
    write_labelled_h5(tmp_path / "mn" / "ply_data_train0.h5", random_clouds(20, 64, seed=9), labels[:20])
    build_dataset(cfg, "train")
    assert sum(fps_calls) == first + 20  # changed content, new key
    cfg.cache = False
    build_dataset(cfg, "train")
    assert sum(fps_calls) == first + 60


# ----------------------------------------------------------------------------- bad input

def test_missing_root_names_the_files_and_the_download_page(tmp_path):
    with pytest.raises(DataError) as info:
        build_dataset(compose_data("modelnet40", root=tmp_path / "nowhere"), "train")
    message = str(info.value)
    assert "nowhere" in message and "shape_names.txt" in message and "ply_data_train" in message
    assert "https://shapenet.cs.stanford.edu/media/modelnet40_ply_hdf5_2048.zip" in message


def test_corrupt_files_and_bad_samples_name_the_file_and_index(tmp_path):
    clouds, labels = random_clouds(10, 64, seed=4), np.arange(10) % 5
    root = tmp_path / "mn"
    path = write_modelnet40_release(root, "train", clouds, labels, CLASSES, files=1)[0]
    cfg = _small_cfg(root, tmp_path)

    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(DataError, match=r"ply_data_train0\.h5.*not a readable HDF5 file"):
        build_dataset(cfg, "train")

    bad = clouds.copy()
    bad[6, 10, 2] = np.nan
    write_labelled_h5(path, bad, labels)
    with pytest.raises(DataError, match=r"ply_data_train0\.h5 \[sample 6\].*NaN or infinite"):
        build_dataset(cfg, "train")
    bad[6, 10, 2], bad[2, 0, 0] = 0.0, -np.inf
    write_labelled_h5(path, bad, labels)
    with pytest.raises(DataError, match=r"\[sample 2\].*NaN or infinite"):
        build_dataset(cfg, "train")

    write_labelled_h5(path, clouds, np.where(np.arange(10) == 8, 5, labels))
    with pytest.raises(DataError, match=r"ply_data_train0\.h5 \[sample 8\].*label 5 is outside the class list"):
        build_dataset(cfg, "train")

    write_labelled_h5(path, clouds[:, :, :2], labels)
    with pytest.raises(DataError, match=r"ply_data_train0\.h5.*shape \(10, 64, 2\).*\(num_clouds, num_points, 3\)"):
        build_dataset(cfg, "train")
    write_labelled_h5(path, clouds, labels[:9])
    with pytest.raises(DataError, match=r"holds 10 clouds but 'label' holds 9 labels"):
        build_dataset(cfg, "train")

    with h5py.File(path, "w") as f:
        f["points"] = clouds
    with pytest.raises(DataError, match=r"ply_data_train0\.h5.*missing dataset\(s\) \['data', 'label'\]"):
        build_dataset(cfg, "train")

    path.unlink()
    with pytest.raises(DataError, match=r"train_files\.txt.*lists \['ply_data_train0\.h5'\]"):
        build_dataset(cfg, "train")
