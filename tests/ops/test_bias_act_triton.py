"""bias_act: Triton kernels (under the interpreter) against the reference."""
import math

import pytest
import torch

import pggan.ops._triton_utils as triton_utils
from pggan.ops.bias_act import bias_act, bias_act_ref
from triton_op_checks import compare, make, needs_interpreter

pytestmark = needs_interpreter

# (shape, dim, channels_last): N=1, odd channel counts, 4x4 and non-power-of-two sizes, the 2-D
# [N, features] case of dense layers and a bias along a dimension other than 1.
SHAPES = [
    ((1, 3, 4, 4), 1, False),
    ((2, 5, 3, 7), 1, False),
    ((2, 5, 3, 7), 1, True),
    ((3, 17), 1, False),
    ((5, 3, 6), 2, False),
]


def _ops(act, alpha, gain, clamp, dim, with_bias):
    def tri(x, *b):
        return bias_act(x, b[0] if b else None, dim, act, alpha, gain, clamp, impl="triton")

    def ref(x, *b):
        return bias_act_ref(x, b[0] if b else None, dim, act, alpha, gain, clamp)
    return tri, ref


def _away_from_clamp(x, b, dim, act, alpha, gain, clamp):
    """Move pre-activation values that land within 3% of +-clamp out of that band: at the
    boundary the mask depends on rounding order, which bf16 makes visible."""
    if clamp is None:
        return x
    shape = [1] * x.ndim
    shape[dim] = -1
    t = bias_act_ref(x.float(), b.float().reshape(-1), dim, act, alpha, gain)  # unclamped
    near = (t.abs() - clamp).abs() < 0.03 * clamp
    return torch.where(near, x + 0.2 * clamp * torch.sign(t) / (gain or 1.0), x)


@pytest.mark.parametrize("shape,dim,channels_last", SHAPES)
@pytest.mark.parametrize("act,clamp", [("linear", None), ("lrelu", None), ("relu", None),
                                       ("lrelu", 0.7), ("linear", 0.5)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_matches_reference(shape, dim, channels_last, act, clamp, dtype):
    x = make(shape, dtype, channels_last and len(shape) == 4)
    b = make((shape[dim],), torch.float32)                          # fp32 parameter, as in nets
    x = _away_from_clamp(x, b, dim, act, None, 1.0 if act == "linear" else math.sqrt(2), clamp)
    tri, ref = _ops(act, None, None, clamp, dim, True)
    y = compare(tri, ref, [x, b], dtype)
    if channels_last and len(shape) == 4:
        assert y.is_contiguous(memory_format=torch.channels_last)  # layout kept, no copy back


@pytest.mark.parametrize("act,alpha,gain,clamp", [
    ("lrelu", 0.2, 1.0, None),       # gain 1
    ("lrelu", -0.5, 2.0, None),      # negative slope: backward reads x, not y
    ("relu", None, -1.5, None),      # negative gain: y's sign no longer tells act'
    ("linear", None, 3.0, None),     # gain only
    ("lrelu", 0.2, math.sqrt(2), 0.0),  # clamp 0: everything zero, no gradient
])
def test_unusual_parameters(act, alpha, gain, clamp):
    x, b = make((2, 6, 3, 5), torch.float32), make((6,), torch.float32)
    tri, ref = _ops(act, alpha, gain, clamp, 1, True)
    compare(tri, ref, [x, b], torch.float32)


def test_without_bias_and_gradient_mask_at_exact_boundaries():
    # x + b == 0 exactly and act(x + b) * gain == clamp exactly: torch's rules (lrelu slope alpha
    # at 0, clamp gradient passes at the bounds) must be reproduced, not approximated.
    x = torch.tensor([[0.0, 1.0, -1.0, 0.5, 2.0, -2.0]])
    tri, ref = _ops("lrelu", 0.25, 2.0, 1.0, 1, False)
    compare(tri, ref, [x], torch.float32)
    tri, ref = _ops("relu", None, 1.0, None, 1, False)
    compare(tri, ref, [x], torch.float32)


def test_float64_gradcheck_and_gradgradcheck():
    d = dict(dtype=torch.float64, requires_grad=True)
    for act, clamp in [("lrelu", None), ("lrelu", 0.8)]:
        x, b = torch.randn(2, 3, 2, 1, **d), torch.randn(3, **d)

        def f(x, b):
            return bias_act(x, b, act=act, clamp=clamp, impl="triton")
        assert torch.autograd.gradcheck(f, (x, b))
        assert torch.autograd.gradgradcheck(f, (x, b))


def test_third_order_derivative_matches_reference():
    # The backward's backward is the backward kernel again, so any order exists; the third
    # derivative of a piecewise-linear op is zero, and its gradient w.r.t. the upstream
    # gradients must still match the reference.
    x, b = make((2, 3, 2, 2), torch.float32), make((3,), torch.float32)
    outs = []
    for impl in ("triton", "ref"):
        xx, bb = x.clone().requires_grad_(True), b.clone().requires_grad_(True)
        w = torch.linspace(-1, 1, x.numel()).reshape(x.shape).requires_grad_(True)
        y = bias_act(xx, bb, act="lrelu", impl=impl)
        gx, gb = torch.autograd.grad((y * w).sum(), (xx, bb), create_graph=True)
        gw, = torch.autograd.grad((gx.square()).sum() + gb.square().sum(), w, create_graph=True)
        gww, = torch.autograd.grad(gw.square().sum(), w)
        outs.append((gw.detach(), gww))
    torch.testing.assert_close(outs[0], outs[1], atol=1e-5, rtol=1e-5)


def test_many_row_tiles_and_channel_tiles(monkeypatch):
    # GPU-sized tiles split rows and channels over many programs; the bias gradient is then a
    # sum of per-tile partial sums. Shrink the interpreter's tile to take that path here.
    monkeypatch.setattr(triton_utils, "INTERPRETER_TILE_ELEMS", 64)
    for shape, cl in [((3, 37, 5, 3), False), ((3, 37, 5, 3), True), ((130, 9), False)]:
        x, b = make(shape, torch.float32, cl), make((shape[1],), torch.float32)
        tri, ref = _ops("lrelu", None, None, None, 1, True)
        compare(tri, ref, [x, b], torch.float32, grad_scale=4.0)


def test_noncontiguous_input_and_expanded_gradient():
    x = make((4, 6, 5, 5), torch.float32)[:, ::2, 1:, :]          # strided view, not dense
    b = make((3,), torch.float32).requires_grad_(True)
    xt = x.clone().requires_grad_(True)
    y = bias_act(xt, b, act="lrelu", impl="triton")
    y.sum().backward()                                              # dy is an expanded scalar
    xr = x.clone().requires_grad_(True)
    br = b.detach().clone().requires_grad_(True)
    bias_act_ref(xr, br, act="lrelu").sum().backward()
    torch.testing.assert_close(y, bias_act_ref(x, b.detach(), act="lrelu"))
    torch.testing.assert_close(xt.grad, xr.grad)
    torch.testing.assert_close(b.grad, br.grad, atol=1e-5, rtol=1e-5)


def test_reference_float64_gradcheck_awkward_cases():
    d = dict(dtype=torch.float64, requires_grad=True)
    for act, clamp, dim, shape in [("relu", None, 1, (1, 3, 2, 3)), ("lrelu", 0.9, 1, (2, 3, 3, 1)),
                                   ("linear", None, 0, (3, 4))]:
        x, b = torch.randn(*shape, **d), torch.randn(shape[dim], **d)

        def f(x, b):
            return bias_act_ref(x, b, dim, act, clamp=clamp)
        assert torch.autograd.gradcheck(f, (x, b))
        assert torch.autograd.gradgradcheck(f, (x, b))
