"""Fused resampling convolutions (model.fused_scale) against their references, and the PGGAN
networks built with them: same function (up), PGGAN's fused function (down), fade-in exactness,
states interchangeable between the paths."""
import pytest
import torch
import torch.nn.functional as F

from pggan.config import ConfigError, ModelConfig, validate, Config
from pggan.nets import build_discriminator, build_generator
from pggan.nets.layers import FUSED_SCALE_AUTO_RES, EqualizedConv2d
from pggan.ops import bias_act, upsample2d
from pggan.ops.resample_conv import (conv3x3_resample, downconv_ref, fused_kernel, upconv_ref,
                                     use_fused)

# Awkward shapes: odd channel counts, non-square, batch 1 and 3, H=W=1 for up.
UP_SHAPES = [(1, 1, 1, 1, 1), (3, 5, 7, 6, 4), (2, 8, 4, 4, 3), (2, 3, 5, 9, 7)]
DOWN_SHAPES = [(1, 1, 2, 2, 1), (3, 5, 8, 6, 4), (2, 8, 4, 4, 3), (2, 3, 10, 14, 7)]


def _inputs(shape, dtype=torch.float32, seed=0):
    n, cin, h, w, cout = shape
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, cin, h, w, generator=g, dtype=dtype, requires_grad=True)
    wt = torch.randn(cout, cin, 3, 3, generator=g, dtype=dtype, requires_grad=True)
    return x, wt


def _grads(fn, x, w):
    """Forward, first-order grads (x, w) with create_graph, and the second-order grads of
    |dL/dx|^2 + |dL/dw|^2 (WGAN-GP / R1 differentiate |dD/dx|^2; the op is linear in each
    argument, so dL/dx depends on w only and dL/dw on x only)."""
    y = fn(x, w)
    gy = torch.randn_like(y, generator=torch.Generator().manual_seed(1))
    gx, gw = torch.autograd.grad((y * gy).sum(), (x, w), create_graph=True)
    ggx, ggw = torch.autograd.grad(gx.square().sum() + gw.square().sum(), (x, w))
    return y, gx, gw, ggx, ggw


# fp32 tolerance, relative to the largest magnitude of the reference tensor: fused and reference
# compute the same sums in another order (the fused kernel adds up to 4 weights first), so they
# differ by rounding only, a few units of fp32's 2^-24 ~ 6e-8 times the number of terms summed
# (up to a few hundred here, in the weight gradients). 1e-5 of the largest value allows that and
# fails for any real mistake: a shifted, flipped or mis-scaled kernel is off by O(1) of it.
REL = 1e-5


def close(got, ref, rel=REL):
    assert got.shape == ref.shape and got.dtype == ref.dtype
    err = (got - ref).abs().max().item()
    scale = ref.abs().max().item()
    assert err <= rel * scale, f"max error {err:.3g} > {rel:g} x max |ref| {scale:.3g}"


@pytest.mark.parametrize("shape", UP_SHAPES)
def test_fused_up_equals_nearest_up_then_conv(shape):
    x, w = _inputs(shape)
    ref = _grads(lambda a, b: conv3x3_resample(a, b, "up", fused=False, weight_gain=0.3), x, w)
    got = _grads(lambda a, b: conv3x3_resample(a, b, "up", fused=True, weight_gain=0.3), x, w)
    assert got[0].shape == (shape[0], shape[4], 2 * shape[2], 2 * shape[3])
    for r, g in zip(ref, got):
        close(g, r)


@pytest.mark.parametrize("shape", DOWN_SHAPES)
def test_fused_down_equals_conv_then_box(shape):
    x, w = _inputs(shape)
    ref = _grads(lambda a, b: conv3x3_resample(a, b, "down", fused=False, weight_gain=0.3), x, w)
    got = _grads(lambda a, b: conv3x3_resample(a, b, "down", fused=True, weight_gain=0.3), x, w)
    assert got[0].shape == (shape[0], shape[4], shape[2] // 2, shape[3] // 2)
    for r, g in zip(ref, got):
        close(g, r)


def test_references_are_what_they_say():
    # The references themselves, against an independent spelling (float64, exact up to rounding).
    x, w = _inputs((2, 3, 4, 5, 2), torch.float64)
    up = x.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3)
    torch.testing.assert_close(upconv_ref(x, w), F.conv2d(up, w, padding=1))
    full = F.conv2d(x[:, :, :4, :4], w, padding=1)
    box = (full[:, :, 0::2, 0::2] + full[:, :, 1::2, 0::2] + full[:, :, 0::2, 1::2]
           + full[:, :, 1::2, 1::2]) / 4
    torch.testing.assert_close(downconv_ref(x[:, :, :4, :4], w), box)
    # The fused kernel is the 3x3 kernel summed over its four 2x2 shifts (PGGAN).
    k = fused_kernel(torch.arange(9.0).reshape(1, 1, 3, 3))[0, 0]
    assert k.tolist() == [[0, 1, 3, 2], [3, 8, 12, 7], [9, 20, 24, 13], [6, 13, 15, 8]]


def test_gradgradcheck_float64():
    x, w = _inputs((1, 2, 3, 4, 2), torch.float64)
    for mode, xx in (("up", x), ("down", x[:, :, :2, :4].detach().requires_grad_(True))):
        fn = lambda a, b: conv3x3_resample(a, b, mode, fused=True, weight_gain=0.7)  # noqa
        assert torch.autograd.gradcheck(fn, (xx, w))
        assert torch.autograd.gradgradcheck(fn, (xx, w))


def test_channels_last_is_kept():
    x, w = _inputs((2, 4, 6, 6, 4))
    x = x.detach().to(memory_format=torch.channels_last)
    for mode in ("up", "down"):
        for fused in (False, True):
            y = conv3x3_resample(x, w.detach(), mode, fused)
            assert y.is_contiguous(memory_format=torch.channels_last), (mode, fused)
    assert upsample2d(x).is_contiguous(memory_format=torch.channels_last)


def test_bad_arguments():
    x, w = _inputs((1, 2, 5, 4, 2))
    with pytest.raises(ValueError, match="even"):
        conv3x3_resample(x, w, "down", fused=True)
    with pytest.raises(ValueError, match="mode"):
        conv3x3_resample(x, w, "sideways", fused=True)
    with pytest.raises(ValueError, match="3x3"):
        conv3x3_resample(x, torch.randn(2, 2, 1, 1), "up", fused=True)
    with pytest.raises(ValueError, match="resample"):
        EqualizedConv2d(2, 2, 1, resample="up")
    assert use_fused("auto", FUSED_SCALE_AUTO_RES, FUSED_SCALE_AUTO_RES)
    assert not use_fused("auto", FUSED_SCALE_AUTO_RES // 2, FUSED_SCALE_AUTO_RES)
    assert use_fused("always", 8, 1024) and not use_fused("never", 1024, 8)
    cfg = Config(model=ModelConfig(max_res=8, fused_scale="sometimes"))
    with pytest.raises(ConfigError, match="fused_scale"):
        validate(cfg)


def test_equalized_conv_down_fused_is_pggan_fused_path():
    # fused down = (conv -> box) -> bias + lrelu; the non-fused path pools after the lrelu.
    conv = EqualizedConv2d(3, 5, 3, act="lrelu", resample="down", fused=True)
    with torch.no_grad():
        conv.bias.normal_()
    x = torch.randn(2, 3, 8, 8)
    w = conv.weight * conv.weight_scale
    ref = bias_act(downconv_ref(x, w), conv.bias, dim=1, act="lrelu", gain=1.0, impl="ref")
    close(conv(x), ref)
    conv.fused = False
    unfused = F.avg_pool2d(bias_act(F.conv2d(x, w, padding=1), conv.bias, dim=1, act="lrelu",
                                    gain=1.0, impl="ref"), 2)
    close(conv(x), unfused)


# --------------------------------------------------------------------------------------------
# The networks


def tiny(fused_scale, max_res=32, **kw):
    return ModelConfig(max_res=max_res, fmap_base=64, fmap_max=16, latent_dim=16,
                       fused_scale=fused_scale, **kw)


def _pair(kind, **kw):
    """The same weights in a never- and an always-fused network."""
    build = build_generator if kind == "G" else build_discriminator
    torch.manual_seed(0)
    a = build(tiny("never", **kw))
    b = build(tiny("always", **kw))
    missing = b.load_state_dict(a.state_dict())                    # same names and shapes
    assert not missing.missing_keys and not missing.unexpected_keys
    assert [(k, v.shape) for k, v in a.state_dict().items()] == \
        [(k, v.shape) for k, v in b.state_dict().items()]
    return a, b


@pytest.mark.parametrize("res,alpha", [(8, 1.0), (16, 0.5), (32, 1.0)])
def test_generator_fused_equals_unfused(res, alpha):
    a, b = _pair("G")
    z = torch.randn(3, 16)
    ya, yb = a(z, res=res, alpha=alpha), b(z, res=res, alpha=alpha)
    # Through up to 4 blocks the per-layer rounding (REL) compounds, and PixelNorm divides
    # by per-pixel norms that can be small: 1e-4 of the largest value (measured: 1.6e-5 at
    # 32 px); a wrong kernel is off by O(1).
    close(yb, ya, rel=1e-4)
    ga = torch.autograd.grad(ya.square().sum(), list(a.parameters()), allow_unused=True)
    gb = torch.autograd.grad(yb.square().sum(), list(b.parameters()), allow_unused=True)
    for x, y in zip(ga, gb):
        assert (x is None) == (y is None)
        if x is not None:
            close(y, x, rel=1e-4)


def test_discriminator_fused_follows_its_reference_and_is_trainable_with_gp():
    a, b = _pair("D")
    img = torch.randn(4, 3, 16, 16, requires_grad=True)
    # Different functions (lrelu before vs after the pool), the same parameters: both finite,
    # and the fused one is exactly its reference, per block, which
    # test_equalized_conv_down_fused_is_pggan_fused_path checks.
    assert b.blocks["16"].conv1.fused and not a.blocks["16"].conv1.fused
    score = b(img, alpha=0.5)
    (g,) = torch.autograd.grad(score.sum(), img, create_graph=True)
    g.square().sum().backward()                                    # double backward runs
    assert all(torch.isfinite(p.grad).all() for p in b.parameters() if p.grad is not None)
    assert b.blocks["16"].conv1.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("kind", ["G", "D"])
@pytest.mark.parametrize("res", [8, 32])
def test_fade_in_exact_at_alpha_zero_when_fused(kind, res):
    torch.manual_seed(0)
    if kind == "G":
        G = build_generator(tiny("always"))
        z = torch.randn(3, 16)
        with torch.no_grad():
            grown, smaller = G(z, res=res, alpha=0.0), G(z, res=res // 2, alpha=1.0)
        assert (grown - upsample2d(smaller)).abs().max().item() <= 1e-6
        return
    D = build_discriminator(tiny("always"))
    img = torch.randn(4, 3, res, res)
    with torch.no_grad():
        grown = D(img, alpha=0.0)
        smaller = D(F.avg_pool2d(img, 2), alpha=1.0)
    assert (grown - smaller).abs().max().item() <= 1e-6


def test_auto_picks_by_resolution():
    G = build_generator(tiny("auto", max_res=64))
    D = build_discriminator(tiny("auto", max_res=64))
    for r in (8, 16, 32, 64):
        want = r >= FUSED_SCALE_AUTO_RES
        assert G.blocks[str(r)].conv0.fused == want
        assert D.blocks[str(r)].conv1.fused == want
    Dn = build_discriminator(tiny("never", max_res=64))
    assert not any(b.conv1.fused for b in Dn.blocks.values())
    # StyleGAN-style D blurs with its FIR before the down: never box-fused.
    Ds = build_discriminator(tiny("always", max_res=16, arch="stylegan"))
    assert not any(b.conv1.fused for b in Ds.blocks.values())


# --------------------------------------------------------------------------------------------
# StyleGAN-style: transposed conv + FIR once (StyleGAN2's conv2d_resample)


@pytest.mark.parametrize("taps", [(1, 3, 3, 1), (1, 1), (1, 2, 3, 1), (1, 2, 1)])
@pytest.mark.parametrize("shape", [(1, 1, 1, 1, 1), (3, 5, 7, 6, 4), (2, 3, 4, 4, 2)])
def test_fir_up_fused_equals_its_reference(taps, shape):
    from pggan.ops.resample_conv import conv3x3_fir_up
    x, w = _inputs(shape)
    ref = _grads(lambda a, b: conv3x3_fir_up(a, b, taps, fused=False), x, w)
    got = _grads(lambda a, b: conv3x3_fir_up(a, b, taps, fused=True), x, w)
    assert got[0].shape == (shape[0], shape[4], 2 * shape[2], 2 * shape[3])
    for r, g in zip(ref, got):
        close(g, r)


def test_fir_up_reference_is_the_old_path_inside_the_border():
    # Away from the one-pixel border the conv never sees padding: the old "FIR up, then
    # zero-padded conv" and StyleGAN2's composition agree there exactly (float64).
    from pggan.ops.resample_conv import upconv_fir_ref
    x, w = _inputs((2, 3, 6, 5, 4), torch.float64)
    old = F.conv2d(upsample2d(x, mode="fir", taps=(1, 3, 3, 1)), w, padding=1)
    new = upconv_fir_ref(x, w, (1, 3, 3, 1))
    torch.testing.assert_close(new[..., 1:-1, 1:-1], old[..., 1:-1, 1:-1])
    assert (new - old).abs().max() > 1e-3                     # and the border differs


def test_stylegan_fused_blocks_and_checkpoints():
    kw = dict(arch="stylegan", w_dim=16, mapping_layers=2, style_mixing_prob=0.0)
    torch.manual_seed(0)
    a = build_generator(tiny("never", max_res=16, **kw)).eval()
    b = build_generator(tiny("always", max_res=16, **kw)).eval()
    b.load_state_dict(a.state_dict())                           # same parameters
    assert b.blocks["16"].conv0.fused and not a.blocks["16"].conv0.fused
    assert not b.blocks["16"].conv1.fused                       # only the up conv
    z = torch.randn(2, 16)
    ya, yb = a(z, res=16, noise_mode="const"), b(z, res=16, noise_mode="const")
    assert torch.isfinite(yb).all() and ya.shape == yb.shape
    with torch.no_grad():                                       # fade-in exact when fused
        grown = b(z, res=16, alpha=0.0, noise_mode="const")
        smaller = b(z, res=8, alpha=1.0, noise_mode="const")
    assert (grown - upsample2d(smaller)).abs().max().item() <= 1e-6
