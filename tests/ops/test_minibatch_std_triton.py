"""minibatch_std: Triton kernels (under the interpreter) against the reference."""
import pytest
import torch

import pggan.ops._triton_utils as triton_utils
from pggan.ops.minibatch_std import minibatch_std, minibatch_std_ref
from triton_op_checks import compare, make, needs_interpreter

pytestmark = needs_interpreter

# (shape, group_size, num_channels, channels_last). Covers N=1 (stddev of one sample: sqrt(eps)),
# the group fallback (N=6, group 4 -> 3; N=5 -> 1; N=2 -> 2), several groups of consecutive
# samples, odd channel counts, two feature groups, 4x4 and non-power-of-two sizes.
CASES = [
    ((1, 3, 4, 4), 4, 1, False),
    ((4, 5, 4, 4), 4, 1, False),
    ((6, 3, 3, 5), 4, 1, False),
    ((6, 3, 3, 5), 4, 1, True),
    ((5, 2, 2, 3), 4, 1, False),
    ((8, 6, 4, 4), 4, 2, True),
    ((2, 7, 1, 5), 4, 1, False),
]


@pytest.mark.parametrize("shape,group,fgroups,channels_last", CASES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_matches_reference(shape, group, fgroups, channels_last, dtype):
    x = make(shape, dtype, channels_last)
    y = compare(lambda t: minibatch_std(t, group, fgroups, impl="triton"),
                lambda t: minibatch_std_ref(t, group, fgroups), [x], dtype)
    assert y.shape == (shape[0], shape[1] + fgroups, shape[2], shape[3])
    if channels_last:
        assert y.is_contiguous(memory_format=torch.channels_last)


def test_groups_of_two_first_order():
    # With two samples per group (x - mean) / std is +-1: the second derivative along x is zero
    # up to rounding noise amplified by 1 / std, so only forward and first gradients are compared.
    x = make((8, 6, 4, 4), torch.float32, channels_last=True)
    compare(lambda t: minibatch_std(t, 2, 2, impl="triton"),
            lambda t: minibatch_std_ref(t, 2, 2), [x], torch.float32, second=False)


def test_contiguous_groups_not_strided():
    # Samples 0-1 form one group and 2-3 the other (consecutive), not (0, 2) and (1, 3).
    x = torch.tensor([0.0, 2.0, 10.0, 14.0]).reshape(4, 1, 1, 1)
    y = minibatch_std(x, group_size=2, eps=0.0, impl="triton")
    torch.testing.assert_close(y[:, 1].flatten(), torch.tensor([1.0, 1.0, 2.0, 2.0]))


def test_many_tiles_with_gpu_sized_blocks(monkeypatch):
    # Statistics of one group split over many programs, summed from per-tile partial sums.
    monkeypatch.setattr(triton_utils, "INTERPRETER_TILE_ELEMS", 64)
    for cl in (False, True):
        x = make((8, 9, 5, 7), torch.float32, cl)
        compare(lambda t: minibatch_std(t, 4, 3, impl="triton"),
                lambda t: minibatch_std_ref(t, 4, 3), [x], torch.float32)


def test_noncontiguous_input():
    x = make((4, 6, 6, 5), torch.float32)[:, 1::2, :, 1:]           # not dense in any order
    torch.testing.assert_close(minibatch_std(x, impl="triton"), minibatch_std_ref(x),
                               atol=2e-6, rtol=2e-5)


def test_float64_gradcheck_and_gradgradcheck():
    d = dict(dtype=torch.float64, requires_grad=True)
    x = torch.randn(3, 4, 1, 2, **d)                                # group 4 -> 3, F = 2
    f = lambda t: minibatch_std(t, 4, 2, impl="triton")  # noqa: E731
    assert torch.autograd.gradcheck(f, (x,))
    assert torch.autograd.gradgradcheck(f, (x,))


def test_reference_float64_gradcheck_fallback_and_feature_groups():
    d = dict(dtype=torch.float64, requires_grad=True)
    for shape, group, fgroups in [((6, 2, 2, 1), 4, 1), ((4, 4, 1, 2), 2, 2), ((1, 2, 2, 2), 4, 1)]:
        x = torch.randn(*shape, **d)
        f = lambda t: minibatch_std_ref(t, group, fgroups)  # noqa: E731
        assert torch.autograd.gradcheck(f, (x,))
        assert torch.autograd.gradgradcheck(f, (x,))
