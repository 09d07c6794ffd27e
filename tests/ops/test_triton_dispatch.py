"""Dispatch of the four fused ops between reference and Triton (pggan/ops/_dispatch.py rules)."""
import pytest
import torch

from pggan.ops import (bias_act, demod_coefficients, fade_in, minibatch_std, noise_bias_act,
                       pixel_norm)
from triton_op_checks import needs_interpreter

CALLS = {
    "bias_act": lambda x, impl: bias_act(x, torch.zeros(x.shape[1]), act="lrelu", impl=impl),
    "pixel_norm": lambda x, impl: pixel_norm(x, impl=impl),
    "minibatch_std": lambda x, impl: minibatch_std(x, impl=impl),
    "fade_in": lambda x, impl: fade_in(x, x * 2, 0.3, impl=impl),
    "noise_bias_act": lambda x, impl: noise_bias_act(x, x[:, :1], torch.tensor(0.5), impl=impl),
    "demod_coefficients": lambda x, impl: demod_coefficients(x, x[:, :, 0, 0], impl=impl),
}
TRITON_NODES = {"bias_act": "_BiasActBackward", "pixel_norm": "_PixelNormBackward",
                "minibatch_std": "_MinibatchStdBackward", "fade_in": "_FadeInBackward",
                "noise_bias_act": "_NoiseBiasActBackward", "demod_coefficients": "_DemodBackward"}


@pytest.mark.parametrize("op", sorted(CALLS))
def test_auto_on_cpu_is_reference(op):
    x = torch.randn(2, 3, 4, 4, requires_grad=True)
    y = CALLS[op](x, "auto")
    assert type(y.grad_fn).__name__ != TRITON_NODES[op]


@needs_interpreter
@pytest.mark.parametrize("op", sorted(CALLS))
def test_triton_under_interpreter_uses_kernels(op):
    x = torch.randn(2, 3, 4, 4, requires_grad=True)
    assert type(CALLS[op](x, "triton").grad_fn).__name__ == TRITON_NODES[op]


@pytest.mark.parametrize("op", sorted(CALLS))
def test_triton_on_cpu_without_interpreter_raises_clearly(op, monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(RuntimeError, match=f"{op}: impl='triton' (needs CUDA|.*not installed)"):
        CALLS[op](torch.randn(2, 3, 4, 4), "triton")


@needs_interpreter
@pytest.mark.parametrize("op", sorted(CALLS))
def test_unsupported_dtype(op):
    x = torch.ones(2, 3, 4, 4, dtype=torch.int32)
    with pytest.raises(TypeError, match=f"{op}: the Triton kernels take"):
        CALLS[op](x, "triton")
