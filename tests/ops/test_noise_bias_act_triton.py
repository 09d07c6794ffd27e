"""noise_bias_act: Triton kernel (under the interpreter) against the reference."""
import pytest
import torch

import pggan.ops._triton_utils as triton_utils
from pggan.ops.noise_bias_act import noise_bias_act, noise_bias_act_ref
from triton_op_checks import compare, make, needs_interpreter

pytestmark = needs_interpreter

# (shape, noise batch, channels_last): per-sample and shared ([1, 1, H, W]) noise, N=1, odd
# channel counts, 4x4 and non-power-of-two sizes.
CASES = [
    ((1, 3, 4, 4), 1, False),
    ((2, 5, 3, 7), 2, False),
    ((2, 5, 3, 7), 1, True),
    ((3, 4, 5, 5), 3, True),
]


def _ops(act, clamp):
    def tri(x, noise, s, b):
        return noise_bias_act(x, noise, s, b, act, clamp=clamp, impl="triton")

    def ref(x, noise, s, b):
        return noise_bias_act_ref(x, noise, s, b, act, clamp=clamp)
    return tri, ref


@pytest.mark.parametrize("shape,noise_batch,channels_last", CASES)
@pytest.mark.parametrize("act", ["lrelu", "linear", "relu"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_matches_reference(shape, noise_batch, channels_last, act, dtype):
    n, c, h, w = shape
    x, noise = make(shape, dtype, channels_last), make((noise_batch, 1, h, w), dtype)
    strength, b = torch.tensor(0.7), make((c,), torch.float32)     # fp32 parameters
    y = compare(*_ops(act, None), [x, noise, strength, b], dtype, grad_scale=4.0)
    if channels_last:
        assert y.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("noise_batch", [1, 2])
def test_clamp_and_no_strength(noise_batch):
    # With clamp the backward reads the pre-activation, not the output.
    x, noise = make((2, 5, 3, 4), torch.float32, scale=2.0), make((noise_batch, 1, 3, 4),
                                                                   torch.float32)
    strength, b = torch.tensor(-0.4), make((5,), torch.float32)
    compare(*_ops("lrelu", 0.8), [x, noise, strength, b], torch.float32)
    compare(lambda x, noise, b: noise_bias_act(x, noise, None, b, clamp=0.8, impl="triton"),
            lambda x, noise, b: noise_bias_act_ref(x, noise, None, b, clamp=0.8), [x, noise, b],
            torch.float32)


def test_many_tiles(monkeypatch):
    monkeypatch.setattr(triton_utils, "INTERPRETER_TILE_ELEMS", 64)
    for cl in (False, True):
        x, noise = make((3, 37, 5, 3), torch.float32, cl), make((3, 1, 5, 3), torch.float32)
        compare(*_ops("lrelu", None), [x, noise, torch.tensor(0.5), make((37,), torch.float32)],
                torch.float32, grad_scale=4.0)


def test_without_noise_is_bias_act():
    x, b = make((2, 3, 4, 4), torch.float32), make((3,), torch.float32)
    torch.testing.assert_close(noise_bias_act(x, None, None, b, impl="triton"),
                               noise_bias_act_ref(x, None, None, b))


def test_float64_gradcheck_and_gradgradcheck():
    d = dict(dtype=torch.float64, requires_grad=True)
    x, b = torch.randn(2, 2, 2, 1, **d), torch.randn(2, **d)
    strength = torch.tensor(0.3, **d)
    for noise, clamp in [(torch.randn(2, 1, 2, 1, **d), None), (torch.randn(1, 1, 2, 1, **d), 0.6)]:
        def f(x, noise, strength, b):
            return noise_bias_act(x, noise, strength, b, act="lrelu", clamp=clamp, impl="triton")
        assert torch.autograd.gradcheck(f, (x, noise, strength, b))
        assert torch.autograd.gradgradcheck(f, (x, noise, strength, b))
