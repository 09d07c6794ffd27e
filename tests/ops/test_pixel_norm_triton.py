"""pixel_norm: Triton kernels (under the interpreter) against the reference."""
import pytest
import torch

import pggan.ops._triton_utils as triton_utils
from pggan.ops.pixel_norm import pixel_norm, pixel_norm_ref
from triton_op_checks import compare, make, needs_interpreter

pytestmark = needs_interpreter

# (shape, dim, channels_last): N=1, odd channel counts, 4x4 and non-power-of-two sizes, the
# [N, latent] input of G, a normalised dimension other than 1.
SHAPES = [
    ((1, 3, 4, 4), 1, False),
    ((2, 5, 3, 7), 1, False),
    ((2, 5, 3, 7), 1, True),
    ((3, 17), 1, False),
    ((4, 6, 5), -1, False),
]


def _ops(dim, eps=1e-8):
    return ((lambda x: pixel_norm(x, dim, eps, impl="triton")),
            (lambda x: pixel_norm_ref(x, dim, eps)))


@pytest.mark.parametrize("shape,dim,channels_last", SHAPES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_matches_reference(shape, dim, channels_last, dtype):
    x = make(shape, dtype, channels_last, scale=3.0)
    y = compare(*_ops(dim), [x], dtype)
    if channels_last:
        assert y.is_contiguous(memory_format=torch.channels_last)


def test_tiny_vectors_and_large_eps():
    # eps dominates near-zero feature vectors; all-zero rows must stay zero with finite grads.
    x = make((2, 3, 2, 2), torch.float32) * 1e-3
    x[0, :, 0, 0] = 0.0
    compare(*_ops(1, eps=1e-4), [x], torch.float32)


@pytest.mark.parametrize("shape,channels_last", [((2, 37, 3, 5), False), ((2, 37, 3, 5), True),
                                                 ((9, 70), False)])
def test_channel_loop_with_gpu_sized_tiles(monkeypatch, shape, channels_last):
    # With C larger than a tile's channel extent, a program walks the channels twice (sums, then
    # writes): the path GPU tiles take for 512 channels. Shrink the interpreter's tile to take it.
    monkeypatch.setattr(triton_utils, "INTERPRETER_TILE_ELEMS", 64)
    compare(*_ops(1), [make(shape, torch.float32, channels_last)], torch.float32)


def test_float64_gradcheck_and_gradgradcheck():
    d = dict(dtype=torch.float64, requires_grad=True)
    x = torch.randn(2, 5, 2, 1, **d)
    f = lambda x: pixel_norm(x, impl="triton")  # noqa: E731
    assert torch.autograd.gradcheck(f, (x,))
    assert torch.autograd.gradgradcheck(f, (x,))


def test_third_order_derivative_matches_reference():
    x = make((2, 5, 2, 2), torch.float32)
    outs = []
    for impl in ("triton", "ref"):
        xx = x.clone().requires_grad_(True)
        w = torch.linspace(-1, 1, x.numel()).reshape(x.shape)
        gx, = torch.autograd.grad((pixel_norm(xx, impl=impl) * w).sum(), xx, create_graph=True)
        g2, = torch.autograd.grad(gx.square().sum(), xx, create_graph=True)
        g3, = torch.autograd.grad(g2.square().sum(), xx)
        outs.append((g2.detach(), g3))
    torch.testing.assert_close(outs[0], outs[1], atol=1e-4, rtol=1e-4)


def test_reference_float64_gradcheck_awkward_cases():
    d = dict(dtype=torch.float64, requires_grad=True)
    for shape, dim in [((1, 3, 1, 3), 1), ((3, 7), 1), ((2, 3, 4), 2)]:
        x = torch.randn(*shape, **d)
        f = lambda x: pixel_norm_ref(x, dim)  # noqa: E731
        assert torch.autograd.gradcheck(f, (x,))
        assert torch.autograd.gradgradcheck(f, (x,))
