"""loss.penalty_precision: WGAN-GP and R1 with D's passes in bf16 autocast and the squared norm
in fp32, against the fp32 penalties (CPU autocast runs the same bf16 convolutions)."""
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from pggan.config import Config, ConfigError, ModelConfig, validate
from pggan.losses import gradient_penalty, r1_penalty
from pggan.nets import build_discriminator


class ConvDtypes(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.dtypes = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if "convolution" in str(func):
            self.dtypes.add(args[0].dtype)
        return func(*args, **(kwargs or {}))


@pytest.fixture(scope="module")
def D():
    torch.manual_seed(0)
    return build_discriminator(ModelConfig(max_res=16, fmap_base=64, fmap_max=16,
                                           latent_dim=8, impl="ref"))


def _penalties(D, precision, outer_autocast=False):
    g = torch.Generator().manual_seed(1)
    real = torch.randn(4, 3, 16, 16, generator=g)
    fake = torch.randn(4, 3, 16, 16, generator=g)
    eps = torch.rand(4, 1, 1, 1, generator=g)
    score = lambda x: D(x, None, 1.0)[:, 0]                         # noqa: E731
    D.zero_grad(set_to_none=True)
    with ConvDtypes() as seen:
        # The loop's phases run their forward under autocast and backward outside it.
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=outer_autocast):
            gp = gradient_penalty(score, real, fake, eps, 1.0, precision)
            r1 = r1_penalty(score, real, precision)
        (gp.sum() + r1.sum()).backward()                            # double backward
    grads = torch.cat([p.grad.flatten() for p in D.parameters() if p.grad is not None])
    return gp, r1, grads, seen.dtypes


def test_bf16_penalties_follow_fp32(D):
    gp32, r132, g32, dt32 = _penalties(D, "fp32", outer_autocast=True)
    gp16, r116, g16, dt16 = _penalties(D, "bf16")
    # fp32 turns an outer autocast off; bf16 runs D's convs (forward, input gradient, double
    # backward) in bfloat16.
    assert dt32 == {torch.float32} and torch.bfloat16 in dt16
    # The results are float32 (the squared norm is summed in fp32) and differentiable.
    for t in (gp16, r116):
        assert t.dtype == torch.float32 and t.shape == (4,) and torch.isfinite(t).all()
    # bf16 keeps 8 mantissa bits: ~0.4% per rounding, a few roundings deep through D's 7
    # convs; 5% on the penalties and their D gradients is that with margin, and still fails
    # for a wrong norm (a missing square, sqrt or target offset is off by O(1)).
    torch.testing.assert_close(gp16, gp32, rtol=5e-2, atol=1e-3)
    torch.testing.assert_close(r116, r132, rtol=5e-2, atol=1e-3)
    cos = torch.nn.functional.cosine_similarity(g16, g32, dim=0)
    assert cos > 0.99 and (g16 - g32).norm() / g32.norm() < 0.1
    assert not torch.equal(gp16, gp32)                  # bf16 really ran


def test_fp32_penalty_is_unchanged_by_an_outer_autocast(D):
    a = _penalties(D, "fp32", outer_autocast=False)
    b = _penalties(D, "fp32", outer_autocast=True)
    for x, y in zip(a[:3], b[:3]):
        assert torch.equal(x, y)


def test_precision_is_validated():
    cfg = Config()
    cfg.loss.penalty_precision = "fp16"
    with pytest.raises(ConfigError, match="penalty_precision"):
        validate(cfg)
    with pytest.raises(ValueError, match="penalty_precision"):
        r1_penalty(lambda x: x.sum((1, 2, 3)), torch.randn(2, 3, 4, 4), "fp16")
