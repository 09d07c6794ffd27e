"""The compiled Triton kernels on a CUDA device against the references on the same device.

Needs a GPU and the compiler, not the interpreter: run with
    TRITON_INTERPRET=0 python -m pytest -m gpu tests/ops
(benchmarks/gpu_suite.sh does). Skipped without CUDA, and under TRITON_INTERPRET=1 (which
tests/conftest.py sets by default), because the interpreter would not test the compiled code.
"""
import math

import pytest
import torch

from pggan.config import ModelConfig
from pggan.nets import build_discriminator, build_generator
from pggan.ops import (bias_act, demod_coefficients, fade_in, minibatch_std, noise_bias_act,
                       pixel_norm)
from pggan.ops._dispatch import interpreter_enabled
from pggan.ops.bias_act import bias_act_ref
from pggan.ops.demod import demod_coefficients_ref
from pggan.ops.noise_bias_act import noise_bias_act_ref
from pggan.ops.fade_in import fade_in_ref
from pggan.ops.minibatch_std import minibatch_std_ref
from pggan.ops.pixel_norm import pixel_norm_ref
from triton_op_checks import compare, make

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
    pytest.mark.skipif(interpreter_enabled(), reason="TRITON_INTERPRET=1 is set: run with "
                       "TRITON_INTERPRET=0 to test the compiled kernels"),
]

DEV = "cuda"
# Shapes that take the GPU tilings: many row tiles, channel loops (512 channels), 4x4 maps,
# odd sizes, N=1.
SHAPES = [(1, 3, 4, 4), (8, 512, 4, 4), (4, 512, 8, 8), (3, 37, 19, 23), (2, 16, 64, 64)]
DTYPES = [torch.float32, torch.bfloat16]


@pytest.fixture
def no_tf32():
    # fp32 convs on TF32 would round inputs to 10 mantissa bits and hide the ops' own error.
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("dtype", DTYPES)
def test_bias_act(shape, channels_last, dtype):
    x, b = make(shape, dtype, channels_last, device=DEV), make((shape[1],), torch.float32,
                                                               device=DEV)
    compare(lambda x, b: bias_act(x, b, act="lrelu", impl="triton"),
            lambda x, b: bias_act_ref(x, b, act="lrelu"), [x, b], dtype, grad_scale=4.0)


@pytest.mark.parametrize("clamp", [None, 0.5])
def test_bias_act_dense_and_clamp(clamp):
    x, b = make((64, 8192), torch.float32, device=DEV), make((8192,), torch.float32, device=DEV)
    compare(lambda x, b: bias_act(x, b, act="lrelu", clamp=clamp, impl="triton"),
            lambda x, b: bias_act_ref(x, b, act="lrelu", clamp=clamp), [x, b], torch.float32,
            grad_scale=4.0)


@pytest.mark.parametrize("shape", SHAPES + [(32, 512)])
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("dtype", DTYPES)
def test_pixel_norm(shape, channels_last, dtype):
    x = make(shape, dtype, channels_last and len(shape) == 4, device=DEV)
    compare(lambda x: pixel_norm(x, impl="triton"), pixel_norm_ref, [x], dtype, grad_scale=4.0)


@pytest.mark.parametrize("shape", [(1, 3, 4, 4), (32, 512, 4, 4), (6, 37, 5, 7), (8, 16, 64, 64)])
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("dtype", DTYPES)
def test_minibatch_std(shape, channels_last, dtype):
    x = make(shape, dtype, channels_last, device=DEV)
    compare(lambda x: minibatch_std(x, 4, 1, impl="triton"),
            lambda x: minibatch_std_ref(x, 4, 1), [x], dtype, grad_scale=4.0)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("alpha", [0.0, 0.3, 0.7, 1.0])
@pytest.mark.parametrize("dtype", DTYPES)
def test_fade_in(shape, alpha, dtype):
    old, new = make(shape, dtype, device=DEV), make(shape, dtype, True, device=DEV)
    y = compare(lambda a, b: fade_in(a, b, alpha, impl="triton"),
                lambda a, b: fade_in_ref(a, b, alpha), [old, new], dtype)
    if alpha in (0.0, 1.0):
        assert torch.equal(y, old if alpha == 0.0 else new)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("noise_batch", ["per-sample", "shared"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_noise_bias_act(shape, noise_batch, dtype):
    n, c, h, w = shape
    x = make(shape, dtype, True, device=DEV)
    noise = make((n if noise_batch == "per-sample" else 1, 1, h, w), dtype, device=DEV)
    strength, b = torch.tensor(0.7, device=DEV), make((c,), torch.float32, device=DEV)
    compare(lambda *a: noise_bias_act(*a, impl="triton"), noise_bias_act_ref,
            [x, noise, strength, b], dtype, grad_scale=8.0)


@pytest.mark.parametrize("n,o,i,k", [(1, 3, 5, 3), (32, 512, 512, 3), (4, 37, 70, 1)])
def test_demod_coefficients(n, o, i, k, no_tf32):
    weight, styles = make((o, i, k, k), torch.float32, device=DEV), make((n, i), torch.float32,
                                                                        device=DEV)
    compare(lambda w, s: demod_coefficients(w, s, impl="triton"), demod_coefficients_ref,
            [weight, styles], torch.float32, grad_scale=4.0)


def test_auto_picks_triton_on_cuda():
    x = make((2, 3, 4, 4), torch.float32, device=DEV).requires_grad_(True)
    assert type(bias_act(x, None, act="lrelu").grad_fn).__name__ == "_BiasActBackward"
    assert type(pixel_norm(x).grad_fn).__name__ == "_PixelNormBackward"
    assert type(minibatch_std(x).grad_fn).__name__ == "_MinibatchStdBackward"
    assert type(fade_in(x, x, 0.5).grad_fn).__name__ == "_FadeInBackward"


def test_int64_offsets_beyond_2_pow_31_elements():
    # [32, 64, 1024, 1024] = 2^31 elements: offsets past int32 must not wrap.
    free, _ = torch.cuda.mem_get_info()
    numel = 32 * 64 * 1024 * 1024
    if free < 5 * numel * 2:
        pytest.skip("needs ~20 GiB of free GPU memory")
    x = torch.empty(32, 64, 1024, 1024, dtype=torch.bfloat16, device=DEV).normal_()
    b = torch.randn(64, device=DEV)
    y = bias_act(x, b, act="lrelu", impl="triton")
    for sl in (slice(0, 1), slice(31, 32)):
        torch.testing.assert_close(y[sl], bias_act_ref(x[sl], b, act="lrelu"), atol=2e-2,
                                   rtol=2e-2)
    del y
    old = x
    new = torch.flip(x[-1:], dims=[0]).expand_as(x)                # expanded: copied to dense
    y = fade_in(old, new, 0.25, impl="triton")
    torch.testing.assert_close(y[-1:], fade_in_ref(old[-1:], new[-1:], 0.25), atol=2e-2,
                               rtol=2e-2)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_d_and_g_step_match_reference(dtype, no_tf32):
    cfg = dict(max_res=32, fmap_base=512, fmap_max=64, latent_dim=64)
    res, alpha, batch = 32, 0.5, 8
    results = {}
    for impl in ("triton", "ref"):
        torch.manual_seed(0)
        G = build_generator(ModelConfig(impl=impl, **cfg)).to(DEV)
        D = build_discriminator(ModelConfig(impl=impl, **cfg)).to(DEV)
        gen = torch.Generator(device=DEV).manual_seed(1)
        z = torch.randn(batch, 64, device=DEV, generator=gen)
        reals = torch.randn(batch, 3, res, res, device=DEV, generator=gen)
        mix = torch.rand(batch, 1, 1, 1, device=DEV, generator=gen)
        with torch.autocast(DEV, dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
            with torch.no_grad():
                fakes = G(z, res=res, alpha=alpha).float()
            x_hat = (mix * reals + (1 - mix) * fakes).requires_grad_(True)
            d_real, d_fake = D(reals, alpha=alpha).float(), D(fakes, alpha=alpha).float()
            d_hat = D(x_hat, alpha=alpha).float()
        grad, = torch.autograd.grad(d_hat.sum(), x_hat, create_graph=True)
        penalty = (grad.float().flatten(1).norm(dim=1) - 1).square().mean()
        d_loss = (d_fake - d_real).mean() + 10 * penalty + 1e-3 * d_real.square().mean()
        d_loss.backward()
        d_grads = [p.grad.float().clone() for p in D.parameters() if p.grad is not None]
        D.zero_grad(set_to_none=True)
        with torch.autocast(DEV, dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
            g_loss = -D(G(z, res=res, alpha=alpha), alpha=alpha).float().mean()
        g_loss.backward()
        g_grads = [p.grad.float().clone() for p in G.parameters() if p.grad is not None]
        results[impl] = (d_loss.detach(), g_loss.detach(), d_grads, g_grads)
    (dl_t, gl_t, dg_t, gg_t), (dl_r, gl_r, dg_r, gg_r) = results["triton"], results["ref"]
    # fp32: cuDNN may pick different conv algorithms per call, so a little more than on CPU.
    # bf16: every layer rounds to 8 mantissa bits, in a different order on each side; compare
    # the whole gradient of each net by direction and norm rather than elementwise.
    if dtype == torch.float32:
        torch.testing.assert_close(dl_t, dl_r, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(gl_t, gl_r, atol=1e-4, rtol=1e-4)
        for a, b in zip(dg_t + gg_t, dg_r + gg_r):
            torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-3)
    else:
        assert math.isclose(dl_t.item(), dl_r.item(), rel_tol=5e-2, abs_tol=5e-2)
        for t, r in ((dg_t, dg_r), (gg_t, gg_r)):
            a = torch.cat([g.flatten() for g in t])
            b = torch.cat([g.flatten() for g in r])
            cos = torch.nn.functional.cosine_similarity(a, b, dim=0).item()
            assert cos > 0.99 and abs(a.norm().item() / b.norm().item() - 1) < 0.05, cos
