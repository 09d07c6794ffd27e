"""fade_in: Triton kernels (under the interpreter) against the reference."""
import pytest
import torch

from pggan.ops.fade_in import fade_in, fade_in_ref
from triton_op_checks import compare, make, needs_interpreter

pytestmark = needs_interpreter

SHAPES = [((1, 3, 4, 4), False), ((2, 5, 3, 7), False), ((2, 5, 3, 7), True), ((3, 17), False)]


@pytest.mark.parametrize("shape,channels_last", SHAPES)
@pytest.mark.parametrize("alpha", [0.0, 0.3, 0.5, 0.9, 1.0])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_matches_reference(shape, channels_last, alpha, dtype):
    old, new = make(shape, dtype, channels_last), make(shape, dtype)
    y = compare(lambda a, b: fade_in(a, b, alpha, impl="triton"),
                lambda a, b: fade_in_ref(a, b, alpha), [old, new], dtype)
    if channels_last:
        assert y.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("alpha", [0.0, 0.25, 0.75, 1.0])
def test_bitwise_equal_to_torch_lerp_and_exact_endpoints(alpha):
    old, new = make((3, 5, 7, 7), torch.float32), make((3, 5, 7, 7), torch.float32)
    y = fade_in(old, new, alpha, impl="triton")
    assert torch.equal(y, fade_in_ref(old, new, alpha))
    if alpha == 0.0:
        assert torch.equal(y, old)
    if alpha == 1.0:
        assert torch.equal(y, new)


def test_mixed_dtypes_follow_reference():
    # new is cast to old's dtype (reference); gradients come back in each input's own dtype.
    old, new = make((2, 3, 4, 4), torch.float32), make((2, 3, 4, 4), torch.bfloat16)
    a, b = old.clone().requires_grad_(True), new.clone().requires_grad_(True)
    y = fade_in(a, b, 0.4, impl="triton")
    assert y.dtype == torch.float32
    torch.testing.assert_close(y, fade_in_ref(old, new, 0.4))
    y.sum().backward()
    assert a.grad.dtype == torch.float32 and b.grad.dtype == torch.bfloat16
    torch.testing.assert_close(a.grad, torch.full_like(old, 0.6))


def test_float64_gradcheck_and_gradgradcheck():
    d = dict(dtype=torch.float64, requires_grad=True)
    a, b = torch.randn(2, 3, 2, 1, **d), torch.randn(2, 3, 2, 1, **d)
    for alpha in (0.3, 0.8):
        f = lambda a, b: fade_in(a, b, alpha, impl="triton")  # noqa: E731
        assert torch.autograd.gradcheck(f, (a, b))
        assert torch.autograd.gradgradcheck(f, (a, b))


def test_reference_float64_gradcheck_endpoints():
    d = dict(dtype=torch.float64, requires_grad=True)
    a, b = torch.randn(1, 3, 3, 1, **d), torch.randn(1, 3, 3, 1, **d)
    for alpha in (0.0, 1.0):
        f = lambda a, b: fade_in_ref(a, b, alpha)  # noqa: E731
        assert torch.autograd.gradcheck(f, (a, b))
        assert torch.autograd.gradgradcheck(f, (a, b))
