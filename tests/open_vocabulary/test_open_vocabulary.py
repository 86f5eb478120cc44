"""Open vocabulary: ``any2point-predict --labels`` ranks exactly the given labels,
``any2point-retrieve`` ranks files for a sentence (embeddings cached by file content), and both
refuse, in one line, a checkpoint without the contrastive head and empty input."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import any2point
import any2point.predict as predict_module
import any2point.retrieve as retrieve_module
from any2point.checkpoint import load_checkpoint, save_checkpoint
from any2point.data import read_points
from any2point.predict import load_for_command, main as predict
from any2point.retrieve import main as retrieve
from ..data_files import write_sample_file

SEEN = ["chair", "bed", "sofa", "table", "desk", "toilet", "bathtub"]
UNSEEN = ["monitor", "dresser", "night_stand"]
SOURCE = {"name": "tiny_1d", "pretrained": False, "weights": None, "options": {}}
LABELS = ["chair", "a floor lamp", "toilet"]


@pytest.fixture(scope="module")
def contrastive(tmp_path_factory):
    """A zero-shot checkpoint of a tiny untrained model (the tests check the plumbing)."""
    run = tmp_path_factory.mktemp("contrastive")
    torch.manual_seed(0)
    model = any2point.create_model("tiny_1d", len(SEEN), pretrained=False, head={"name": "contrastive", "hidden": []})
    model.head.bind_classes(SEEN)
    save_checkpoint(model.eval(), run / "checkpoint", source=SOURCE, class_names=SEEN, num_points=128,
                    extra={"unseen_class_names": UNSEEN})
    return run


@pytest.fixture(scope="module")
def classifier(tmp_path_factory):
    run = tmp_path_factory.mktemp("classifier")
    model = any2point.create_model("tiny_1d", len(SEEN), pretrained=False).eval()
    save_checkpoint(model, run / "checkpoint", source=SOURCE, class_names=SEEN, num_points=128)
    return run


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    """Four small files of three formats: distinct clouds."""
    folder = tmp_path_factory.mktemp("shapes")
    (folder / "nested").mkdir()
    rng = np.random.default_rng(3)
    line = np.c_[np.linspace(0, 1, 150), rng.normal(scale=0.05, size=(150, 2))]
    files = [write_sample_file(".off", folder / "sphere.off"),
             write_sample_file(".npy", folder / "blob.npy", rng.normal(size=(200, 3)).astype(np.float32)),
             write_sample_file(".xyz", folder / "nested" / "line.xyz", line),
             write_sample_file(".ply", folder / "flat.ply", np.c_[rng.normal(size=(200, 2)), np.zeros(200)])]
    return folder, sorted(str(f) for f in files)


def _lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def test_labels_are_ranked_exactly_and_match_the_head_scoring_them(contrastive, shapes, capsys):
    _, files = shapes
    assert predict([str(contrastive), *files, "--labels", ",".join(LABELS), "--json"]) == 0
    out = _lines(capsys.readouterr().out)
    loaded = load_checkpoint(contrastive)
    for o, f in zip(out, files):
        assert o["file"] == f and sorted(t["label"] for t in o["topk"]) == sorted(LABELS)
        cloud = torch.from_numpy(read_points(f, num_points=128, seed=0))[None]
        with torch.no_grad(), loaded.model.head.classes(LABELS):
            expected = loaded.model(cloud).softmax(dim=1)[0]
        for t in o["topk"]:
            assert t["prob"] == pytest.approx(float(expected[LABELS.index(t["label"])]), abs=1e-5)
    labels_file = contrastive / "labels.txt"
    labels_file.write_text("\ufeff" + "\n".join(LABELS) + "\n\n")
    assert predict([str(contrastive), *files, "--labels-file", str(labels_file), "--json"]) == 0
    assert _lines(capsys.readouterr().out) == out


def test_without_labels_a_zero_shot_checkpoint_ranks_its_seen_and_unseen_classes(contrastive, shapes, capsys):
    _, files = shapes
    assert predict([str(contrastive), files[0], "--json", "--topk", "20"]) == 0
    (o,) = _lines(capsys.readouterr().out)
    assert sorted(t["label"] for t in o["topk"]) == sorted(SEEN + UNSEEN)


@pytest.mark.parametrize("args, message", [
    (["--labels", ""], "empty list of labels"),
    (["--labels", "chair,,toilet"], "entry 1 is blank"),
    (["--labels", "chair,chair"], "'chair' is given twice"),
    (["--labels-file", "/nonexistent/labels.txt"], "no such file"),
])
def test_bad_labels_get_one_line_and_status_2(contrastive, shapes, capsys, args, message):
    assert predict([str(contrastive), shapes[1][0], *args]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err


def test_a_classifier_checkpoint_refuses_labels_and_retrieval_in_one_line(classifier, shapes, capsys):
    folder, files = shapes
    assert predict([str(classifier), files[0], "--labels", "chair,lamp"]) == 2
    err = capsys.readouterr().err.strip()
    assert "trained with the classifier head" in err and "model.head.name=contrastive" in err and "\n" not in err
    assert retrieve([str(classifier), str(folder), "--text", "a lamp", "--no-cache"]) == 2
    err = capsys.readouterr().err.strip()
    assert "trained with the classifier head" in err and "\n" not in err


def test_load_for_command_prints_one_line_and_returns_none_for_an_unusable_checkpoint(contrastive, classifier,
                                                                                       shapes, tmp_path, capsys,
                                                                                       monkeypatch):
    """The load both commands share: a missing or damaged checkpoint, or a classifier asked for
    text, is one line naming the command and the checkpoint; the head is checked before loading."""
    kw = dict(weights=None, text_weights=None, device="cpu")
    damaged = tmp_path / "damaged"
    damaged.mkdir()
    (damaged / "checkpoint.json").write_text("{not json")
    for path in (tmp_path / "nowhere", damaged):
        assert load_for_command("any2point-retrieve", str(path), **kw) is None
        err = capsys.readouterr().err
        assert err.startswith(f"any2point-retrieve: cannot use checkpoint {path}: ") and err.count("\n") == 1
    folder, _ = shapes
    assert retrieve([str(tmp_path / "nowhere"), str(folder), "--text", "a lamp", "--no-cache"]) == 2
    assert capsys.readouterr().err.startswith(f"any2point-retrieve: cannot use checkpoint {tmp_path / 'nowhere'}: ")

    def no_loading(*a, **k):
        raise AssertionError("the model was loaded before its head was checked")

    monkeypatch.setattr(predict_module, "load_checkpoint", no_loading)
    assert load_for_command("any2point-predict", str(classifier), open_vocabulary_for="--labels", **kw) is None
    err = capsys.readouterr().err
    assert err.startswith(f"any2point-predict: cannot use checkpoint {classifier}: ") and err.count("\n") == 1
    assert "--labels needs a run trained with model.head.name=contrastive" in err
    monkeypatch.undo()
    loaded = load_for_command("any2point-predict", str(contrastive), open_vocabulary_for="--labels", **kw)
    assert loaded.class_names == SEEN and loaded.model.head.open_vocabulary and capsys.readouterr().err == ""


def test_retrieve_ranks_a_folder_by_cosine_with_the_sentence(contrastive, shapes, tmp_path, capsys):
    folder, files = shapes
    broken = tmp_path / "broken.off"
    broken.write_text("OFF\n4 2 0\n0 0 0\n1 0 0\n")
    args = [str(contrastive), str(folder), str(broken), "--text", "a tall lamp", "--topk", "3", "--json",
            "--cache-dir", str(tmp_path / "cache"), "--no-progress"]
    assert retrieve(args) == 1  # one file failed; the others are ranked
    *errors, result = _lines(capsys.readouterr().out)
    assert [e["file"] for e in errors] == [str(broken)] and "broken.off" in errors[0]["error"]
    assert result["text"] == "a tall lamp" and len(result["topk"]) == 3
    loaded = load_checkpoint(contrastive)
    head = loaded.model.head
    query = head.text_encoder.encode(["a tall lamp"])[0]
    with torch.no_grad():
        scores = {f: float(head.embed(loaded.model.head_input(
            torch.from_numpy(read_points(f, num_points=128, seed=0))[None]))[0] @ query) for f in files}
    best = sorted(files, key=lambda f: -scores[f])[:3]
    assert [t["file"] for t in result["topk"]] == best
    assert [t["score"] for t in result["topk"]] == pytest.approx([scores[f] for f in best], abs=1e-5)


def test_retrieve_reads_no_file_again_once_cached(contrastive, shapes, tmp_path, capsys, monkeypatch):
    folder, _ = shapes
    args = [str(contrastive), str(folder), "--text", "a chair", "--json", "--cache-dir", str(tmp_path), "--no-progress"]
    assert retrieve(args) == 0
    first = _lines(capsys.readouterr().out)
    assert len(list(tmp_path.glob("*.safetensors"))) == 1

    def no_reading(*a, **k):
        raise AssertionError("a cached file was read again")

    monkeypatch.setattr(retrieve_module, "read_clouds", no_reading)
    assert retrieve(args) == 0
    assert _lines(capsys.readouterr().out) == first
    (tmp_path / next(tmp_path.glob("*.safetensors")).name).write_bytes(b"not safetensors")
    monkeypatch.undo()
    assert retrieve(args) == 0  # a damaged cache is ignored and rebuilt
    assert _lines(capsys.readouterr().out) == first


def test_retrieve_refuses_empty_text_and_missing_paths(contrastive, tmp_path, capsys):
    assert retrieve([str(contrastive), str(tmp_path), "--text", " "]) == 2
    assert "--text is empty" in capsys.readouterr().err
    assert retrieve([str(contrastive), str(tmp_path / "nowhere"), "--text", "a lamp"]) == 2
    assert "no such file or folder" in capsys.readouterr().err
    assert retrieve([str(contrastive), str(tmp_path), "--text", "a lamp"]) == 2
    assert "no supported mesh or point file" in capsys.readouterr().err
