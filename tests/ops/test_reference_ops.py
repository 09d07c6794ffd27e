"""Reference ops: hand-computed values, float64 gradcheck, dispatch errors."""
import math

import pytest
import torch

from pggan.ops import (bias_act, blur2d, downsample2d, fade_in, minibatch_std,
                       pixel_norm, upsample2d)
from pggan.ops.minibatch_std import effective_group_size


def test_minibatch_std_hand_computed():
    # Batch of 4, one group of 4, one channel, 1x1 pixels: values 1, 2, 3, 6.
    x = torch.tensor([1.0, 2.0, 3.0, 6.0]).reshape(4, 1, 1, 1)
    y = minibatch_std(x, group_size=4, eps=0.0)
    # mean 3, deviations -2 -1 0 3, population variance (4+1+0+9)/4 = 3.5
    assert y.shape == (4, 2, 1, 1)
    assert torch.allclose(y[:, 1].flatten(), torch.full((4,), math.sqrt(3.5)))
    assert torch.equal(y[:, 0], x[:, 0])


def test_minibatch_std_two_groups_and_channels_average():
    a = torch.tensor([0.0, 2.0])        # group 1 pixel stds: 1
    b = torch.tensor([0.0, 4.0])        # group 2: 2
    x = torch.stack([torch.stack([a[0], b[0]]), torch.stack([a[1], b[1]])])  # [2, 2]
    x = torch.cat([x, x + 10]).reshape(4, 2, 1, 1)  # groups of 2: samples (0,1) and (2,3)
    y = minibatch_std(x, group_size=2, eps=0.0)
    # per group: stds over channels are (1, 2) -> averaged to 1.5 in both groups
    assert torch.allclose(y[:, 2].flatten(), torch.full((4,), 1.5))


def test_minibatch_std_group_fallback_documented():
    assert effective_group_size(6, 4) == 3
    assert effective_group_size(5, 4) == 1
    assert effective_group_size(8, 4) == 4
    assert effective_group_size(2, 4) == 2
    x = torch.randn(6, 3, 4, 4)
    y = minibatch_std(x, group_size=4)
    manual = torch.cat([minibatch_std(x[i:i + 3], group_size=3) for i in (0, 3)])
    assert torch.allclose(y, manual)
    assert torch.allclose(minibatch_std(x[:1], group_size=4)[:, 3], torch.full((1, 4, 4), 1e-4))


def test_bias_act_values():
    x = torch.tensor([[-1.0, 2.0], [3.0, -4.0]])
    b = torch.tensor([0.5, -1.0])
    y = bias_act(x, b, act="lrelu")
    expect = torch.tensor([[-0.1, 1.0], [3.5, -1.0]]) * math.sqrt(2)
    assert torch.allclose(y, expect)
    assert torch.allclose(bias_act(x, b, act="lrelu", gain=1.0, clamp=1.2),
                          torch.tensor([[-0.1, 1.0], [1.2, -1.0]]))
    assert torch.equal(bias_act(x, None, act="linear"), x)
    with pytest.raises(ValueError, match="does not match"):
        bias_act(x, torch.zeros(3))


def test_pixel_norm_unit_rms():
    x = torch.randn(3, 7, 5, 5) * 4
    y = pixel_norm(x)
    assert torch.allclose(y.square().mean(dim=1), torch.ones(3, 5, 5), atol=1e-5)


def test_fade_in_endpoints_exact():
    a, b = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4)
    assert torch.equal(fade_in(a, b, 0.0), a)
    assert torch.equal(fade_in(a, b, 1.0), b)
    assert torch.allclose(fade_in(a, b, 0.25), 0.75 * a + 0.25 * b, atol=1e-6)


def test_resample_box_nearest_fir():
    x = torch.arange(16.0).reshape(1, 1, 4, 4)
    assert torch.equal(downsample2d(x, mode="box")[0, 0], torch.tensor([[2.5, 4.5], [10.5, 12.5]]))
    assert torch.equal(upsample2d(x, mode="nearest")[0, 0, :2, :2], torch.zeros(2, 2))
    c = torch.ones(1, 2, 8, 8)
    # interior of FIR-resampled constants keeps the DC gain of 1
    assert torch.allclose(upsample2d(c, mode="fir")[..., 2:-2, 2:-2], torch.ones(1, 2, 12, 12))
    assert torch.allclose(downsample2d(c, mode="fir")[..., 1:-1, 1:-1], torch.ones(1, 2, 2, 2))
    assert torch.allclose(blur2d(c)[..., 2:-2, 2:-2], torch.ones(1, 2, 4, 4))
    assert upsample2d(torch.randn(2, 3, 5, 7), mode="fir").shape == (2, 3, 10, 14)


@pytest.mark.parametrize("name", ["bias_act", "pixel_norm", "minibatch_std", "fade_in"])
def test_reference_gradcheck_float64(name):
    d = dict(dtype=torch.float64, requires_grad=True)
    if name == "bias_act":
        x, b = torch.randn(3, 5, 4, 3, **d), torch.randn(5, **d)
        f, inputs = (lambda x, b: bias_act(x, b, act="lrelu", impl="ref")), (x, b)
    elif name == "pixel_norm":
        f, inputs = (lambda x: pixel_norm(x, impl="ref")), (torch.randn(2, 5, 3, 3, **d),)
    elif name == "minibatch_std":
        f, inputs = (lambda x: minibatch_std(x, 2, impl="ref")), (torch.randn(4, 3, 3, 3, **d),)
    else:
        f = lambda a, b: fade_in(a, b, 0.3, impl="ref")  # noqa: E731
        inputs = (torch.randn(2, 3, 4, 4, **d), torch.randn(2, 3, 4, 4, **d))
    assert torch.autograd.gradcheck(f, inputs)
    assert torch.autograd.gradgradcheck(f, inputs)


def test_impl_argument_validated():
    x = torch.randn(2, 3)
    with pytest.raises(ValueError, match="impl must be one of"):
        bias_act(x, impl="cuda")
