"""The few-shot protocol (data.fewshot): episodes drawn from (ways, shots, fold) alone, disjoint
support and queries, labels remapped with names kept, fold 0 of 5w10s pinned on the shared
ModelNet40 files, and a training run on one episode."""
from __future__ import annotations

import numpy as np
import pytest

from any2point.data import data_options
from any2point.data.fewshot import FewShotConfig, draw_episode, fewshot_of
from any2point.data.options import as_dict
from any2point.errors import DataError
from any2point.evaluate import run_eval
from any2point.run.splits import load_eval_split, load_splits
from any2point.train import run_training
from ..data_files import MODELNET40_SHARED, compose_data, need_shared
from ..tiny_run import TINY, compose_config, metrics


def _labels(counts: list[int], seed: int = 0) -> np.ndarray:
    """Labels with ``counts[c]`` samples of class c, in a shuffled file order."""
    labels = np.repeat(np.arange(len(counts)), counts)
    return np.random.default_rng(seed).permutation(labels)


def _reference_order(candidates: np.ndarray, ways, shots, fold, part, cls=0) -> np.ndarray:
    """The documented rule, written out: candidates sorted by PCG64 raw outputs of
    SeedSequence([0xF3E7, ways, shots, fold, part, class])."""
    bits = np.random.PCG64(np.random.SeedSequence([0xF3E7, ways, shots, fold, part, cls]))
    keys = [bits.random_raw() for _ in candidates]  # one output per candidate, in order
    return np.array([c for _, c in sorted(zip(keys, candidates.tolist()))])


def test_episode_follows_the_documented_rule():
    train, test = _labels([30] * 12), _labels([25] * 12, seed=1)
    cfg = FewShotConfig(ways=4, shots=5, fold=7, queries=20)
    episode = draw_episode(train, test, 12, cfg)
    classes = np.sort(_reference_order(np.arange(12), 4, 5, 7, 0)[:4])
    assert episode.classes.tolist() == classes.tolist()
    for i, cls in enumerate(classes):
        rows = _reference_order(np.flatnonzero(train == cls), 4, 5, 7, 1, cls)
        assert episode.support[5 * i:5 * i + 5].tolist() == rows[:5].tolist()
        assert episode.val[20 * i:20 * i + 20].tolist() == rows[5:25].tolist()
        test_rows = _reference_order(np.flatnonzero(test == cls), 4, 5, 7, 2, cls)
        assert episode.test[20 * i:20 * i + 20].tolist() == test_rows[:20].tolist()


def test_draws_are_disjoint_complete_and_labelled():
    train, test = _labels([40] * 10), _labels([22] * 10, seed=3)
    cfg = FewShotConfig(ways=5, shots=10, fold=2, queries=20)
    e = draw_episode(train, test, 10, cfg)
    assert len(set(e.support)) == 50 and len(set(e.val)) == 100 and len(set(e.test)) == 100
    assert not set(e.support) & set(e.val)  # support never validates
    for rows, labels, per in ((e.support, train, 10), (e.val, train, 20), (e.test, test, 20)):
        assert sorted(np.unique(labels[rows], return_counts=True)[1]) == [per] * 5
        assert set(labels[rows]) == set(e.classes)
    mapping = e.label_map(10)
    assert mapping[e.classes].tolist() == [0, 1, 2, 3, 4] and (np.delete(mapping, e.classes) == -1).all()


def test_draws_depend_on_ways_shots_fold_only():
    train, test = _labels([40] * 10), _labels([22] * 10, seed=3)
    cfg = FewShotConfig(ways=5, shots=10, fold=0)
    first, again = draw_episode(train, test, 10, cfg), draw_episode(train.copy(), test.copy(), 10, cfg)
    assert all(np.array_equal(a, b) for a, b in zip(vars(first).values(), vars(again).values()))
    # support and validation do not depend on whether the data has a test split
    no_test = draw_episode(train, None, 10, cfg)
    assert np.array_equal(no_test.support, first.support) and np.array_equal(no_test.val, first.val)
    assert no_test.test is None
    # another fold, another setting: another episode
    others = [FewShotConfig(5, 10, 1), FewShotConfig(5, 20, 0), FewShotConfig(10, 10, 0)]
    for other in others:
        e = draw_episode(train, test, 10, other)
        assert not np.array_equal(e.support[:10], first.support[:10])


def test_run_seed_does_not_change_the_episode_and_test_queries_come_from_test():
    section = {**as_dict(compose_data("shapes")), "num_points": 64, "samples_per_class": {"train": 12, "test": 5},
               "fewshot": {"ways": 3, "shots": 4, "fold": 1, "queries": 5}}
    data = data_options(section)
    a, b = load_splits(data, seed=0), load_splits(data, seed=11)
    assert a.report == "test" and (len(a.train), len(a.val), len(a.test)) == (12, 15, 15)
    assert a.class_names == b.class_names and len(a.class_names) == 3
    for x, y in ((a.train, b.train), (a.val, b.val), (a.test, b.test)):
        assert np.array_equal(x._rows, y._rows) and np.array_equal(x.labels, y.labels)
    # queries are the held-out clouds themselves (evaluation draws no randomness from the seed)
    assert np.array_equal(a.test[0][0].numpy(), b.test[0][0].numpy())
    assert a.train.labels.tolist() == np.repeat([0, 1, 2], 4).tolist()
    assert np.bincount(a.test.labels).tolist() == [5, 5, 5] and np.bincount(a.val.labels).tolist() == [5, 5, 5]
    # names kept: the episode's classes, in the full list's order
    full = load_splits(data_options({k: v for k, v in section.items() if k != "fewshot"}), seed=0)
    assert [full.class_names.index(n) for n in a.class_names] == sorted(full.class_names.index(n)
                                                                       for n in a.class_names)
    assert load_eval_split(data, "auto", 0).split == "test" and len(load_eval_split(data, "train", 0)) == 12


@pytest.mark.parametrize("node, message", [
    ({"ways": 0, "shots": 10}, "data.fewshot.ways must be an integer >= 1"),
    ({"ways": 5, "shots": True}, "data.fewshot.shots must be an integer >= 1"),
    ({"ways": 5, "shots": 10, "fold": -1}, "data.fewshot.fold must be an integer >= 0"),
    ({"ways": 5, "shots": 10, "way": 5}, "unknown keys ['way']"),
    ([5, 10], "must be null or a mapping"),
    ({"ways": 5}, "data.fewshot needs shots"),
])
def test_bad_settings_are_refused_by_name(node, message):
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        fewshot_of({"fewshot": node})
    assert fewshot_of({"fewshot": None}) is None and fewshot_of({}) is None


def test_too_few_clouds_names_the_classes():
    train = _labels([40, 40, 12, 40])
    with pytest.raises(DataError, match=r"needs 4 classes with at least 30 training clouds.*\['c2'\]"):
        draw_episode(train, None, 4, FewShotConfig(ways=4, shots=10, queries=20), ["c0", "c1", "c2", "c3"])
    # with three ways the short class is never drawn
    e = draw_episode(train, None, 4, FewShotConfig(ways=3, shots=10, queries=20))
    assert e.classes.tolist() == [0, 1, 3]


def test_the_sweep_settings_compose():
    cfg = compose_config("train", ["experiment=fewshot", "data.fewshot.ways=10", "data.fewshot.shots=20",
                                   "data.fewshot.fold=9"])
    assert dict(cfg.data.fewshot) == {"ways": 10, "shots": 20, "fold": 9, "queries": 20}
    assert cfg.train.batch_size == 10 and cfg.data.name == "modelnet40"
    assert "fewshot" not in compose_config("train", []).data  # off by default


def test_fold0_5w10s_on_the_shared_modelnet40():
    root = need_shared(MODELNET40_SHARED)
    data = {**as_dict(compose_data("modelnet40", root)), "num_points": 1024, "protocol": {"train_fps": 1024},
            "cache": False, "fewshot": {"ways": 5, "shots": 10, "fold": 0, "queries": 20}}
    splits = load_splits(data_options(data), seed=0)
    # pinned: every machine draws this episode
    assert splits.class_names == ["cone", "curtain", "flower_pot", "sofa", "table"]
    assert int(splits.train._rows[0]) == 3443
    assert splits.test is None and splits.report == "val" and len(splits.val) == 100
    assert splits.train.labels.tolist() == np.repeat(np.arange(5), 10).tolist()


def test_a_training_run_on_one_episode(tmp_path):
    overrides = [o for o in TINY if not o.startswith("data.samples_per_class")] + [
        "data.samples_per_class.train=8", "data.samples_per_class.test=4", "train.batch_size=4",
        "+data.fewshot={ways:3,shots:2,fold:0,queries:4}"]
    m = run_training(compose_config("train", overrides), tmp_path / "run")
    assert m["classes"] == 3 and m["train_samples"] == 6 and m["split"] == "test" and m["test_samples"] == 12
    assert m["val_samples"] == 12 and metrics(tmp_path / "run")["oa"] == m["oa"]
    # the checkpoint keeps data.fewshot: evaluating it draws the same episode's test queries
    evaluated = run_eval(compose_config("eval", [f"checkpoint={tmp_path / 'run'}", "trainer.progress=false"]),
                         tmp_path / "eval")
    assert (evaluated["split"], evaluated["samples"], evaluated["oa"]) == ("test", 12, m["oa"])
