"""noise_bias_act: reference against the unfused chain, shapes, gradients, dispatch."""
import math

import pytest
import torch
import torch.nn.functional as F

from pggan.ops.noise_bias_act import noise_bias_act, noise_bias_act_ref


@pytest.mark.parametrize("shape", [(1, 1, 1, 1), (3, 5, 7, 6), (2, 16, 4, 4)])
@pytest.mark.parametrize("act,gain", [("lrelu", None), ("linear", None), ("relu", 0.5)])
@pytest.mark.parametrize("per_sample", [True, False])
def test_matches_unfused_chain(shape, act, gain, per_sample):
    n, c, h, w = shape
    x = torch.randn(shape, dtype=torch.float64)
    noise = torch.randn(n if per_sample else 1, 1, h, w, dtype=torch.float64)
    strength, b = torch.tensor(0.7, dtype=torch.float64), torch.randn(c, dtype=torch.float64)
    y = noise_bias_act(x, noise, strength, b, act=act, gain=gain)
    pre = x + noise * 0.7 + b[None, :, None, None]
    expect = {"lrelu": F.leaky_relu(pre, 0.2) * math.sqrt(2), "linear": pre,
              "relu": F.relu(pre) * 0.5}[act]
    torch.testing.assert_close(y, expect, rtol=1e-12, atol=1e-12)


def test_no_noise_and_clamp():
    x, b = torch.randn(2, 3, 4, 4), torch.randn(3)
    y = noise_bias_act(x, None, None, b, act="linear")
    torch.testing.assert_close(y, x + b[None, :, None, None])
    y = noise_bias_act(x * 100, torch.randn(2, 1, 4, 4), torch.tensor(1.0), None, clamp=1.5)
    assert y.abs().max() <= 1.5


def test_gradients_and_double_backward():
    x = torch.randn(2, 3, 5, 4, dtype=torch.float64, requires_grad=True)
    noise = torch.randn(2, 1, 5, 4, dtype=torch.float64, requires_grad=True)
    strength = torch.tensor(0.3, dtype=torch.float64, requires_grad=True)
    b = torch.randn(3, dtype=torch.float64, requires_grad=True)
    f = lambda *a: noise_bias_act(*a, act="lrelu")                  # noqa: E731
    assert torch.autograd.gradcheck(f, (x, noise, strength, b))
    assert torch.autograd.gradgradcheck(f, (x, noise, strength, b))


def test_bad_noise_shape_and_impl(monkeypatch):
    x = torch.randn(2, 3, 4, 4)
    with pytest.raises(ValueError, match=r"\[N or 1, 1, H, W\]"):
        noise_bias_act(x, torch.randn(2, 3, 4, 4), torch.tensor(1.0))
    with pytest.raises(ValueError, match="noise"):
        noise_bias_act(x, torch.randn(2, 1, 8, 8), torch.tensor(1.0))
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(RuntimeError, match="needs CUDA tensors"):
        noise_bias_act(x, None, None, impl="triton")
    torch.testing.assert_close(noise_bias_act(x, impl="ref"), noise_bias_act_ref(x))
