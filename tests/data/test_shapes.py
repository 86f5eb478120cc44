"""The procedural shapes dataset: classes, geometry, determinism, and that it is not trivial."""
from __future__ import annotations

import numpy as np
import pytest

from any2point.data import build_dataset
from any2point.data.shapes import SHAPES, ShapesOptions, generate_shapes, load_shapes
from ..data_files import compose_data


def _global_features(clouds: np.ndarray) -> np.ndarray:
    """Rotation-free summaries: sorted bounding-box extents, PCA spreads, radial mean and spread."""
    centred = clouds - clouds.mean(1, keepdims=True)
    cov = np.einsum("bpi,bpj->bij", centred, centred) / clouds.shape[1]
    spreads = np.sqrt(np.sort(np.linalg.eigvalsh(cov), axis=1))
    extents = np.sort(clouds.max(1) - clouds.min(1), axis=1)
    radius = np.linalg.norm(centred, axis=-1)
    return np.concatenate([extents, spreads, radius.mean(1, keepdims=True), radius.std(1, keepdims=True)], axis=1)


def _nearest_centroid_accuracy(train_x, train_y, test_x, test_y) -> float:
    mean, std = train_x.mean(0), train_x.std(0) + 1e-9
    train_x, test_x = (train_x - mean) / std, (test_x - mean) / std
    centroids = np.stack([train_x[train_y == c].mean(0) for c in np.unique(train_y)])
    predicted = np.argmin(((test_x[:, None] - centroids[None]) ** 2).sum(-1), axis=1)
    return float((predicted == test_y).mean())


def test_every_class_present_in_the_unit_sphere():
    cfg = compose_data("shapes", samples_per_class={"train": 8, "test": 4})
    train, test = build_dataset(cfg, "train"), build_dataset(cfg, "test")
    assert len(SHAPES) >= 10 and train.class_names == list(SHAPES)
    assert (train.class_counts() == 8).all() and (test.class_counts() == 4).all()
    for ds in (train, test):
        assert ds._pools.shape[1] == ds.protocol.pool_size(ds.split)
        norms = np.linalg.norm(ds._pools, axis=-1).max(axis=1)
        np.testing.assert_allclose(norms, 1.0, atol=1e-5)
        np.testing.assert_allclose(ds._pools.mean(axis=1), 0.0, atol=1e-5)
    points = np.stack([test[i][0].numpy() for i in range(len(test))])
    assert points.shape == (len(test), cfg.num_points, 3) and np.linalg.norm(points, axis=-1).max() <= 1 + 1e-5


def test_generation_is_deterministic_per_seed_and_splits_differ():
    cfg = {"name": "shapes", "samples_per_class": {"train": 5, "test": 5}, "seeds": {"train": 3, "test": 4}}
    a, b = load_shapes(ShapesOptions(**cfg), "train", 256), load_shapes(ShapesOptions(**cfg), "train", 256)
    np.testing.assert_array_equal(a.pools, b.pools)
    assert not np.allclose(a.pools, load_shapes(ShapesOptions(**cfg), "test", 256).pools)
    other = load_shapes(ShapesOptions(**{**cfg, "seeds": {"train": 5}}), "train", 256)
    assert not np.allclose(a.pools, other.pools)
    subset = load_shapes(ShapesOptions(**{**cfg, "class_names": ["torus", "cube"]}), "train", 256)
    assert subset.class_names == ["torus", "cube"]
    np.testing.assert_array_equal(subset.pools[:5], a.pools[list(SHAPES).index("torus") * 5:][:5])
    with pytest.raises(ValueError, match="not procedural shapes"):
        load_shapes(ShapesOptions(**{**cfg, "class_names": ["teapot"]}), "train", 256)


def test_shapes_are_not_separable_by_simple_global_statistics():
    """Nearest centroid on rotation-free global statistics (box extents, PCA spreads, radii)
    does far better than chance, so the classes are real, but far from 100 %: the
    near-duplicate classes and the random pose, anisotropy and noise leave work for a model."""
    cfg = {"name": "shapes", "samples_per_class": {"train": 60, "test": 30}}
    train, test = load_shapes(ShapesOptions(**cfg), "train", 512), load_shapes(ShapesOptions(**cfg), "test", 512)
    chance = 1.0 / len(train.class_names)
    boxes = _nearest_centroid_accuracy(np.sort(np.ptp(train.pools, axis=1), 1), train.labels,
                                       np.sort(np.ptp(test.pools, axis=1), 1), test.labels)
    stats = _nearest_centroid_accuracy(_global_features(train.pools), train.labels,
                                       _global_features(test.pools), test.labels)
    assert boxes < 0.5, boxes
    assert 3 * chance < stats < 0.8, stats


def test_generate_shapes_shapes_and_dtype():
    rng = np.random.default_rng(0)
    for name in SHAPES:
        clouds = generate_shapes(name, 3, 100, rng)
        assert clouds.shape == (3, 100, 3) and clouds.dtype == np.float32 and np.isfinite(clouds).all()
    assert generate_shapes("cube", 0, 100, rng).shape == (0, 100, 3)
