"""demod_coefficients: against the per-sample modulated weight of StyleGAN2 eq. 3."""
import pytest
import torch
import torch.nn.functional as F

from pggan.ops.demod import demod_coefficients, demod_coefficients_ref


def brute_force(weight, styles, eps=1e-8):
    """Build every sample's modulated weight [N, O, I, k, k] and take its norm per output."""
    w = weight[None] * styles[:, None, :, None, None]
    return torch.rsqrt(w.square().sum(dim=(2, 3, 4)) + eps)


@pytest.mark.parametrize("n,o,i,k", [(1, 1, 1, 1), (3, 5, 7, 3), (2, 16, 9, 1), (4, 3, 2, 3)])
def test_matches_brute_force(n, o, i, k):
    weight = torch.randn(o, i, k, k, dtype=torch.float64)
    styles = torch.randn(n, i, dtype=torch.float64)
    d = demod_coefficients(weight, styles)
    assert d.shape == (n, o) and d.dtype == torch.float32
    torch.testing.assert_close(d.double(), brute_force(weight, styles), rtol=1e-6, atol=0)


def test_demodulated_conv_has_unit_weight_norm():
    """The purpose: after demodulation each output's effective weight has unit L2 norm."""
    weight, styles = torch.randn(6, 4, 3, 3), torch.rand(3, 4) + 0.5
    d = demod_coefficients(weight, styles)                          # [N, O]
    w_eff = weight[None] * styles[:, None, :, None, None] * d[:, :, None, None, None]
    torch.testing.assert_close(w_eff.square().sum(dim=(2, 3, 4)), torch.ones(3, 6))
    # and equals the conv of the modulated input scaled per output (the non-fused path)
    x = torch.randn(3, 4, 5, 5)
    fused = torch.stack([F.conv2d(x[j:j + 1], w_eff[j], padding=1)[0] for j in range(3)])
    unfused = F.conv2d(x * styles[:, :, None, None], weight, padding=1) * d[:, :, None, None]
    torch.testing.assert_close(unfused, fused, rtol=1e-5, atol=1e-5)


def test_gradients():
    weight = torch.randn(3, 4, 3, 3, dtype=torch.float64, requires_grad=True)
    styles = torch.randn(2, 4, dtype=torch.float64, requires_grad=True)
    f = lambda w, s: demod_coefficients_ref(w, s).double()          # noqa: E731
    # the reference computes in float32: compare its gradients to the brute force instead
    g_ref = torch.autograd.grad(f(weight, styles).sum(), (weight, styles))
    g_bf = torch.autograd.grad(brute_force(weight, styles).sum(), (weight, styles))
    for a, b in zip(g_ref, g_bf):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_float32_under_bf16_autocast():
    weight, styles = torch.randn(8, 32, 3, 3), torch.randn(4, 32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        d = demod_coefficients(weight, styles.bfloat16())
    assert d.dtype == torch.float32
    torch.testing.assert_close(d, brute_force(weight, styles.bfloat16().float()),
                               rtol=1e-5, atol=0)


def test_bad_shapes_and_impl(monkeypatch):
    with pytest.raises(ValueError, match="styles"):
        demod_coefficients(torch.randn(3, 4, 3, 3), torch.randn(2, 5))
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(RuntimeError, match="needs CUDA tensors"):
        demod_coefficients(torch.randn(3, 4, 3, 3), torch.randn(2, 4), impl="triton")
