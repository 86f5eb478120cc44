"""any2point-predict: top-k per file for every reader format, batched, JSON lines, and a bad
file reported without losing the others."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import any2point
from any2point.checkpoint import save_checkpoint
from any2point.predict import main
from ..data_files import MESHES_SHARED, need_shared, write_off, write_ply, write_sample_file
from ..tiny_run import run_module

MODELNET10 = ["bathtub", "bed", "chair", "desk", "dresser", "monitor", "night_stand", "sofa", "table", "toilet"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A ModelNet10-labelled checkpoint of a tiny model (untrained: the tests check the plumbing)."""
    run = tmp_path_factory.mktemp("run")
    source = {"name": "tiny_1d", "pretrained": False, "weights": None, "options": {}}
    torch.manual_seed(0)
    model = any2point.create_model("tiny_1d", len(MODELNET10), pretrained=False).eval()
    save_checkpoint(model, run / "checkpoint", source=source, class_names=MODELNET10, num_points=128)
    return run


def _lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def test_every_shared_mesh_gets_a_class(checkpoint, capsys):
    meshes = sorted(str(p) for p in need_shared(MESHES_SHARED).glob("*.off"))
    assert len(meshes) >= 10
    status = main([str(checkpoint), *meshes, "--json", "--topk", "3", "--batch-size", "4"])
    out = _lines(capsys.readouterr().out)
    assert status == 0 and [o["file"] for o in out] == meshes
    for o in out:
        probs = [t["prob"] for t in o["topk"]]
        assert len(o["topk"]) == 3 and all(t["label"] in MODELNET10 for t in o["topk"])
        assert probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1 + 1e-6


def test_a_corrupt_file_is_reported_and_the_others_still_predicted(checkpoint, tmp_path):
    good = sorted(str(p) for p in need_shared(MESHES_SHARED).glob("*.off"))[:2]
    corrupt = tmp_path / "broken.off"
    corrupt.write_text("OFF\n4 2 0\n0 0 0\n1 0 0\n")  # promises 4 vertices and 2 faces, holds 2 vertices
    files = [good[0], str(corrupt), good[1]]
    done = run_module("any2point.predict", [str(checkpoint), *files, "--json"], cwd=tmp_path)
    assert done.returncode == 1, done.stderr
    out = _lines(done.stdout)
    assert [o["file"] for o in out] == files
    assert "topk" in out[0] and "topk" in out[2] and "broken.off" in out[1]["error"]
    assert "1 of 3 files failed" in done.stderr


def test_reader_formats_and_batching(checkpoint, tmp_path, capsys):
    rng = np.random.default_rng(0)
    cloud = rng.normal(size=(300, 3))
    files = [tmp_path / "a.npy", tmp_path / "b.xyz", tmp_path / "c.ply", tmp_path / "d.off"]
    np.save(files[0], cloud)
    np.savetxt(files[1], cloud)
    write_ply(files[2], cloud)
    write_off(files[3], np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1.0]]), [[0, 1, 2], [0, 1, 3], [0, 2, 3],
                                                                                   [1, 2, 3]])
    args = [str(checkpoint), *map(str, files), "--json", "--topk", "10"]
    assert main(args + ["--batch-size", "1"]) == 0
    one = _lines(capsys.readouterr().out)
    assert main(args + ["--batch-size", "8"]) == 0
    batched = _lines(capsys.readouterr().out)
    for a, b in zip(one, batched):  # a prediction does not depend on the other files of its batch
        pa = {t["label"]: t["prob"] for t in a["topk"]}
        pb = {t["label"]: t["prob"] for t in b["topk"]}
        assert pa.keys() == pb.keys() and all(abs(pa[k] - pb[k]) < 1e-5 for k in pa)


def test_text_output_and_an_unusable_checkpoint(checkpoint, tmp_path, capsys):
    mesh = sorted(need_shared(MESHES_SHARED).glob("*.off"))[0]
    assert main([str(checkpoint), str(mesh), "--topk", "2"]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith(f"{mesh}: ") and line.count("%)") == 2
    assert main([str(tmp_path / "nowhere"), str(mesh)]) == 2
    assert "cannot use checkpoint" in capsys.readouterr().err


def test_every_supported_format_is_predicted(checkpoint, tmp_path, capsys):
    """One file per extension, written by the format's own library where there is one; the
    point formats hold the same float32 cloud, so they must get the same probabilities."""
    from any2point.data import SUPPORTED_EXTENSIONS

    cloud = np.random.default_rng(5).normal(size=(300, 3)).astype(np.float32)
    files = []
    for ext in SUPPORTED_EXTENSIONS:
        path = tmp_path / f"sample{ext}"
        if ext == ".ply":  # a PLY point cloud (write_sample_file writes a PLY mesh)
            write_ply(path, cloud)
        else:
            write_sample_file(ext, path, cloud)
        files.append(str(path))
    assert main([str(checkpoint), *files, "--json", "--topk", "10"]) == 0
    out = {o["file"].rsplit(".", 1)[1]: o for o in _lines(capsys.readouterr().out)}
    assert sorted(out) == sorted(ext[1:] for ext in SUPPORTED_EXTENSIONS)
    probs = {ext: {t["label"]: t["prob"] for t in o["topk"]} for ext, o in out.items()}
    for ext in ("npz", "h5", "hdf5", "ply", "pcd", "txt", "xyz", "pts", "csv"):  # lossless copies of the .npy cloud
        assert probs[ext].keys() == probs["npy"].keys(), ext
        assert all(abs(probs[ext][k] - probs["npy"][k]) < 1e-5 for k in probs["npy"]), ext
