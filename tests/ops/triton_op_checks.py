"""Shared checks for the Triton op tests: an op against its reference on the same inputs, for the
output, every input gradient and every second gradient.

The second-gradient check differentiates a scalar built from the first gradients (a fixed
random projection of each) with respect to every input and to the output weights `w` (the
upstream gradient), so both halves of each double backward are exercised, as in a gradient
penalty: d/dx <v, d<w, f(x)>/dx> and d/dw of the same.
"""
from __future__ import annotations

import pytest
import torch

from pggan.ops._dispatch import interpreter_enabled, triton_available

# (atol, rtol). fp32: a few ulps of the values involved. bf16: the reference itself rounds to
# bf16 after every torch op (8 mantissa bits, ~0.4% each), the Triton kernels once at the end.
TOL = {
    torch.float64: (1e-12, 1e-10),
    torch.float32: (2e-6, 2e-5),
    torch.bfloat16: (2e-2, 2e-2),
}

needs_interpreter = pytest.mark.skipif(
    not (triton_available() and interpreter_enabled()),
    reason="needs triton and TRITON_INTERPRET=1 (set by tests/conftest.py) to run the Triton "
           "kernels on CPU")


def assert_close(actual, expected, dtype, what, scale=1.0):
    atol, rtol = TOL[dtype]
    torch.testing.assert_close(actual.float(), expected.float(), atol=atol * scale, rtol=rtol,
                               msg=lambda m: f"{what}: {m}")


def make(shape, dtype, channels_last=False, scale=1.0, device="cpu"):
    t = (torch.randn(shape, dtype=torch.float32, device=device) * scale).to(dtype)
    if channels_last:
        t = t.to(memory_format=torch.channels_last)
    return t


def compare(fn_triton, fn_ref, inputs, dtype, second=True, grad_scale=1.0):
    """Check forward, gradients and second gradients of fn_triton against fn_ref.

    inputs: tensors (leaves are re-created per side). Returns the Triton output."""
    def leaves():
        return [t.detach().clone().requires_grad_(True) for t in inputs]

    xs_t, xs_r = leaves(), leaves()
    y_t, y_r = fn_triton(*xs_t), fn_ref(*xs_r)
    assert y_t.shape == y_r.shape and y_t.dtype == y_r.dtype
    assert_close(y_t, y_r, dtype, "forward")

    w = torch.randn(y_r.shape, device=y_r.device).to(dtype)        # upstream gradient
    w_t, w_r = w.clone().requires_grad_(True), w.clone().requires_grad_(True)
    g_t = torch.autograd.grad((y_t * w_t).sum(), xs_t, create_graph=second)
    g_r = torch.autograd.grad((y_r * w_r).sum(), xs_r, create_graph=second)
    for i, (a, b) in enumerate(zip(g_t, g_r)):
        assert a.dtype == b.dtype, f"grad {i} dtype"
        assert_close(a, b, dtype, f"grad of input {i}", scale=grad_scale)
    if not second:
        return y_t

    vs = [torch.randn(g.shape, device=g.device).to(g.dtype) for g in g_r]
    s_t = sum((g * v).sum() for g, v in zip(g_t, vs))
    s_r = sum((g * v).sum() for g, v in zip(g_r, vs))
    gg_t = torch.autograd.grad(s_t, xs_t + [w_t], allow_unused=True)
    gg_r = torch.autograd.grad(s_r, xs_r + [w_r], allow_unused=True)
    names = [f"input {i}" for i in range(len(xs_t))] + ["upstream grad"]
    for name, a, b in zip(names, gg_t, gg_r):
        if a is None or b is None:
            # The reference may leave a zero second derivative unconnected (or vice versa).
            other = b if a is None else a
            assert other is None or torch.count_nonzero(other) == 0, f"2nd grad of {name}"
            continue
        assert_close(a, b, dtype, f"second grad of {name}", scale=grad_scale)
    return y_t
