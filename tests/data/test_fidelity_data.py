"""Data as the release feeds it (docs/method.md#training-recipe): ScanObjectNN evaluation clouds centred, and
training FPS points that differ from epoch to epoch (cached FPS orderings from other starts)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from any2point import ops
from any2point.data import build_dataset
from any2point.data import fps_cache
from ..data_files import compose_data, random_clouds, write_labelled_h5

PB = "main_split/{split}_objectdataset_augmentedrot_scale75.h5"


def _scanobjectnn(tmp_path, n_train: int = 12, n_test: int = 6, points: int = 96):
    root = tmp_path / "h5_files"
    for split, n in (("training", n_train), ("test", n_test)):
        path = root / PB.format(split=split)
        path.parent.mkdir(parents=True, exist_ok=True)
        clouds = random_clouds(n, points, seed=n) + np.array([0.5, -0.3, 0.2], dtype=np.float32)  # off-centre
        write_labelled_h5(path, clouds, np.arange(n) % 15, label_shape="n")
    return root


def test_scanobjectnn_test_clouds_are_centred_and_nothing_else(tmp_path):
    cfg = compose_data("scanobjectnn_pb_t50_rs", root=_scanobjectnn(tmp_path), num_points=32,
                       protocol={"train_fps": 48}, cache_dir=str(tmp_path / "cache"))
    test = build_dataset(cfg, "test")
    cfg.eval_transforms = None
    plain = build_dataset(cfg, "test")
    for i in range(len(test)):
        points, raw = test[i][0].numpy(), plain[i][0].numpy()
        np.testing.assert_allclose(points.mean(axis=0), 0, atol=1e-6)
        np.testing.assert_allclose(points, raw - raw.mean(axis=0), atol=1e-6)  # no scaling, no rotation
        assert np.abs(raw.mean(axis=0)).max() > 0.1
        assert torch.equal(test[i][0], test[i][0])  # deterministic


def test_training_fps_points_differ_from_epoch_to_epoch(tmp_path):
    pools = 3
    cfg = compose_data("scanobjectnn_pb_t50_rs", root=_scanobjectnn(tmp_path), num_points=32,
                       protocol={"train_fps": 48, "fps_pools": pools}, cache_dir=str(tmp_path / "cache"),
                       augment=None)
    train = build_dataset(cfg, "train")
    clouds = random_clouds(12, 96, seed=12) + np.array([0.5, -0.3, 0.2], dtype=np.float32)
    # the reference: FPS of 48 points of the whole stored cloud, from start 0 (pool 0) or a seeded start
    starts = [fps_cache.fps_starts(12, 96, k) for k in range(pools)]
    assert not starts[0].any() and all(s.any() for s in starts[1:])
    for index in (0, 5):
        expected = []
        for k in range(pools):
            idx = ops.furthest_point_sample(torch.from_numpy(clouds[index:index + 1]), 48,
                                            start=torch.tensor([int(starts[k][index])])).numpy()[0]
            expected.append({tuple(p) for p in clouds[index][idx].round(5)})
        assert len({frozenset(e) for e in expected}) >= 2  # the points differ between pools
        for epoch in range(2 * pools):
            train.set_epoch(epoch)
            got = {tuple(p) for p in train[index][0].numpy().round(5)}
            assert len(got) == 32 and got <= expected[epoch % pools]


def test_epoch_pools_are_cached_and_evaluation_keeps_the_plain_fps(tmp_path, monkeypatch):
    cfg = compose_data("scanobjectnn_pb_t50_rs", root=_scanobjectnn(tmp_path), num_points=32,
                       protocol={"train_fps": 48, "fps_pools": 2}, cache_dir=str(tmp_path / "cache"))
    build_dataset(cfg, "train")

    def no_fps(*args, **kwargs):
        raise AssertionError("recomputed an FPS entry that is cached")

    monkeypatch.setattr(fps_cache, "fps_indices", no_fps)
    train = build_dataset(cfg, "train")
    train.set_epoch(1)
    assert train[0][0].shape == (32, 3)
    cfg.protocol = {"train_fps": 48}  # the test split: FPS 32 from start 0, whatever the pools
    monkeypatch.undo()
    plain = build_dataset(cfg, "test")
    cfg.protocol = {"train_fps": 48, "fps_pools": 2}
    assert torch.equal(build_dataset(cfg, "test")[3][0], plain[3][0])


def test_fps_pools_need_stored_clouds(tmp_path):
    cfg = compose_data("shapes", protocol={"train_fps": 64, "fps_pools": 2}, num_points=32)
    with pytest.raises(ValueError, match="fps_pools"):
        build_dataset(cfg, "train")


def test_modelnet40_resampled_pools_are_drawn_from_the_presampled_clouds(tmp_path):
    from .test_datasets import _write_resampled

    root = tmp_path / "modelnet40_normal_resampled"
    _write_resampled(root, ["airplane", "bed"], 2, 300)
    cfg = compose_data("modelnet40_resampled", root=root, num_points=32, protocol={"train_fps": 48, "fps_pools": 2},
                       presample_points=128, cache_dir=str(tmp_path / "cache"), augment=None, normalize=False)
    train = build_dataset(cfg, "train")
    assert train._pools.shape == (4, 128, 3) and train._epoch_pools.shape == (2, 4, 48)
    cfg.protocol = {"train_fps": 48}
    plain = build_dataset(cfg, "train")  # FPS 48 of the same 128 presampled points, from start 0
    np.testing.assert_array_equal(train._pools[0][train._epoch_pools[0, 0]], plain._pools[0])
    for epoch in range(4):
        train.set_epoch(epoch)
        pool = {tuple(p) for p in train._pools[1][train._epoch_pools[epoch % 2, 1]].round(5)}
        assert {tuple(p) for p in train[1][0].numpy().round(5)} <= pool
