"""demod_coefficients: Triton kernel (under the interpreter) against the reference."""
import pytest
import torch

from pggan.ops.demod import demod_coefficients, demod_coefficients_ref
from triton_op_checks import compare, needs_interpreter

pytestmark = needs_interpreter


@pytest.mark.parametrize("n,o,i,k", [(1, 1, 1, 1), (3, 5, 7, 3), (2, 16, 9, 1), (4, 3, 2, 3),
                                     (5, 70, 130, 3)])
def test_matches_reference(n, o, i, k):
    # The op's output is float32 by contract (also from bf16 styles): compare in fp32, with the
    # second gradients (the backward is torch ops, differentiable again).
    weight, styles = torch.randn(o, i, k, k), torch.randn(n, i)
    compare(lambda w, s: demod_coefficients(w, s, impl="triton"), demod_coefficients_ref,
            [weight, styles], torch.float32)


def test_bf16_styles_under_autocast():
    weight, styles = torch.randn(8, 32, 3, 3), torch.randn(4, 32).bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        d_t = demod_coefficients(weight, styles, impl="triton")
        d_r = demod_coefficients_ref(weight, styles)
    assert d_t.dtype == torch.float32
    torch.testing.assert_close(d_t, d_r, atol=0, rtol=2e-6)


def test_float64_inputs_against_brute_force():
    # float64 weights/styles are reduced in float64 and returned as float32 (the op's contract).
    weight, styles = torch.randn(6, 5, 3, 3, dtype=torch.float64), torch.randn(3, 5,
                                                                            dtype=torch.float64)
    brute = torch.rsqrt((weight[None] * styles[:, None, :, None, None]).square()
                        .sum(dim=(2, 3, 4)) + 1e-8)
    torch.testing.assert_close(demod_coefficients(weight, styles, impl="triton").double(), brute,
                               atol=0, rtol=1e-7)
