"""The 3D tokenizer (parametric Point-PN): shapes, centres, size, normalisations, config
errors, gradients, and per-cloud independence."""
from __future__ import annotations

import pytest
import torch

from any2point.tokenizer import PointTokenizer, SinusoidalOffsetEncoding, TokenizerConfig

SMALL = dict(centres=[64, 32, 16], k=16)


def _clouds(B=2, N=128, seed=0) -> torch.Tensor:
    x = torch.randn(B, N, 3, generator=torch.Generator().manual_seed(seed))
    return x / x.norm(dim=-1, keepdim=True).amax(dim=1, keepdim=True)


def test_output_shapes():
    tok = PointTokenizer(48, **SMALL)
    tokens, centres = tok(_clouds())
    assert tokens.shape == (2, 16, 48) and centres.shape == (2, 16, 3)
    assert torch.isfinite(tokens).all()


def test_default_sizes_give_128_tokens_from_1024_points():
    tok = PointTokenizer(48).eval()
    with torch.no_grad():
        tokens, centres = tok(_clouds(B=1, N=1024))
    assert tokens.shape == (1, 128, 48) and centres.shape == (1, 128, 3)


def test_centres_are_points_of_the_input_cloud():
    points = _clouds(B=3, seed=1)
    _, centres = PointTokenizer(48, **SMALL)(points)
    for b in range(3):
        # every centre is exactly one of the cloud's own points
        matches = (centres[b].unsqueeze(1) == points[b].unsqueeze(0)).all(-1)  # (G, N)
        assert matches.any(dim=1).all()
        assert len({tuple(c.tolist()) for c in centres[b]}) == centres.shape[1]  # distinct


def test_parameter_count_at_width_768():
    n = sum(p.numel() for p in PointTokenizer(768).parameters())
    assert 0.27e6 <= n <= 0.29e6, n  # docs/method.md#3d-tokenizer: about 0.28 M (274,816 with the defaults)


@pytest.mark.parametrize("normalize", ["scan", "modelnet"])
def test_both_normalisations_run_and_differ(normalize):
    torch.manual_seed(0)
    tok = PointTokenizer(48, normalize=normalize, **SMALL).eval()
    other = PointTokenizer(48, normalize="modelnet" if normalize == "scan" else "scan", **SMALL).eval()
    other.load_state_dict(tok.state_dict())
    with torch.no_grad():
        a, ca = tok(_clouds())
        b, cb = other(_clouds())
    assert torch.isfinite(a).all() and torch.equal(ca, cb)
    assert not torch.allclose(a, b)


def test_scan_normalisation_makes_tokens_blind_to_scale():
    """Offsets divided by the group's max |offset| cancel a global scale (the modelnet rule's
    + 1e-5 on the std makes it only nearly invariant)."""
    torch.manual_seed(0)
    tok = PointTokenizer(48, normalize="scan", **SMALL).eval()
    tok.embed[0].weight.data.zero_()  # the raw embedding sees absolute coordinates; silence it
    with torch.no_grad():
        a, _ = tok(_clouds())
        b, _ = tok(_clouds() * 3.0)
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("kwargs,match", [
    (dict(normalize="bogus"), "normalize"),
    (dict(blocks=[2, 1]), "blocks"),
    (dict(bottleneck=[None, 32]), "bottleneck"),
    (dict(centres=[512, 256]), "centres"),
])
def test_config_errors_name_the_setting(kwargs, match):
    with pytest.raises(ValueError, match=match):
        PointTokenizer(48, **kwargs)


def test_width_must_split_over_the_stages():
    with pytest.raises(ValueError, match="width 44"):
        PointTokenizer(44)


def _release_offset_encoding(offsets, channels, alpha=1000.0, beta=100.0):
    """The release's encoding, defined for C divisible by 6: per axis [sin, cos] of C/6 frequencies."""
    freqs = channels // 6
    inv = beta / alpha ** (torch.arange(freqs, dtype=torch.float32) / freqs)
    angles = offsets.unsqueeze(-1) * inv
    return torch.cat([angles.sin(), angles.cos()], dim=-1).flatten(-2)


@pytest.mark.parametrize("channels", [12, 48, 96, 192, 384, 768])
def test_offset_encoding_at_widths_divisible_by_6_is_the_releases_bit_for_bit(channels):
    offsets = torch.rand(64, 3, generator=torch.Generator().manual_seed(0)) * 2 - 1
    assert torch.equal(SinusoidalOffsetEncoding(channels, 1000.0, 100.0)(offsets),
                       _release_offset_encoding(offsets, channels))


@pytest.mark.parametrize("channels", [1, 2, 7, 50, 128, 256, 6 * 5 + 4])
def test_offset_encoding_of_any_width_follows_its_documented_layout(channels):
    """Channels split over x, y, z (C // 3 each, one more for the first C % 3 axes); an axis with
    n channels: sines of F = ceil(n / 2) frequencies beta / alpha^(i/F), then n - F cosines."""
    alpha, beta = 1000.0, 100.0
    offsets = torch.rand(16, 3, generator=torch.Generator().manual_seed(1)) * 2 - 1
    expected = []
    for axis in range(3):
        n = channels // 3 + (axis < channels % 3)
        F = (n + 1) // 2
        for i in range(n):
            f, trig = (i, torch.sin) if i < F else (i - F, torch.cos)
            expected.append(trig(offsets[:, axis] * (beta / alpha ** (f / F))))
    ours = SinusoidalOffsetEncoding(channels, alpha, beta)(offsets)
    assert ours.shape == (16, channels)
    torch.testing.assert_close(ours, torch.stack(expected, dim=-1), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("width", [200, 512, 768, 1024])
def test_every_width_divisible_by_the_stages_tokenizes_1024_points(width):
    """CLIP's 512-wide text tower and 1024-wide ViT-Ls have stages (D/4 = 128, 256) that 6 does not divide."""
    tok = PointTokenizer(width).eval()
    with torch.no_grad():
        tokens, centres = tok(_clouds(B=1, N=1024))
    assert tokens.shape == (1, 128, width) and centres.shape == (1, 128, 3)
    assert torch.isfinite(tokens).all() and tokens.std() > 0


def test_input_errors():
    tok = PointTokenizer(48, **SMALL)
    with pytest.raises(ValueError, match=r"\(B, N, 3\)"):
        tok(torch.rand(2, 128, 4))
    with pytest.raises(ValueError, match="centres"):
        tok(torch.rand(2, 40, 3))  # fewer points than the first stage's 64 centres


def test_config_object_and_overrides():
    cfg = TokenizerConfig(k=8, centres=[32, 16, 8])
    tok = PointTokenizer(48, cfg, normalize="modelnet")
    assert tok.config.k == 8 and tok.config.normalize == "modelnet" and cfg.normalize == "scan"
    tokens, _ = tok(_clouds(N=64))
    assert tokens.shape == (2, 8, 48)


def test_gradients_reach_every_parameter():
    tok = PointTokenizer(48, **SMALL)
    tokens, _ = tok(_clouds())
    (tokens * torch.randn_like(tokens)).sum().backward()
    for name, p in tok.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


@pytest.mark.parametrize("normalize", ["scan", "modelnet"])
def test_tokens_of_a_cloud_do_not_depend_on_the_batch(normalize):
    torch.manual_seed(0)
    tok = PointTokenizer(48, normalize=normalize, **SMALL)
    tok(_clouds(B=4, seed=9))  # one training step's worth of BatchNorm statistics
    tok.eval()
    clouds = _clouds(B=3, seed=2)
    with torch.no_grad():
        together, c_together = tok(clouds)
        alone, c_alone = tok(clouds[1:2])
        with_others, _ = tok(torch.cat([_clouds(B=2, seed=3), clouds[1:2]]))
    torch.testing.assert_close(alone[0], together[1], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(with_others[2], together[1], rtol=1e-5, atol=1e-5)
    assert torch.equal(c_alone[0], c_together[1])


def test_geometry_alone_gives_the_centres_of_every_stage():
    """What the benches time as FPS + kNN is the tokenizer's own grouping, stage by stage."""
    tokenizer = PointTokenizer(48, TokenizerConfig(**SMALL)).eval()
    points = torch.randn(2, 128, 3)
    centres = tokenizer.geometry(points)
    assert [c.shape for c in centres] == [(2, n, 3) for n in SMALL["centres"]]
    with torch.no_grad():
        assert torch.equal(centres[-1], tokenizer(points)[1])
