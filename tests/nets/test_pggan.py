import math

import pytest
import torch

from pggan.config import ModelConfig, load_preset
from pggan.nets import build_discriminator, build_generator, count_params
from pggan.nets.features import resolutions
from pggan.nets.layers import EqualizedConv2d, EqualizedLinear
from pggan.ops import downsample2d, upsample2d


def tiny(max_res=1024, **kw):
    return ModelConfig(max_res=max_res, fmap_base=64, fmap_max=16, latent_dim=16, **kw)


@pytest.fixture(scope="module")
def nets1024():
    cfg = tiny(1024)
    return cfg, build_generator(cfg), build_discriminator(cfg)


@pytest.mark.parametrize("res", resolutions(1024))
def test_shapes_and_backward_every_stage(nets1024, res):
    cfg, G, D = nets1024
    G.zero_grad(set_to_none=True)
    D.zero_grad(set_to_none=True)
    n = 2 if res >= 512 else 4
    z = torch.randn(n, cfg.latent_dim)
    img = G(z, res=res, alpha=0.5)
    assert img.shape == (n, 3, res, res)
    out = D(img, alpha=0.5)
    assert out.shape == (n, 1)
    out.sum().backward()
    # every module of the stage got a gradient; blocks above the stage got none
    active = {id(p) for m in G.stage_modules(res) for p in m.parameters()}
    for p in G.parameters():
        assert (p.grad is not None) == (id(p) in active)
    assert all(torch.isfinite(p.grad).all() for p in G.parameters() if p.grad is not None)


@pytest.mark.parametrize("res", [8, 16, 64])
def test_generator_fade_in_exact_at_alpha_zero(res):
    cfg = tiny(64)
    G = build_generator(cfg)
    z = torch.randn(3, cfg.latent_dim)
    with torch.no_grad():
        grown = G(z, res=res, alpha=0.0)
        smaller = G(z, res=res // 2, alpha=1.0)
    assert (grown - upsample2d(smaller, mode="nearest")).abs().max().item() <= 1e-6
    with torch.no_grad():  # and alpha matters once it is above zero
        assert (G(z, res=res, alpha=0.5) - grown).abs().max().item() > 1e-3


@pytest.mark.parametrize("arch", ["pggan", "stylegan"])
@pytest.mark.parametrize("res", [8, 16, 64])
def test_discriminator_fade_in_exact_at_alpha_zero(res, arch):
    cfg = tiny(64, arch=arch)  # stylegan: FIR-blurred downsampling inside the blocks
    D = build_discriminator(cfg)
    img = torch.randn(4, 3, res, res)
    with torch.no_grad():
        grown = D(img, alpha=0.0)
        smaller = D(downsample2d(img, mode="box"), alpha=1.0)
    assert (grown - smaller).abs().max().item() <= 1e-6
    with torch.no_grad():
        assert (D(img, alpha=0.7) - grown).abs().max().item() > 1e-4


def test_equalized_lr_init_and_scale():
    torch.manual_seed(1)
    conv = EqualizedConv2d(64, 128, 3, gain=math.sqrt(2))
    w = conv.weight.detach()
    assert abs(w.mean().item()) < 0.01 and abs(w.std().item() - 1.0) < 0.01
    assert conv.weight_scale == pytest.approx(math.sqrt(2) / math.sqrt(64 * 9), rel=1e-12)
    x = torch.randn(2, 64, 5, 5)
    ref = torch.nn.functional.conv2d(x, w * math.sqrt(2) / 24.0, padding=1)
    assert torch.allclose(conv(x), ref, atol=1e-5)
    lin = EqualizedLinear(100, 10, gain=1.0, lr_mult=0.01)
    assert abs(lin.weight.detach().std().item() * 0.01 - 1.0) < 0.05   # stored N(0,1)/lr_mult
    assert lin.weight_scale == pytest.approx(0.01 / 10.0)
    y = torch.randn(3, 100)
    assert torch.allclose(lin(y), y @ (lin.weight * 0.001).t() + lin.bias * 0.01, atol=1e-6)


def test_paper_parameter_count():
    cfg = load_preset("pggan-celebahq-1024").model
    # PGGAN paper, Table 2: 23.1M trainable parameters in G and in D at 1024x1024.
    assert abs(count_params(build_generator(cfg)) / 1e6 - 23.1) < 0.1
    assert abs(count_params(build_discriminator(cfg)) / 1e6 - 23.1) < 0.1


def test_feature_counts_do_not_depend_on_max_res():
    small, big = tiny(64), tiny(1024)
    G64, G1k = build_generator(small), build_generator(big)
    s64 = G64.state_dict()
    s1k = G1k.state_dict()
    for k, v in s64.items():
        assert s1k[k].shape == v.shape, k
    G1k.load_state_dict(s64, strict=False)
    z = torch.randn(2, 16)
    with torch.no_grad():
        assert torch.equal(G1k(z, res=64), G64(z, res=64))


@pytest.mark.parametrize("cond", ["projection", "acgan"])
def test_class_conditioning(cond):
    cfg = tiny(16, num_classes=5, cond_d=cond)
    G, D = build_generator(cfg), build_discriminator(cfg)
    z = torch.randn(4, 16)
    c = torch.tensor([0, 1, 2, 4])
    img = G(z, c, res=16)
    out = D(img, c)
    assert out.shape == (4, 1 if cond == "projection" else 6)
    with torch.no_grad():  # the label changes the output
        assert (G(z, torch.tensor([3, 3, 3, 3]), res=16) - img).abs().max() > 1e-4
        if cond == "projection":
            assert (D(img, torch.tensor([3, 3, 3, 3])) - out).abs().max() > 1e-6
    with pytest.raises(ValueError, match="class-conditional"):
        G(z, None, res=16)
    with pytest.raises(ValueError, match="out of range"):
        G(z, torch.tensor([0, 1, 2, 5]), res=16)


def test_bad_stage_is_a_clear_error():
    cfg = tiny(32)
    G, D = build_generator(cfg), build_discriminator(cfg)
    with pytest.raises(ValueError, match="not a stage"):
        G(torch.randn(1, 16), res=64)
    with pytest.raises(ValueError, match="not a stage"):
        D(torch.randn(1, 3, 12, 12))
