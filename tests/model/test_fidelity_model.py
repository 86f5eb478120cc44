"""The release's choices inside the model (docs/method.md#per-run-settings): per-dataset initialisation with
nothing zero-initialised, cls position N(0, 0.02), PE injected twice into the first block
for CLIP on ScanObjectNN, the frozen source's own dropout / drop-path in training."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import any2point
from any2point.backbones.imagebind_audio import ImageBindAudioSource
from any2point.backbones.vit import build_timm_vit
from any2point.factory import model_config
from any2point.model import Any2PointModel


def _cloud(b: int = 2, n: int = 256, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, n, 3, generator=g)
    return x / x.norm(dim=-1, keepdim=True).amax(dim=1, keepdim=True)


def _model(init: str, source: str = "tiny_2d", **config) -> Any2PointModel:
    torch.manual_seed(0)
    cfg = model_config(source)
    cfg.init = init
    for key, value in config.items():
        setattr(cfg, key, value)
    return Any2PointModel(any2point.create_source(source, pretrained=False), 4, cfg)


def _linears(part: nn.Module) -> list[nn.Linear]:
    return [m for m in part.modules() if isinstance(m, nn.Linear)]


def test_scan_init_is_xavier_with_zero_bias_and_leaves_tokenizer_and_head_as_pytorch():
    default, scan = _model("torch"), _model("scan")
    for m in _linears(scan.adapters):
        fan_out, fan_in = m.weight.shape
        bound = math.sqrt(6 / (fan_in + fan_out))  # xavier_uniform
        assert m.weight.abs().max() <= bound and m.weight.abs().max() > 0.8 * bound
        assert m.bias is None or torch.equal(m.bias, torch.zeros_like(m.bias))
    attention = scan.adapters.mini_attention
    for weight in (attention.qkv_weight, attention.out_weight):
        for view in weight:
            bound = math.sqrt(6 / sum(view.shape))
            assert view.abs().max() <= bound and view.abs().max() > 0.8 * bound
    # the release's tokenizer is 1x1 convolutions (untouched by its Linear rule), its head is outside the encoder
    for part in ("tokenizer", "head"):
        for a, b in zip(getattr(default, part).parameters(), getattr(scan, part).parameters()):
            assert torch.equal(a, b)


def test_modelnet_init_is_trunc_normal_002_everywhere_trainable():
    model = _model("modelnet")
    weights = torch.cat([m.weight.flatten() for part in (model.tokenizer, model.adapters, model.head)
                         for m in _linears(part)])
    assert abs(weights.std().item() - 0.02) < 0.002 and weights.abs().max() < 0.02 * 6
    for part in (model.tokenizer, model.adapters, model.head):
        for m in _linears(part):
            assert m.bias is None or not m.bias.any()


@pytest.mark.parametrize("init", ["scan", "modelnet"])
def test_nothing_trainable_is_zero_initialised(init):
    model = _model(init, cls_position="random")
    for part in (model.tokenizer, model.adapters, model.head):
        for m in part.modules():
            if isinstance(m, (nn.BatchNorm1d, nn.LayerNorm)):
                assert torch.all(m.weight == 1) and not m.bias.any()
        for m in _linears(part):
            assert m.weight.abs().min() >= 0 and m.weight.std() > 0
    assert model.adapters.blocks[0].bottleneck.up.weight.abs().sum() > 0  # the torch default zero-inits it
    # so the adapted block differs from the frozen one from the first step on
    assert _model("torch").adapters.blocks[0].bottleneck.up.weight.abs().sum() == 0


def test_cls_position_is_drawn_from_n_0_002_unless_taken_from_the_source():
    torch.manual_seed(0)
    source = any2point.create_source("dinov2", pretrained=False)
    cfg = model_config("dinov2")
    ours = Any2PointModel(source, 4, cfg)
    assert torch.equal(ours.cls_position.detach(), source.cls_position()) and torch.equal(
        ours.cls_token.detach(), source.cls_token())
    cfg.cls_position, cfg.cls_token = "random", "random"
    fresh = Any2PointModel(source, 4, cfg)
    for p in (fresh.cls_position, fresh.cls_token):
        assert abs(p.std().item() - 0.02) < 0.003 and abs(p.mean().item()) < 0.003


def test_input_and_every_adds_the_pe_to_the_first_block_twice():
    torch.manual_seed(0)
    model = any2point.create_model("tiny_1d", num_classes=3, adapter={"scale": 0.0, "coef": 0.0},
                                   projection={"inject": "input_and_every"}).eval()
    with torch.no_grad():
        x, context = model.embed(_cloud())
        ours = model.run_blocks(x, context)
        ref = model.source.stem(x)
        for block in model.source.blocks:  # before every block, the first included: it sees x + 2 PE
            ref = block(ref + context.position)
        model.config.projection.inject = "every"
        once = model.run_blocks(*model.embed(_cloud()))
    torch.testing.assert_close(ours, ref)
    assert (ours - once).abs().max() > 1e-3


def _tiny_vit(**rates) -> nn.Module:
    return build_timm_vit("tiny_2d", "vit_small_patch16_224", pretrained=False, img_size=(64, 96), patch_size=8,
                          embed_dim=48, depth=2, num_heads=4, init_values=0.1, num_classes=0, **rates).freeze()


@pytest.mark.parametrize("switch", [True, False])
def test_source_dropout_runs_in_training_only_when_configured_and_weights_stay_frozen(switch):
    torch.manual_seed(0)
    source = _tiny_vit(attn_drop_rate=0.3, drop_path_rate=0.3)
    cfg = model_config("tiny_2d")
    cfg.source_dropout = switch
    cfg.adapter.dropout = cfg.head.dropout = 0.0  # only the source's own dropout is random
    model = Any2PointModel(source, 3, cfg).train()
    frozen = {k: v.clone() for k, v in model.source.state_dict().items()}
    points = _cloud(4)
    outs = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        outs.append(model(points))
    assert (not torch.equal(outs[0], outs[1])) == switch
    assert all(m.training == switch for m in model.source.modules())
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    outs[0].square().mean().backward()
    opt.step()
    assert all(torch.equal(v, model.source.state_dict()[k]) for k, v in frozen.items())
    model.eval()
    assert not any(m.training for m in model.modules())
    with torch.no_grad():
        assert torch.equal(model(points), model(points))


def test_imagebind_audio_takes_attention_dropout_and_linear_drop_path_without_new_tensors():
    with torch.device("meta"):
        plain = ImageBindAudioSource(depth=3)
        regular = ImageBindAudioSource(depth=3, attn_drop_rate=0.1, drop_path_rate=0.1)
    assert plain.state_dict().keys() == regular.state_dict().keys()
    assert [b.attn.dropout for b in regular.blocks] == [0.1] * 3
    assert isinstance(regular.blocks[0].drop_path, nn.Identity)  # rate 0 at the first block
    assert [b.drop_path.drop_prob for b in regular.blocks[1:]] == pytest.approx([0.05, 0.1])
