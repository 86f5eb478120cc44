"""Hostile-review findings: hostile files (YAML aliases, deep nesting, wide point arrays, poisoned
cache entries, PLY counts that dodge the size check, glTF buffers naming FIFOs, incomplete
optimizer states) are refused or skipped with a message naming the file, never a hang or a crash."""
from __future__ import annotations

import json
import time

import pytest

from any2point.report import main as report_main
from any2point.report.runs import MAX_SETTINGS, find_runs


def _metrics_run(root, name, config_text=None, metrics_text=None):
    d = root / name
    d.mkdir(parents=True)
    (d / "metrics.json").write_text(metrics_text or json.dumps(
        {"oa": 80.0, "macc": 70.0, "source": "minilm", "data": "modelnet40", "peft_config": "any2point",
         "split": "val"}))
    if config_text is not None:
        (d / ".hydra").mkdir()
        (d / ".hydra" / "config.yaml").write_text(config_text)
    return d


# -- 1. any2point-report -------------------------------------------------------------------------------------------

_LAUGHS = "a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{b}: &{b} [*{a}, *{a}, *{a}, *{a}, *{a}, *{a}, *{a}, *{a}, *{a}, *{a}]\n"
    for a, b in zip("abcdefgh", "bcdefghi"))


def test_report_refuses_yaml_aliases_quickly(tmp_path, capsys):
    bad = _metrics_run(tmp_path, "laughs", config_text=_LAUGHS)
    _metrics_run(tmp_path, "good", config_text="seed: 0\npeft:\n  rank: 4\n")
    started = time.monotonic()
    assert report_main([str(tmp_path)]) == 0
    assert time.monotonic() - started < 10  # the expanded file has 10**9 leaves
    err = capsys.readouterr().err
    assert f"skipped {bad / '.hydra' / 'config.yaml'}: not valid YAML" in err and "aliases" in err


def test_report_caps_the_number_of_settings(tmp_path):
    keys = "".join(f"k{i}: {i}\n" for i in range(MAX_SETTINGS + 1))
    bad = _metrics_run(tmp_path, "wide", config_text=keys)
    runs, problems = find_runs(tmp_path)
    assert runs == [] and len(problems) == 1
    assert str(bad / ".hydra" / "config.yaml") in problems[0] and f"more than {MAX_SETTINGS} settings" in problems[0]


@pytest.mark.parametrize("where", ["config", "metrics", "metrics_field"])
def test_deeply_nested_files_are_bad_rows(tmp_path, capsys, where):
    depth = 100_000
    if where == "config":
        bad = _metrics_run(tmp_path, "deep", config_text="[" * depth + "]" * depth + "\n")
    elif where == "metrics":
        bad = _metrics_run(tmp_path, "deep", metrics_text='{"oa": 80, "macc": 70, "x": ' + "[" * depth
                           + "]" * depth + "}")
    else:  # valid JSON that json.loads accepts, nested too deeply for json.dumps of a settings field
        depth = 5_000
        bad = _metrics_run(tmp_path, "deep", metrics_text='{"oa": 80, "macc": 70, "source": ' + "[" * depth
                           + "]" * depth + "}")
    _metrics_run(tmp_path, "good")
    assert report_main([str(tmp_path)]) == 0
    err = capsys.readouterr().err
    assert f"warning: skipped {bad}" in err and "nested too deeply" in err


# -- 3. cache entries and the cache folder ---------------------------------------------------------------------------

import logging  # noqa: E402

import numpy as np  # noqa: E402

from any2point.data.file_pools import pool_files  # noqa: E402
from any2point.data.fps_cache import (FPS_VERSION, ArrayCache, cached_epoch_pools, cached_fps_indices,  # noqa: E402
                                      fps_indices, fps_starts)
from any2point.data.options import DataOptions, cache_of  # noqa: E402


def _clouds(count=3, size=40):
    return np.random.default_rng(0).standard_normal((count, size, 3)).astype(np.float32)


@pytest.mark.parametrize("poison", [
    lambda good: -np.ones_like(good, dtype=np.int64),  # negative: numpy would wrap them silently
    lambda good: good.astype(np.float64) + 0.5,  # float indices
    lambda good: np.full_like(good, 40),  # one past the end
])
def test_poisoned_fps_cache_entries_are_recomputed(tmp_path, caplog, poison):
    clouds, n = _clouds(), 8
    cache = ArrayCache(tmp_path)
    reference = fps_indices(clouds, n)
    key = "k"
    entry = f"{key}-N{clouds.shape[1]}-n{n}-{FPS_VERSION}"
    np.save(cache.path(entry), poison(reference))
    with caplog.at_level(logging.WARNING):
        got = cached_fps_indices(clouds, n, cache, key)
    np.testing.assert_array_equal(got, reference)
    assert f"ignoring cache entry {cache.path(entry)}" in caplog.text
    np.testing.assert_array_equal(np.load(cache.path(entry)), reference)  # rewritten


def test_poisoned_epoch_pool_entries_are_recomputed(tmp_path, caplog):
    clouds, n = _clouds(), 8
    cache = ArrayCache(tmp_path)
    first = cached_epoch_pools(clouds, n, 2, cache)
    entries = sorted(tmp_path.glob("pools-*-p1-*.npy"))
    assert len(entries) == 1
    np.save(entries[0], -np.ones((clouds.shape[0], n), dtype=np.int64))
    with caplog.at_level(logging.WARNING):
        again = cached_epoch_pools(clouds, n, 2, cache)
    np.testing.assert_array_equal(again, first)
    np.testing.assert_array_equal(again[1], fps_indices(clouds, n, fps_starts(clouds.shape[0], clouds.shape[1], 1)))
    assert "ignoring cache entry" in caplog.text and "expected [0, 40)" in caplog.text


@pytest.mark.parametrize("poison", [
    np.full((16, 3), np.nan, dtype=np.float32),
    np.full((16, 3), np.inf, dtype=np.float32),
    np.arange(48, dtype=np.int64).reshape(16, 3),
    np.zeros((0, 3), dtype=np.float32),
])
def test_poisoned_point_pool_entries_are_recomputed(tmp_path, caplog, poison):
    cloud = np.random.default_rng(1).standard_normal((64, 3)).astype(np.float32)
    source = tmp_path / "cloud.txt"
    np.savetxt(source, cloud)
    cache_dir = tmp_path / "cache"

    def pools():
        return pool_files([source], lambda p: np.loadtxt(p, dtype=np.float32), pool_size=16, presample=16,
                          cache=ArrayCache(cache_dir), recipe="txt")[0]

    reference = pools()
    [entry] = cache_dir.glob("*.npy")
    np.save(entry, poison)
    with caplog.at_level(logging.WARNING):
        again = pools()
    assert np.isfinite(again).all()
    np.testing.assert_array_equal(again, reference)
    assert f"ignoring cache entry {entry}" in caplog.text


def test_an_unusable_cache_folder_turns_caching_off(monkeypatch, caplog):
    monkeypatch.setenv("ANY2POINT_CACHE", "/proc/nope")
    with caplog.at_level(logging.WARNING):
        cache = cache_of(DataOptions(cache=True))
    assert not cache.enabled
    assert "/proc/nope" in caplog.text and "without caching" in caplog.text


# -- 4. PLY element counts ------------------------------------------------------------------------------------------

from any2point.data import read_points  # noqa: E402
from any2point.errors import DataError  # noqa: E402


def _binary_ply(count_line: bytes, n: int = 2000, nl: bytes = b"\n", before: bytes = b"") -> bytes:
    lines = [b"ply", b"format binary_little_endian 1.0", *([before] if before else []), count_line,
             b"property float x", b"property float y", b"property float z", b"end_header"]
    data = np.random.default_rng(2).standard_normal((n, 3)).astype("<f4").tobytes()
    return nl.join(lines) + nl + data


@pytest.mark.parametrize("name, raw", [
    ("plus.ply", _binary_ply(b"element vertex +2000")),
    ("vtab.ply", _binary_ply(b"element\x0bvertex\x0b2000")),
    ("formfeed.ply", _binary_ply(b"element vertex 2000\x0c")),
    ("cr_newlines.ply", _binary_ply(b"element vertex 2000", nl=b"\r")),
    ("comment_first.ply", _binary_ply(b"element vertex 2000", before=b"comment end_header")),
])
def test_ply_counts_plyfile_reads_are_all_checked(tmp_path, name, raw):
    path = tmp_path / name
    path.write_bytes(raw)
    with pytest.raises(DataError, match="2,000 declared, above data.max_points_per_file=1,000") as info:
        read_points(path, num_points=16, max_points=1000)
    assert name in str(info.value)
    assert len(read_points(path, max_points=2000)) == 2000  # genuine under a larger limit


@pytest.mark.parametrize("count", [b"2_000", b"-1", b"0x10", b"+-3"])
def test_ply_counts_that_are_not_plain_integers_are_refused(tmp_path, count):
    path = tmp_path / "odd.ply"
    path.write_bytes(_binary_ply(b"element vertex " + count, n=3))
    with pytest.raises(DataError, match="COUNT a non-negative integer") as info:
        read_points(path, num_points=16)
    assert "odd.ply" in str(info.value)


# -- 2. columns of point arrays -------------------------------------------------------------------------------------

import io  # noqa: E402
import zipfile  # noqa: E402

import h5py  # noqa: E402

from any2point.data import read_file  # noqa: E402
from any2point.data.formats.records import MAX_COLUMNS, VALUES_PER_POINT  # noqa: E402


def _wide(rows=2000, cols=MAX_COLUMNS + 1):
    return np.random.default_rng(3).standard_normal((rows, cols)).astype(np.float32)


def _npz_bytes(**members) -> bytes:
    stream = io.BytesIO()
    np.savez_compressed(stream, **members)
    return stream.getvalue()


@pytest.mark.parametrize("ext", [".npy", ".npz", ".h5"])
def test_arrays_wider_than_max_columns_are_refused(tmp_path, ext):
    path = tmp_path / f"wide{ext}"
    array = _wide()
    if ext == ".npy":
        np.save(path, array)
    elif ext == ".npz":
        path.write_bytes(_npz_bytes(points=array))
    else:
        with h5py.File(path, "w") as f:
            f["data"] = array
    with pytest.raises(DataError, match=f"{MAX_COLUMNS + 1} values per row; expected at most {MAX_COLUMNS}") as info:
        read_points(path, num_points=16)
    assert path.name in str(info.value)


def test_rows_times_columns_is_checked_against_the_limit(tmp_path):
    path = tmp_path / "many.npy"
    np.save(path, _wide(rows=1000, cols=40))  # 1000 points <= limit, 40,000 values > 6 x 5,000
    with pytest.raises(DataError, match=f"above {VALUES_PER_POINT} x data.max_points_per_file=30,000"):
        read_points(path, max_points=5000)
    assert read_points(path, max_points=7000).shape == (1000, 3)


def test_npz_member_shape_is_refused_before_decompressing(tmp_path):
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "<f4", "fortran_order": False, "shape": (4000, 1000)})
    stream = io.BytesIO()
    with zipfile.ZipFile(stream, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("points.npy", header.getvalue() + b"\0" * 64)  # the data itself is missing
    path = tmp_path / "declared.npz"
    path.write_bytes(stream.getvalue())
    with pytest.raises(DataError, match="1,000 values per row"):
        read_points(path)


def test_npz_mesh_faces_wider_than_max_columns_are_refused(tmp_path):
    vertices = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1]], dtype=np.float32)
    faces = np.zeros((4, 100), dtype=np.int64)
    faces[:, :3] = [[0, 1, 2], [0, 1, 3], [0, 2, 3], [1, 2, 3]]
    path = tmp_path / "faces.npz"
    path.write_bytes(_npz_bytes(vertices=vertices, faces=faces))
    with pytest.raises(DataError, match="'faces' has 100 values per row"):
        read_file(path)


def test_hdf5_reads_only_the_xyz_columns(tmp_path, monkeypatch):
    array = _wide(rows=500, cols=10)
    path = tmp_path / "cloud.h5"
    with h5py.File(path, "w") as f:
        f["data"] = array
    widths = []
    original = h5py.Dataset.__getitem__

    def recording(self, selection, *args, **kwargs):
        out = original(self, selection, *args, **kwargs)
        widths.append(np.shape(out)[-1] if np.ndim(out) else 0)
        return out

    monkeypatch.setattr(h5py.Dataset, "__getitem__", recording)
    cloud = read_file(path)
    np.testing.assert_allclose(cloud.points, array[:, :3].astype(np.float64))
    assert widths and max(widths) <= 3


# -- 5. glTF buffer URIs --------------------------------------------------------------------------------------------

import os  # noqa: E402
import threading  # noqa: E402

import trimesh  # noqa: E402


def _gltf_with_external_buffer(folder, uri=None):
    """An icosphere as model.gltf plus its buffer files, every buffer's URI replaced by ``uri`` when
    given; returns (gltf path, first buffer file name, the mesh)."""
    mesh = trimesh.creation.icosphere(subdivisions=1)
    files = trimesh.Scene(mesh).export(file_type="gltf")
    buffer = next(name for name in files if name.endswith(".bin"))
    for name, data in files.items():
        (folder / name).write_bytes(data)
    path = folder / "model.gltf"
    if uri is not None:
        document = json.loads(path.read_text())
        for entry in document["buffers"]:
            entry["uri"] = uri
        path.write_text(json.dumps(document))
    return path, buffer, mesh


def _read_within(path, seconds=20):
    """read_file in a thread, so a hang fails the test instead of blocking it."""
    outcome = {}

    def target():
        try:
            outcome["value"] = read_file(path)
        except BaseException as exc:  # noqa: BLE001 - handed back to the test
            outcome["error"] = exc

    worker = threading.Thread(target=target, daemon=True)
    worker.start()
    worker.join(seconds)
    assert not worker.is_alive(), f"reading {path} hung"
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


def test_gltf_with_an_external_buffer_still_reads(tmp_path):
    path, _, mesh = _gltf_with_external_buffer(tmp_path)
    loaded = _read_within(path)
    assert len(loaded.vertices) == len(mesh.vertices) and len(loaded.faces) == len(mesh.faces)


def test_gltf_buffer_naming_a_fifo_is_a_data_error(tmp_path):
    path, _, _ = _gltf_with_external_buffer(tmp_path, uri="pipe.bin")
    os.mkfifo(tmp_path / "pipe.bin")  # opening it for reading would wait for a writer forever
    with pytest.raises(DataError, match="'pipe.bin'.*not a regular file") as info:
        _read_within(path)
    assert "model.gltf" in str(info.value)


@pytest.mark.parametrize("uri", ["/etc/hostname", "../outside.bin", "sub/../../outside.bin", "%2e%2e/outside.bin",
                                 "file:///etc/hostname", "link.bin"])
def test_gltf_buffer_outside_the_folder_is_a_data_error(tmp_path, uri):
    folder = tmp_path / "models"
    folder.mkdir()
    path, buffer, _ = _gltf_with_external_buffer(folder, uri=uri)
    (tmp_path / "outside.bin").write_bytes((folder / buffer).read_bytes())
    (folder / "link.bin").symlink_to(tmp_path / "outside.bin")
    with pytest.raises(DataError, match="glTF URI") as info:
        _read_within(path)
    assert "model.gltf" in str(info.value) and repr(uri) in str(info.value)


# -- 6. completeness of a resumed optimizer state --------------------------------------------------------------------

import torch  # noqa: E402
from safetensors import safe_open  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

from any2point import runtime  # noqa: E402
from any2point.errors import CheckpointError  # noqa: E402
from any2point.run.resume import read_training_state, restore_training_state, save_training_state  # noqa: E402


def _live(amsgrad=False):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, amsgrad=amsgrad)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1)
    return model, optimizer, scheduler


def _step(model, optimizer):
    optimizer.zero_grad()
    model(torch.linspace(-1, 1, 15).reshape(5, 3)).square().sum().backward()
    optimizer.step()


def _saved_state(path, amsgrad=False):
    model, optimizer, scheduler = _live(amsgrad)
    _step(model, optimizer)
    save_training_state(path, epoch=1, model=model.state_dict(), optimizer=optimizer.state_dict(),
                        scheduler=scheduler.state_dict(), rng=[runtime.rng_state()],
                        best={"oa": None, "macc": None, "epoch": None}, seconds=1.0, fingerprint={})
    return model, optimizer


def _rewrite(path, edit):
    with safe_open(str(path), framework="pt") as f:
        metadata, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    edit(tensors)
    save_file(tensors, str(path), metadata=metadata)


def _restore(path, amsgrad=False):
    model, optimizer, scheduler = _live(amsgrad)
    restore_training_state(read_training_state(path), model=model, model_keys=set(model.state_dict()),
                           optimizer=optimizer, scheduler=scheduler, rank=0)
    return model, optimizer


def test_a_complete_optimizer_state_resumes_to_the_same_step(tmp_path):
    path = tmp_path / "last.safetensors"
    model, optimizer = _saved_state(path)
    resumed, resumed_optimizer = _restore(path)
    _step(model, optimizer)
    _step(resumed, resumed_optimizer)
    for a, b in zip(model.parameters(), resumed.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize("edit, message", [
    (lambda t: t.pop("optimizer/0/exp_avg_sq"), r"missing \['exp_avg_sq'\]"),
    (lambda t: t.pop("optimizer/3/step"), r"missing \['step'\]"),
    (lambda t: t.update({"optimizer/1/momentum_buffer": torch.zeros(4)}), r"unexpected \['momentum_buffer'\]"),
    (lambda t: t.update({"optimizer/2/step": torch.ones(2, 4)}), r"'optimizer/2/step' has shape \(2, 4\)"),
    (lambda t: t.update({"optimizer/0/exp_avg": torch.zeros(4, 3, dtype=torch.int64)}),
     r"'optimizer/0/exp_avg' has dtype torch.int64, expected floating point"),
])
def test_an_incomplete_or_foreign_optimizer_entry_is_refused(tmp_path, edit, message):
    path = tmp_path / "last.safetensors"
    _saved_state(path)
    _rewrite(path, edit)
    with pytest.raises(CheckpointError, match=message) as info:
        _restore(path)
    assert str(path) in str(info.value) and "train.resume=false" in str(info.value)


def test_the_expected_names_follow_the_optimizer_settings(tmp_path):
    """With amsgrad, AdamW keeps max_exp_avg_sq too: a state saved without it is refused."""
    path = tmp_path / "last.safetensors"
    _saved_state(path, amsgrad=False)
    with pytest.raises(CheckpointError, match=r"missing \['max_exp_avg_sq'\]"):
        _restore(path, amsgrad=True)
    _saved_state(path, amsgrad=True)
    _restore(path, amsgrad=True)


def test_a_point_pool_entry_with_more_points_than_presampled_is_recomputed(tmp_path, caplog):
    cloud = np.random.default_rng(1).standard_normal((64, 3)).astype(np.float32)
    source = tmp_path / "cloud.txt"
    np.savetxt(source, cloud)
    cache = ArrayCache(tmp_path / "cache")
    read = lambda p: np.loadtxt(p, dtype=np.float32)  # noqa: E731
    reference = pool_files([source], read, pool_size=16, presample=16, cache=cache, recipe="txt")[0]
    [entry] = (tmp_path / "cache").glob("*.npy")
    np.save(entry, np.zeros((10_000, 3), dtype=np.float32))
    with caplog.at_level(logging.WARNING):
        again = pool_files([source], read, pool_size=16, presample=16, cache=cache, recipe="txt")[0]
    np.testing.assert_array_equal(again, reference)
    assert "10000 points, expected at most 16" in caplog.text


def test_text_rows_wider_than_max_columns_are_refused(tmp_path):
    path = tmp_path / "wide.xyz"
    np.savetxt(path, _wide(rows=200, cols=MAX_COLUMNS + 1))
    with pytest.raises(DataError, match=f"{MAX_COLUMNS + 1} values per row") as info:
        read_points(path)
    assert "wide.xyz" in str(info.value)
