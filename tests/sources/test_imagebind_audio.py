"""ImageBind-Huge audio: the official key layout, extraction into the cache, the bias tokens,
the 12 x 19 table read row by row, and clear errors for checkpoints that do not fit."""
from __future__ import annotations

import hashlib
import os

import pytest
import torch
import torch.nn.functional as F
from safetensors import safe_open

import any2point
from any2point.backbones import imagebind_audio as ib
from any2point.errors import WeightsUnavailableError

D, H, ROWS, COLS = 768, 12, 12, 19


def _official_shapes(depth: int) -> dict[str, tuple[int, ...]]:
    """The audio tensors of imagebind_huge.pth, written out from ImageBind's model code."""
    shapes = {
        "modality_preprocessors.audio.cls_token": (1, 1, D),
        "modality_preprocessors.audio.pos_embedding_helper.pos_embed": (1, 1 + ROWS * COLS, D),
        "modality_heads.audio.0.weight": (D,),
        "modality_heads.audio.0.bias": (D,),
    }
    for n in range(depth):
        p = f"modality_trunks.audio.blocks.{n}."
        shapes.update({
            p + "attn.in_proj_weight": (3 * D, D), p + "attn.in_proj_bias": (3 * D,),
            p + "attn.bias_k": (1, 1, D), p + "attn.bias_v": (1, 1, D),
            p + "attn.out_proj.weight": (D, D), p + "attn.out_proj.bias": (D,),
            p + "norm_1.weight": (D,), p + "norm_1.bias": (D,), p + "norm_2.weight": (D,), p + "norm_2.bias": (D,),
            p + "mlp.fc1.weight": (4 * D, D), p + "mlp.fc1.bias": (4 * D,),
            p + "mlp.fc2.weight": (D, 4 * D), p + "mlp.fc2.bias": (D,),
        })
    return shapes


# Tensors of the full checkpoint that the audio source must ignore.
OTHERS = {
    "modality_preprocessors.audio.rgbt_stem.proj.weight": (D, 1, 16, 16),
    "modality_preprocessors.audio.rgbt_stem.norm_layer.weight": (D,),
    "modality_heads.audio.2.weight": (1024, D),
    "modality_postprocessors.audio.1.log_logit_scale": (),
    "modality_trunks.vision.blocks.0.norm_1.weight": (1280,),
    "modality_preprocessors.text.token_embedding.weight": (64, 1024),
}


def _checkpoint(depth: int, seed: int = 0, drop=(), extra=None) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    shapes = {**_official_shapes(depth), **OTHERS, **(extra or {})}
    state = {k: torch.randn(s, generator=g) * 0.05 for k, s in shapes.items() if k not in drop}
    for k in state:
        if k.endswith(("norm_1.weight", "norm_2.weight", "audio.0.weight")):
            state[k] += 1.0
    # a position table whose rows say where they are: row 1 + 19 r + c holds r in channel 0, c in channel 1
    pos = state["modality_preprocessors.audio.pos_embedding_helper.pos_embed"]
    for r in range(ROWS):
        for c in range(COLS):
            pos[0, 1 + COLS * r + c, :2] = torch.tensor([float(r), float(c)])
    return state


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """An empty any2point cache and torch hub folder for this test."""
    monkeypatch.setenv("ANY2POINT_CACHE", str(tmp_path / "a2p-cache"))
    hub = tmp_path / "torch-hub"
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(hub))
    return tmp_path / "a2p-cache"


@pytest.fixture(scope="module")
def full_checkpoint(tmp_path_factory):
    """A full-size (12-block) checkpoint in the official layout, written once."""
    path = tmp_path_factory.mktemp("imagebind") / "imagebind_huge.pth"
    state = _checkpoint(12, seed=7)
    torch.save(state, path)
    return path, state


def test_layout_matches_official_key_names_and_shapes():
    layout = ib.official_layout()
    assert layout == _official_shapes(12)
    assert len(layout) == 4 + 12 * 14
    assert ib.official_layout(depth=2) == _official_shapes(2)


@pytest.mark.slow  # a full-size (12-block) checkpoint and source
def test_full_checkpoint_loads_caches_audio_part_and_reuses_it(full_checkpoint, cache, monkeypatch):
    path, state = full_checkpoint
    source = any2point.create_source("imagebind_audio", weights=str(path))
    assert source.weights_tag == "file:imagebind_huge.pth" and source.depth == 12
    cached = sorted(cache.glob("imagebind_huge_audio-*.safetensors"))
    assert cached == [ib.derived_path(hashlib.sha256(path.read_bytes()).hexdigest())]  # named by the input's digest
    assert not [p for p in cache.iterdir() if p.name.endswith(".tmp")]
    with safe_open(str(cached[0]), framework="pt") as f:
        assert set(f.keys()) == set(_official_shapes(12))  # the audio part only
        assert f.metadata()["licence"] == "CC BY-NC-SA 4.0"
    for key, ours in [("modality_trunks.audio.blocks.11.attn.bias_k", source.blocks[11].attn.bias_k),
                      ("modality_trunks.audio.blocks.3.mlp.fc2.weight", source.blocks[3].mlp.fc2.weight),
                      ("modality_heads.audio.0.bias", source.final_norm.bias),
                      ("modality_preprocessors.audio.cls_token", source.cls)]:
        assert torch.equal(ours, state[key]), key
    # later loads read the cache, never the big file
    stamp = cached[0].stat().st_mtime_ns
    monkeypatch.setattr(ib, "extract_audio_state", lambda *a, **k: pytest.fail("the checkpoint was read again"))
    again = any2point.create_source("imagebind_audio", weights=str(path))
    assert torch.equal(again.blocks[5].attn.in_proj_weight, state["modality_trunks.audio.blocks.5.attn.in_proj_weight"])
    assert cached[0].stat().st_mtime_ns == stamp


@pytest.mark.slow  # a full-size (12-block) checkpoint and source
def test_official_checkpoint_in_torch_hub_cache_is_extracted_once(full_checkpoint, cache, monkeypatch):
    path, state = full_checkpoint
    hub_ckpt = ib._hub_checkpoint()
    hub_ckpt.parent.mkdir(parents=True)
    os.symlink(path, hub_ckpt)
    spec = any2point.get_source_spec("imagebind_audio")
    assert spec.weights_available()
    source = any2point.create_source("imagebind_audio")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    assert source.weights_tag == "imagebind_huge" and source.weights_sha256 == digest
    derived = ib.derived_path(digest)
    assert derived.exists() and (cache / ib.OFFICIAL_POINTER).read_text().strip() == digest
    assert derived.with_suffix(".sha256").read_text().strip() == hashlib.sha256(derived.read_bytes()).hexdigest()
    hub_ckpt.unlink()  # the verified cache alone is enough from now on
    assert spec.weights_available()
    again = any2point.create_source("imagebind_audio")
    assert again.weights_sha256 == digest
    assert torch.equal(again.pos_embed, state["modality_preprocessors.audio.pos_embedding_helper.pos_embed"])


def test_offline_without_copy_names_file_url_and_config_key(cache, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert not any2point.get_source_spec("imagebind_audio").weights_available()
    with pytest.raises(WeightsUnavailableError) as err:
        any2point.create_source("imagebind_audio")
    msg = str(err.value)
    assert "imagebind_huge.pth" in msg and ib.URL in msg and "source.weights=" in msg


def test_table_is_read_row_by_row(tmp_path, cache):
    path = tmp_path / "small.pth"
    state = _checkpoint(2)
    torch.save(state, path)
    source = any2point.create_source("imagebind_audio", weights=str(path), depth=2)
    table = source.position_table()
    assert table.shape == (12, 19, D) and source.position.canvas == (192, 304) and source.position.patch == (16, 16)
    pos = state["modality_preprocessors.audio.pos_embedding_helper.pos_embed"][0]
    assert torch.equal(table[2, 5], pos[1 + 19 * 2 + 5])  # row 2 (mel), column 5 (time)
    assert table[2, 5, :2].tolist() == [2.0, 5.0]
    assert table[11, 18, :2].tolist() == [11.0, 18.0] and table[1, 0, :2].tolist() == [1.0, 0.0]
    assert torch.equal(source.cls_position(), pos[0])


def test_bias_tokens_are_loaded_and_used(tmp_path, cache):
    path = tmp_path / "small.pth"
    torch.save(_checkpoint(2, seed=3), path)
    source = any2point.create_source("imagebind_audio", weights=str(path), depth=2).eval()
    block = source.blocks[0]
    x = torch.randn(2, 7, D, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        out = block(x)
        # the attention by hand: the bias key/value are one extra token every query attends to
        y = block.norm_1(x)
        q, k, v = F.linear(y, block.attn.in_proj_weight, block.attn.in_proj_bias).chunk(3, dim=-1)
        k = torch.cat([k, block.attn.bias_k.expand(2, 1, D)], dim=1)
        v = torch.cat([v, block.attn.bias_v.expand(2, 1, D)], dim=1)
        heads = lambda t: t.reshape(2, t.shape[1], H, D // H).transpose(1, 2)  # noqa: E731
        w = (heads(q) @ heads(k).transpose(-1, -2) / (D // H) ** 0.5).softmax(-1)
        a = (w @ heads(v)).transpose(1, 2).reshape(2, 7, D)
        h = x + block.attn.out_proj(a)
        torch.testing.assert_close(out, h + block.mlp(block.norm_2(h)), rtol=1e-4, atol=1e-4)
        # and they matter: other bias tokens give another output
        block.attn.bias_k.add_(1.0)
        block.attn.bias_v.add_(1.0)
        assert not torch.allclose(block(x), out, atol=1e-3)


def test_missing_keys_are_named_and_nothing_is_cached(tmp_path, cache):
    path = tmp_path / "broken.pth"
    torch.save(_checkpoint(2, drop={"modality_trunks.audio.blocks.1.attn.bias_v",
                                    "modality_heads.audio.0.weight"}), path)
    with pytest.raises(ValueError) as err:
        any2point.create_source("imagebind_audio", weights=str(path), depth=2)
    msg = str(err.value)
    assert str(path) in msg and "missing keys" in msg
    assert "modality_trunks.audio.blocks.1.attn.bias_v" in msg and "modality_heads.audio.0.weight" in msg
    assert not cache.exists() or not list(cache.glob("*.safetensors"))


def test_unexpected_keys_and_wrong_shapes_are_named(tmp_path, cache):
    path = tmp_path / "deeper.pth"
    torch.save(_checkpoint(3), path)  # three blocks for a two-block source
    with pytest.raises(ValueError, match=r"unexpected keys: modality_trunks\.audio\.blocks\.2\."):
        any2point.create_source("imagebind_audio", weights=str(path), depth=2)
    state = _checkpoint(2)
    state["modality_preprocessors.audio.pos_embedding_helper.pos_embed"] = torch.zeros(1, 1 + 19 * 12, 512)
    from safetensors.torch import save_file

    bad = tmp_path / "bad_shape.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, str(bad))
    with pytest.raises(ValueError, match=r"pos_embed: \(1, 229, 512\) \(expected \(1, 229, 768\)\)"):
        any2point.create_source("imagebind_audio", weights=str(bad), depth=2)


def test_audio_only_safetensors_loads_directly(tmp_path, cache):
    from safetensors.torch import save_file

    state = {k: v for k, v in _checkpoint(2, seed=5).items() if k in _official_shapes(2)}
    path = tmp_path / "audio.safetensors"
    save_file(state, str(path))
    source = any2point.create_source("imagebind_audio", weights=str(path), depth=2)
    assert torch.equal(source.blocks[1].attn.bias_v, state["modality_trunks.audio.blocks.1.attn.bias_v"])
    assert not cache.exists() or not list(cache.iterdir())  # nothing to extract: it is read as it is
