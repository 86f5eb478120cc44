"""Weights are never a way in: a TorchScript archive or a pickle payload planted at any place
weights are read from (``source.weights=``, a transformers folder, a checkpoint's record, the
hub cache, OpenAI's download folder, any2point's own cache) runs nothing and is refused with a
one-line error naming the file; a FIFO or a device is refused before it is opened; a checkpoint
records the weights' SHA-256, never a path, and is rebuilt only from weights passed explicitly."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import threading
import warnings
from pathlib import Path
from typing import Tuple

import open_clip
import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import BertConfig, BertModel

import any2point
from any2point.backbones import clip_text as clip_text_module
from any2point.backbones import imagebind_audio as ib
from any2point.checkpoint import load_checkpoint, save_checkpoint
from any2point.errors import CheckpointError, CheckpointMismatchError, ConfigError, WeightsUnavailableError
from ..data_files import box_mesh, write_off
from ..hub_cache import plant_hub_file
from ..sources.test_registry import _small_text_tower
from ..sources.test_sources_by_name import CLIP_ARCH, CLIP_CONFIG, TIMM_OPTIONS, TIMM_TINY
from ..tiny_run import TINY, compose_config

CLASSES = ["sphere", "cube", "torus", "cone"]  # TINY's shapes: an eval run can load the data
CLIP_TEXT = f"open_clip:{CLIP_ARCH}:none"
OPENAI_REPO = "timm/vit_large_patch14_clip_224.openai"  # clip_text's hub copy


# ----------------------------------------------------------------------------- planted payloads

class _Planted(torch.nn.Module):
    """A module whose TorchScript ``__setstate__`` writes into ``mark`` when the archive is loaded."""

    def __init__(self, mark: str):
        super().__init__()
        self.mark = mark
        self.w = torch.zeros(2)

    def forward(self, x):
        return x

    @torch.jit.export
    def __getstate__(self) -> Tuple[str, bool, torch.Tensor]:
        return self.mark, self.training, self.w

    @torch.jit.export
    def __setstate__(self, state: Tuple[str, bool, torch.Tensor]) -> None:
        self.mark, self.training = state[0], state[1]
        self.w = state[2] + torch.from_file(self.mark, True, 8, dtype=torch.uint8).fill_(1)[:2].float()


def plant_torchscript(path: Path, marker: Path) -> Path:
    """A TorchScript archive at ``path``; loading it turns the 8 zero bytes of ``marker`` into ones."""
    marker.write_bytes(bytes(8))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit is deprecated; it writes the hostile file here
        torch.jit.save(torch.jit.script(_Planted(str(marker))), str(path))
    return path


class _Payload:
    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return os.mkdir, (self.marker,)  # what unpickling it runs


def plant_pickle(path: Path, marker: Path) -> Path:
    """A ``torch.save`` file at ``path`` whose unpickling creates the folder ``marker``."""
    torch.save({"weight": torch.zeros(2), "payload": _Payload(marker)}, path)
    return path


def untouched(marker: Path) -> bool:
    return marker.read_bytes() == bytes(8) if marker.suffix == ".ts" else not marker.exists()


def plant(kind: str, path: Path, tmp_path: Path) -> Path:
    """(planted file, its marker) for ``kind`` in {torchscript, pickle}."""
    if kind == "torchscript":
        marker = tmp_path / f"{path.name}.ts"
        return plant_torchscript(path, marker), marker
    marker = tmp_path / f"{path.name}.ran"
    return plant_pickle(path, marker), marker


def assert_refused(err, path: Path, *words: str) -> str:
    msg = str(err.value)
    assert "\n" not in msg and str(path) in msg, msg
    for word in words:
        assert word in msg, msg
    return msg


def test_the_planted_payloads_run_when_loaded_the_unsafe_way(tmp_path):
    """The payloads are live: the tests below would see their side effect if anything ran them."""
    archive, marker = plant("torchscript", tmp_path / "a.pt", tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        torch.jit.load(str(archive))  # the one torch.jit.load, on the test's own file
    assert not untouched(marker)
    pickled, marker = plant("pickle", tmp_path / "b.pt", tmp_path)
    torch.load(pickled, weights_only=False)
    assert not untouched(marker)


# ----------------------------------------------------------------------------- source.weights=

@pytest.fixture(scope="module")
def clip_arch(tmp_path_factory):
    folder = tmp_path_factory.mktemp("open_clip_configs")
    (folder / f"{CLIP_ARCH}.json").write_text(json.dumps(CLIP_CONFIG))
    open_clip.add_model_config(folder)
    return CLIP_ARCH


@pytest.fixture
def small_clip_text(monkeypatch):
    """The clip_text preset with a test-sized text tower (its weights are looked for the same way)."""
    monkeypatch.setattr(clip_text_module, "_text_tower", _small_text_tower)


@pytest.fixture
def caches(tmp_path, monkeypatch):
    """Every cache location pointed into tmp_path: home, XDG, any2point's, torch hub's, HF hub's."""
    import huggingface_hub.constants

    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "home" / ".cache"))
    monkeypatch.setenv("ANY2POINT_CACHE", str(tmp_path / "a2p-cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf-hub"))
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "torch-hub"))
    return tmp_path


SOURCES = {  # name -> create_model keyword arguments besides the weights
    "clip_text": {},
    CLIP_TEXT: {},
    f"{CLIP_TEXT}:visual": {},
    TIMM_TINY: dict(TIMM_OPTIONS),
    "imagebind_audio": {"depth": 2},
}


@pytest.mark.parametrize("kind", ["torchscript", "pickle"])
@pytest.mark.parametrize("name", list(SOURCES))
def test_source_weights_payload_is_refused_and_runs_nothing(name, kind, clip_arch, small_clip_text, caches):
    path, marker = plant(kind, caches / "weights.pt", caches)
    with pytest.raises(WeightsUnavailableError) as err:
        any2point.create_model(name, 3, source_options={"weights": str(path), **SOURCES[name]})
    assert untouched(marker)
    assert_refused(err, path, "TorchScript" if kind == "torchscript" else "weights_only=True")
    if kind == "pickle":
        assert "posix.mkdir" in str(err.value)  # what the payload asked for


def _bert_folder(folder: Path) -> Path:
    """A transformers folder of a small BERT (width 48: the tiny presets' tokenizer fits it)."""
    torch.manual_seed(0)
    config = BertConfig(vocab_size=120, hidden_size=48, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=64, max_position_embeddings=64)
    BertModel(config, add_pooling_layer=False).save_pretrained(folder)
    return folder


@pytest.mark.parametrize("kind", ["torchscript", "pickle"])
def test_hf_folder_with_a_payload_as_pytorch_model_bin_is_refused(tmp_path, kind):
    folder = _bert_folder(tmp_path / "bert")
    (folder / "model.safetensors").unlink()
    path, marker = plant(kind, folder / "pytorch_model.bin", tmp_path)
    with pytest.raises(WeightsUnavailableError) as err:
        any2point.create_source(f"hf:{folder}")
    assert untouched(marker)
    assert_refused(err, path)


def test_hf_folder_with_plain_tensors_in_pytorch_model_bin_is_read(tmp_path):
    folder = _bert_folder(tmp_path / "bert")
    reference = any2point.create_source(f"hf:{folder}")
    state = BertModel.from_pretrained(folder, add_pooling_layer=False).state_dict()
    (folder / "model.safetensors").unlink()
    torch.save(state, folder / "pytorch_model.bin")  # plain tensors: torch.load(weights_only=True) reads them
    source = any2point.create_source(f"hf:{folder}")
    assert torch.equal(source.position_table(), reference.position_table())
    assert source.weights_sha256 != reference.weights_sha256  # another file, another identity


def test_hf_adapter_folder_is_refused(tmp_path):
    folder = _bert_folder(tmp_path / "bert")
    (folder / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": str(tmp_path / "elsewhere")}))
    with pytest.raises(WeightsUnavailableError, match="PEFT adapter folder"):
        any2point.create_source(f"hf:{folder}")


def test_timm_options_that_name_weights_are_refused(tmp_path):
    for option in ("checkpoint_path", "pretrained_cfg_overlay"):
        with pytest.raises(ConfigError, match=f"source.options.{option}.*source.weights="):
            any2point.create_source(TIMM_TINY, **{option: str(tmp_path / "w.pth")}, **TIMM_OPTIONS)


# ----------------------------------------------------------------------------- cache locations

def test_openai_download_folder_is_never_read(small_clip_text, clip_arch, caches):
    """~/.cache/clip ("an earlier download" of OpenAI's TorchScript release files) is no weights location."""
    folder = caches / "home" / ".cache" / "clip"
    folder.mkdir(parents=True)
    markers = [plant("torchscript", folder / f, caches)[1] for f in ("ViT-L-14.pt", "ViT-B-32.pt")]
    for name in ("clip_text", "open_clip:ViT-B-32:openai"):
        with pytest.raises(WeightsUnavailableError) as err:
            any2point.create_model(name, 3)
        msg = str(err.value)
        assert "\n" not in msg and "https://huggingface.co/timm/" in msg and "never read" in msg
    assert all(untouched(m) for m in markers)


@pytest.mark.parametrize("kind,filename", [("torchscript", "open_clip_pytorch_model.bin"),
                                           ("pickle", "open_clip_pytorch_model.bin"),
                                           ("torchscript", "open_clip_model.safetensors")])
def test_hub_cache_payload_is_refused_even_when_its_blob_verifies(small_clip_text, caches, kind, filename):
    """A payload stored under its own digest passes the blob check; it is still read as tensors only."""
    planted, marker = plant(kind, caches / "payload", caches)
    link = plant_hub_file(caches / "hf-hub", OPENAI_REPO, filename, planted.read_bytes())
    with pytest.raises(WeightsUnavailableError) as err:
        any2point.create_model("clip_text", 3)
    assert untouched(marker)
    assert_refused(err, link)


def _imagebind_checkpoint(path: Path, seed: int = 1) -> tuple[Path, str]:
    from ..sources.test_imagebind_audio import _checkpoint

    torch.save(_checkpoint(2, seed=seed), path)
    return path, hashlib.sha256(path.read_bytes()).hexdigest()


def test_any2point_cache_entry_is_used_only_when_it_verifies(caches):
    checkpoint, digest = _imagebind_checkpoint(caches / "imagebind_small.pth")
    derived = ib.derived_path(digest)
    _, marker = plant("torchscript", derived, caches)  # no digest beside it: ignored, derived again
    source = any2point.create_source("imagebind_audio", weights=str(checkpoint), depth=2)
    assert untouched(marker) and source.weights_sha256 == digest
    assert derived.with_suffix(".sha256").read_text().strip() == hashlib.sha256(derived.read_bytes()).hexdigest()
    _, marker = plant("torchscript", derived, caches)  # with a digest that matches (both planted): safetensors only
    derived.with_suffix(".sha256").write_text(hashlib.sha256(derived.read_bytes()).hexdigest())
    with pytest.raises(WeightsUnavailableError) as err:
        any2point.create_source("imagebind_audio", weights=str(checkpoint), depth=2)
    assert untouched(marker)
    assert_refused(err, derived, "safetensors")


@pytest.mark.parametrize("kind", ["torchscript", "pickle"])
def test_official_imagebind_in_torch_hub_folder_is_read_as_tensors_only(caches, kind):
    official = ib._hub_checkpoint()
    official.parent.mkdir(parents=True)
    path, marker = plant(kind, official, caches)
    with pytest.raises(WeightsUnavailableError) as err:
        any2point.create_source("imagebind_audio", depth=2)
    assert untouched(marker)
    assert_refused(err, path)


# ----------------------------------------------------------------------------- not a regular file

def _finishes_within(seconds: float, fn) -> BaseException | None:
    """What ``fn()`` raised, asserting it returned within ``seconds`` (a blocked open never does)."""
    box: dict = {}

    def run():
        try:
            fn()
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            box["exc"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"still running after {seconds} s (blocked on a FIFO?)"
    return box.get("exc")


@pytest.mark.parametrize("name", list(SOURCES))
def test_a_fifo_as_weights_is_refused_at_once(name, clip_arch, small_clip_text, caches):
    fifo = caches / "weights.safetensors"
    os.mkfifo(fifo)
    exc = _finishes_within(1.0, lambda: any2point.create_model(name, 3, source_options={"weights": str(fifo),
                                                                                         **SOURCES[name]}))
    assert isinstance(exc, WeightsUnavailableError) and "FIFO" in str(exc) and str(fifo) in str(exc)


@pytest.mark.parametrize("member", ["model.safetensors", "config.json"])
def test_a_fifo_inside_an_hf_folder_is_refused_at_once(tmp_path, member):
    folder = _bert_folder(tmp_path / "bert")
    (folder / member).unlink()
    os.mkfifo(folder / member)
    exc = _finishes_within(1.0, lambda: any2point.create_source(f"hf:{folder}"))
    assert isinstance(exc, WeightsUnavailableError) and "FIFO" in str(exc) and member in str(exc)


def test_a_device_as_weights_is_refused(clip_arch):
    with pytest.raises(WeightsUnavailableError, match="/dev/zero is a character device"):
        any2point.create_source(CLIP_TEXT, weights="/dev/zero")


# ----------------------------------------------------------------------------- checkpoints

def _clip_weights(path: Path, seed: int) -> Path:
    """A random whole open_clip model of the test arch, saved as a user would (official key layout)."""
    torch.manual_seed(seed)
    clip = open_clip.create_model(CLIP_ARCH, pretrained=None)
    save_file({k: v.contiguous() for k, v in clip.state_dict().items()}, str(path))
    return path


CLIP_VISUAL = f"{CLIP_TEXT}:visual"  # width 48: the tiny presets' tokenizer fits it


def _clouds(b: int = 2, n: int = 64) -> torch.Tensor:
    x = torch.randn(b, n, 3, generator=torch.Generator().manual_seed(4))
    return x / x.norm(dim=-1, keepdim=True).amax(dim=1, keepdim=True)


@pytest.fixture(scope="module")
def clip_run(clip_arch, tmp_path_factory):
    """A one-epoch run of any2point-train (in this process: the test arch is registered here) on
    a local weights file: (run folder, weights file)."""
    from any2point.train import run_training

    root = tmp_path_factory.mktemp("clip_run")
    weights = _clip_weights(root / "tiny_clip.safetensors", seed=2)
    overrides = [o for o in TINY if not o.startswith("source=")]
    run_training(compose_config("train", [*overrides, f"source.name={CLIP_VISUAL}", f"source.weights={weights}",
                                          "source.pretrained=true", "model=tiny_2d"]), root / "run")
    return root / "run", weights


def test_checkpoint_records_the_weights_identity_and_loads_only_from_weights_passed(clip_run, tmp_path):
    run, weights = clip_run
    source = json.loads((run / "checkpoint.json").read_text())["source"]
    digest = hashlib.sha256(weights.read_bytes()).hexdigest()
    assert source == {"name": CLIP_VISUAL, "pretrained": True, "options": {},  # no path
                      "weights_tag": "file:tiny_clip.safetensors", "weights_sha256": digest}
    loaded = load_checkpoint(run, weights=str(weights))
    table = load_file(str(weights))["visual.positional_embedding"][1:].reshape(4, 4, 48)
    assert torch.equal(loaded.model.source.position_table(), table)  # the frozen source: from the file passed
    moved = Path(shutil.copy(weights, tmp_path / "renamed.safetensors"))  # the same content anywhere
    again = load_checkpoint(run, weights=str(moved))
    with torch.no_grad():
        assert torch.equal(again.model(_clouds()), loaded.model(_clouds()))
    other = _clip_weights(tmp_path / "other.safetensors", seed=3)
    with pytest.raises(CheckpointMismatchError) as err:
        load_checkpoint(run, weights=str(other))
    msg = str(err.value)
    assert digest in msg and hashlib.sha256(other.read_bytes()).hexdigest() in msg and "\n" not in msg
    with pytest.raises(WeightsUnavailableError) as err:
        load_checkpoint(run)
    msg = str(err.value)
    assert "tiny_clip.safetensors" in msg and digest in msg and "--weights" in msg and "weights=" in msg


@pytest.fixture
def received_run(clip_run, tmp_path):
    """A copy of the run whose checkpoint.json names a planted TorchScript archive as its weights
    (``source.weights``, as older checkpoints recorded a path), shipped inside the folder."""
    run = tmp_path / "received"
    shutil.copytree(clip_run[0], run)
    archive, marker = plant("torchscript", run / "tiny_clip.safetensors", tmp_path)
    info = json.loads((run / "checkpoint.json").read_text())
    info["source"]["weights"] = str(archive)
    del info["source"]["weights_sha256"]  # an older checkpoint
    (run / "checkpoint.json").write_text(json.dumps(info))
    return run, archive, marker


def test_a_weights_path_in_a_received_checkpoint_is_never_followed(received_run, tmp_path, capsys):
    from any2point.evaluate import run_eval
    from any2point.predict import EXIT_CHECKPOINT
    from any2point.predict import main as predict
    from any2point.show.cli import main as show

    run, archive, marker = received_run
    with pytest.raises(WeightsUnavailableError, match=r"recorded path is ignored.*--weights PATH.*weights=PATH"):
        load_checkpoint(run)
    mesh = write_off(tmp_path / "box.off", *box_mesh())
    assert predict([str(run), str(mesh)]) == EXIT_CHECKPOINT
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "--weights" in err
    assert show([str(mesh), "--checkpoint", str(run), "--out", str(tmp_path / "pictures")]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "--weights" in err
    with pytest.raises(WeightsUnavailableError, match="weights=PATH"):
        run_eval(compose_config("eval", [f"checkpoint={run}", "trainer.progress=false"]), tmp_path / "eval")
    assert untouched(marker)
    # passed explicitly, the archive is refused by name
    assert predict([str(run), str(mesh), "--weights", str(archive)]) == EXIT_CHECKPOINT
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and str(archive) in err and "TorchScript" in err
    assert untouched(marker)


def test_a_weights_path_among_a_checkpoints_source_options_is_refused(received_run):
    run, archive, marker = received_run
    info = json.loads((run / "checkpoint.json").read_text())
    info["source"]["options"]["weights"] = str(archive)
    (run / "checkpoint.json").write_text(json.dumps(info))
    with pytest.raises(CheckpointError, match="source.options.weights"):
        load_checkpoint(run, weights=str(archive))
    assert untouched(marker)


def test_an_hf_folder_named_by_a_checkpoint_is_never_opened(tmp_path):
    folder = _bert_folder(tmp_path / "bert")
    name = f"hf:{folder}"
    torch.manual_seed(0)
    model = any2point.create_model(name, len(CLASSES), model=any2point.model_config("tiny_1d")).eval()
    save_checkpoint(model, tmp_path / "run" / "checkpoint", source={"name": name, "pretrained": True, "options": {}},
                    class_names=CLASSES, num_points=64)
    copy = shutil.copytree(folder, tmp_path / "copy")
    (folder / "model.safetensors").unlink()  # the named folder now holds a payload
    _, marker = plant("torchscript", folder / "pytorch_model.bin", tmp_path)
    with pytest.raises(WeightsUnavailableError, match=r"local transformers folder 'bert' \(SHA-256 [0-9a-f]{64}\)"):
        load_checkpoint(tmp_path / "run")
    loaded = load_checkpoint(tmp_path / "run", weights=str(copy))
    assert loaded.model.source.name == name and untouched(marker)
    with torch.no_grad():
        assert torch.equal(loaded.model(_clouds()), model(_clouds()))


def test_resume_compares_the_weights_identity_not_their_path():
    from any2point.train import _check_resumable, _fingerprint

    at_a = compose_config("train", [*TINY, "source.weights=/a/w.safetensors"])
    at_b = compose_config("train", [*TINY, "source.weights=/b/moved.safetensors"])
    saved = _fingerprint(at_a, 1, "ab" * 32)
    assert "source.weights" not in saved and saved["source.weights_sha256"] == "ab" * 32
    _check_resumable(saved, _fingerprint(at_b, 1, "ab" * 32), Path("state"))  # moved: resumes
    with pytest.raises(CheckpointError, match="source.weights_sha256"):
        _check_resumable(saved, _fingerprint(at_b, 1, "cd" * 32), Path("state"))  # other weights: refused
    older = {k: v for k, v in saved.items() if k != "source.weights_sha256"} | {"source.weights": "/a/w.safetensors"}
    _check_resumable(older, _fingerprint(at_b, 1, "ab" * 32), Path("state"))  # its path is not compared
