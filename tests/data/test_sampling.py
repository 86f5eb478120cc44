"""Per-sample randomness (workers, epochs, resume), the point protocol, augmentations and splits."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from any2point.data import build_dataset
from any2point.data.protocol import PointProtocol
from any2point.data.splits import stratified_split
from any2point.data.transforms import Center, Rotate, Scale, Translate, build_transforms
from ..data_files import compose_data


@pytest.fixture(scope="module")
def shapes_cfg():
    return compose_data("shapes", num_points=128, protocol={"train_fps": 160},
                        samples_per_class={"train": 4, "test": 2})


def _epoch(loader: DataLoader) -> tuple[torch.Tensor, torch.Tensor]:
    points, labels = zip(*loader)
    return torch.cat(points), torch.cat(labels)


def test_same_samples_with_0_and_2_workers_and_new_subsets_each_epoch(shapes_cfg):
    dataset = build_dataset(shapes_cfg, "train", seed=11)
    serial = DataLoader(dataset, batch_size=8, num_workers=0)
    parallel = DataLoader(dataset, batch_size=8, num_workers=2, persistent_workers=True)
    seen = []
    for epoch in (0, 1):
        dataset.set_epoch(epoch)
        a, b = _epoch(serial), _epoch(parallel)  # persistent workers follow set_epoch too
        torch.testing.assert_close(a[0], b[0], rtol=0, atol=0)
        assert torch.equal(a[1], b[1])
        seen.append(a[0])
    assert not torch.equal(seen[0], seen[1])
    for i in range(len(dataset)):  # a different random subset of the same pool each epoch
        assert not torch.equal(seen[0][i], seen[1][i])


def test_a_resumed_run_reproduces_an_uninterrupted_one(shapes_cfg):
    run = build_dataset(shapes_cfg, "train", seed=2)
    run.set_epoch(0)
    [run[i] for i in range(len(run))]
    run.set_epoch(1)
    uninterrupted = [run[i][0] for i in range(len(run))]
    resumed = build_dataset(shapes_cfg, "train", seed=2)
    resumed.set_epoch(1)
    for i in range(len(resumed)):
        assert torch.equal(resumed[i][0], uninterrupted[i])
    other_seed = build_dataset(shapes_cfg, "train", seed=3)
    other_seed.set_epoch(1)
    assert not torch.equal(other_seed[0][0], uninterrupted[0])


def test_test_split_is_deterministic_and_unaugmented(shapes_cfg):
    test = build_dataset(shapes_cfg, "test", seed=0)
    assert not test.transforms  # no augmentation (shapes has no evaluation transforms)
    first = test[3][0]
    test.set_epoch(7)
    assert torch.equal(test[3][0], first)
    assert torch.equal(build_dataset(shapes_cfg, "test", seed=99)[3][0], first)
    np.testing.assert_allclose(first.norm(dim=1).max().item(), 1.0, atol=1e-5)  # shapes: normalised samples


def test_protocol_selection():
    pool = np.arange(60, dtype=np.float32).reshape(20, 3)
    protocol = PointProtocol(num_points=8, train_fps=12)
    np.testing.assert_array_equal(protocol.select(pool, False, np.random.default_rng(0)), pool[:8])
    picked = protocol.select(pool, True, np.random.default_rng(0))
    rows = picked[:, 0] // 3
    assert len(set(rows)) == 8 and rows.max() < 12  # a random 8 of the first 12 (the FPS 12)
    small = protocol.select(pool[:5], True, np.random.default_rng(0))
    assert small.shape == (8, 3) and set(small[:, 0] // 3) == set(range(5))
    assert protocol.pool_size("train") == protocol.pool_size("val") == 12 and protocol.pool_size("test") == 8
    with pytest.raises(ValueError, match="num_points <= protocol.train_fps"):
        PointProtocol(num_points=1024, train_fps=512)


def test_augmentations():
    rng = np.random.default_rng(0)
    points = np.random.default_rng(1).normal(size=(500, 3)).astype(np.float32)
    rotated = Rotate(axis="y")(points, rng)
    np.testing.assert_allclose(rotated[:, 1], points[:, 1], atol=1e-6)  # the up axis does not move
    np.testing.assert_allclose(np.linalg.norm(rotated, axis=1), np.linalg.norm(points, axis=1), rtol=1e-5)
    ratio = Scale(0.9, 1.1)(points, rng) / points
    assert ((ratio > 0.9 - 1e-6) & (ratio < 1.1 + 1e-6)).all() and len(np.unique(ratio.round(6))) == 3
    shift = Translate(0.2)(points, rng) - points
    assert np.ptp(shift, axis=0).max() < 1e-6 and np.abs(shift).max() <= 0.2
    np.testing.assert_allclose(Center()(points + 5, rng).mean(0), 0, atol=1e-5)
    composed = build_transforms([{"name": "scale", "low": 0.9, "high": 1.1}, {"name": "center"},
                                 {"name": "rotate", "max_degrees": 180}], up_axis="z")
    assert [type(t) for t in composed.transforms] == [Scale, Center, Rotate]
    assert composed.transforms[2].axis == "z"
    a = composed(points, np.random.default_rng(5))
    np.testing.assert_array_equal(a, composed(points, np.random.default_rng(5)))
    with pytest.raises(ValueError, match="unknown augmentation 'flip'.*known"):
        build_transforms([{"name": "flip"}])
    with pytest.raises(ValueError, match="does not take \\['sigma'\\]"):
        build_transforms([{"name": "scale", "sigma": 1}])


def test_stratified_split_edge_cases():
    labels = np.array([0] * 10 + [1] * 2 + [2] * 1 + [3] * 3)
    train, val = stratified_split(labels, 0.2, seed=0)
    assert sorted(np.concatenate([train, val]).tolist()) == list(range(len(labels)))
    val_counts = np.bincount(labels[val], minlength=4)
    np.testing.assert_array_equal(val_counts, [2, 1, 0, 1])  # >= 1 each side when a class has >= 2
    assert (np.bincount(labels[train], minlength=4) >= 1).all()
    np.testing.assert_array_equal(val, stratified_split(labels, 0.2, seed=0)[1])
    assert any(not np.array_equal(val, stratified_split(labels, 0.2, seed=s)[1]) for s in range(1, 5))
    train, val = stratified_split(labels, 0.0, seed=0)
    assert len(val) == 0 and len(train) == len(labels)
    with pytest.raises(ValueError, match="val_fraction"):
        stratified_split(labels, 1.0, seed=0)


def test_build_dataset_arguments(shapes_cfg):
    with pytest.raises(ValueError, match="val_fraction > 0"):
        build_dataset(shapes_cfg, "val")
    with pytest.raises(ValueError, match="split must be one of"):
        build_dataset(shapes_cfg, "training")
    with pytest.raises(ValueError, match="data.format='nope' is not one of: folder, "):
        build_dataset({"name": "nope"}, "train")
    many = build_dataset({**shapes_cfg, "num_points": 256}, "test")  # test ignores protocol.train_fps (160)
    assert many[0][0].shape == (256, 3)
    with pytest.raises(ValueError, match="num_points <= protocol.train_fps"):
        build_dataset({**shapes_cfg, "num_points": 256}, "train")
    plain = build_dataset({"name": "shapes", "num_points": 64, "protocol": {"train_fps": 64},
                           "samples_per_class": {"train": 2}, "val_fraction": 0.5}, "val")
    assert len(plain) == 13 and (plain.class_counts() == 1).all()
