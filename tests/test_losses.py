"""Loss terms on hand-checkable inputs, gradient penalties and their gradients, phases."""
import contextlib
import math

import pytest
import torch
import torch.nn as nn

from pggan.config import LossConfig
from pggan.stats import Collector
from pggan.losses import (GANLoss, MicroBatch, Phase, d_adversarial, d_optimizer_ratio,
                          g_adversarial, gradient_penalty, make_phases, r1_penalty)

REAL = torch.tensor([1.0, -2.0])
FAKE = torch.tensor([0.5, 3.0])


def sp(x):
    return math.log1p(math.exp(x))


@pytest.mark.parametrize("kind,d_expected,g_expected", [
    ("wgan-gp", [-0.5, 5.0], [-0.5, -3.0]),
    ("logistic-r1", [sp(0.5) + sp(-1.0), sp(3.0) + sp(2.0)], [sp(-0.5), sp(-3.0)]),
    ("lsgan", [0.125, 9.0], [0.125, 2.0]),
    ("hinge", [1.5, 7.0], [-0.5, -3.0]),
])
def test_adversarial_terms(kind, d_expected, g_expected):
    assert torch.allclose(d_adversarial(kind, REAL, FAKE), torch.tensor(d_expected),
                          rtol=1e-6, atol=0)
    assert torch.allclose(g_adversarial(kind, FAKE), torch.tensor(g_expected), rtol=1e-6, atol=0)


def test_unknown_kind_is_refused():
    with pytest.raises(ValueError, match="loss.kind"):
        d_adversarial("wasserstein", REAL, FAKE)


def linear_critic(w):
    """D(x) = <w, x> per sample: its input gradient is w everywhere."""
    return lambda x: (x * w).flatten(1).sum(1)


def test_gradient_penalty_value_and_target():
    w = torch.zeros(1, 1, 2, 2)
    w[0, 0, 0, 0], w[0, 0, 1, 1] = 2.0, math.sqrt(5.0)        # |w| = 3
    real, fake = torch.randn(5, 1, 2, 2), torch.randn(5, 1, 2, 2)
    eps = torch.rand(5, 1, 1, 1)
    gp = gradient_penalty(linear_critic(w), real, fake, eps, target=1.0)
    assert gp.shape == (5,)
    assert torch.allclose(gp, torch.full((5,), 4.0), rtol=1e-6, atol=0)   # (3 - 1)^2
    gp2 = gradient_penalty(linear_critic(w), real, fake, eps, target=2.0)
    assert torch.allclose(gp2, torch.full((5,), 0.25), rtol=1e-6, atol=0)  # (3-2)^2 / 2^2


def test_gradient_penalty_mixes_real_and_fake_by_eps():
    # D(x) = |x|^2 / 2: grad = x_hat, so the norm reveals where x_hat was taken.
    quad = lambda x: 0.5 * x.square().flatten(1).sum(1)        # noqa: E731
    real, fake = torch.zeros(3, 1, 4, 4), torch.ones(3, 1, 4, 4)
    eps = torch.tensor([0.0, 0.25, 1.0]).reshape(3, 1, 1, 1)
    gp = gradient_penalty(quad, real, fake, eps, target=1.0)
    norms = eps.flatten() * 4.0                                 # |c * ones(16)| = 4c
    assert torch.allclose(gp, (norms - 1).square(), rtol=1e-6, atol=0)


def test_gradient_penalty_gradient_reaches_the_critic():
    w = torch.tensor([[[[2.0, 0.0], [0.0, math.sqrt(5.0)]]]], requires_grad=True)
    real, fake = torch.randn(4, 1, 2, 2), torch.randn(4, 1, 2, 2)
    gp = gradient_penalty(linear_critic(w), real, fake, torch.rand(4, 1, 1, 1))
    gp.sum().backward()
    # d/dw (|w| - 1)^2 = 2 (|w| - 1) w / |w|, per sample, 4 samples.
    expected = 4 * 2 * (3.0 - 1.0) * w.detach() / 3.0
    assert torch.allclose(w.grad, expected, rtol=1e-6, atol=0)


def test_r1_value_and_gradient():
    quad = lambda x: 0.5 * x.square().flatten(1).sum(1)        # noqa: E731
    real = torch.randn(3, 2, 3, 3)
    r1 = r1_penalty(quad, real)
    assert torch.allclose(r1, real.square().flatten(1).sum(1), rtol=1e-6, atol=0)
    w = torch.tensor([[[[1.0, -2.0]]]], requires_grad=True)     # |w|^2 = 5
    r1 = r1_penalty(linear_critic(w), torch.randn(2, 1, 1, 2))
    assert torch.allclose(r1, torch.full((2,), 5.0))
    r1.sum().backward()
    assert torch.allclose(w.grad, 2 * 2 * w.detach())           # d|w|^2/dw = 2w, 2 samples


def test_penalties_run_in_float32_under_bf16_autocast():
    real, fake, eps = torch.randn(4, 3, 8, 8), torch.randn(4, 3, 8, 8), torch.rand(4, 1, 1, 1)
    critic = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Tanh(), nn.Conv2d(4, 1, 6))
    score = lambda x: critic(x).flatten()                       # noqa: E731
    ref_gp = gradient_penalty(score, real, fake, eps)
    ref_r1 = r1_penalty(score, real)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert critic(real).dtype == torch.bfloat16             # autocast is really on here
        gp = gradient_penalty(score, real.bfloat16(), fake.bfloat16(), eps)
        r1 = r1_penalty(score, real)
    assert gp.dtype == torch.float32 and r1.dtype == torch.float32
    assert torch.equal(r1, ref_r1)
    # Inputs rounded to bf16 before the penalty: same value up to that rounding only.
    ref_gp_rounded = gradient_penalty(score, real.bfloat16().float(), fake.bfloat16().float(),
                                      eps)
    assert torch.equal(gp, ref_gp_rounded)
    assert not torch.equal(gp, ref_gp)            # the rounding is visible: the check can fail


def test_phases_are_data():
    wgan = make_phases(LossConfig(kind="wgan-gp"))
    assert [(p.name, p.net, p.interval) for p in wgan] == [("D_main", "D", 1), ("G_main", "G", 1)]
    lazy = make_phases(LossConfig(kind="logistic-r1", r1_interval=16))
    assert [(p.name, p.interval, p.gain, p.r1, p.adversarial) for p in lazy] == [
        ("D_main", 1, 1.0, False, True), ("D_reg", 16, 16.0, True, False),
        ("G_main", 1, 1.0, False, True)]
    assert d_optimizer_ratio(LossConfig(kind="logistic-r1", r1_interval=16)) == 16 / 17
    assert d_optimizer_ratio(LossConfig(kind="wgan-gp", r1_interval=16)) == 1.0
    every = make_phases(LossConfig(kind="logistic-r1", r1_interval=0))
    assert [(p.name, p.r1, p.adversarial) for p in every][0] == ("D_both", True, True)
    assert d_optimizer_ratio(LossConfig(kind="logistic-r1", r1_interval=0)) == 1.0


class PixelG(nn.Module):
    """G(z) = z reshaped to a 1x2x2 image, times a learnable scale."""

    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(0.5))

    def forward(self, z, c=None, res=None, alpha=1.0):
        return (z * self.scale).reshape(-1, 1, 2, 2)


class LinearD(nn.Module):
    """D(x) = <w, x> (+ class logits = x summed times per-class weights for acgan)."""

    def __init__(self, num_classes=0):
        super().__init__()
        self.w = nn.Parameter(torch.tensor([[[[1.0, 2.0], [2.0, 4.0]]]]))   # |w| = 5
        self.k = nn.Parameter(torch.arange(1.0, num_classes + 1)) if num_classes else None

    def forward(self, x, c=None, alpha=1.0):
        score = (x * self.w).flatten(1).sum(1, keepdim=True)
        if self.k is None:
            return score
        return torch.cat([score, x.flatten(1).sum(1, keepdim=True) * self.k], dim=1)


def make_batch(num_classes=0):
    g = torch.Generator().manual_seed(1)
    return MicroBatch(real=torch.randn(3, 1, 2, 2, generator=g),
                      real_c=torch.tensor([0, 1, 1]) if num_classes else None,
                      z=torch.randn(3, 4, generator=g), gp_eps=torch.rand(3, 1, 1, 1, generator=g),
                      res=2, alpha=1.0)


def test_wgan_gp_d_loss_matches_the_formula():
    G, D, mb = PixelG(), LinearD(), make_batch()
    col = Collector()
    with col.active():
        out = GANLoss(LossConfig()).phase_loss(make_phases(LossConfig())[0], mb, G,
                                               lambda x, c, a: D(x, c, a),
                                               contextlib.nullcontext)
    real_s = (mb.real * D.w).flatten(1).sum(1)
    fake_s = (mb.z.reshape(-1, 1, 2, 2) * 0.5 * D.w).flatten(1).sum(1)
    gp = (5.0 - 1.0) ** 2                                       # linear D: |grad| = |w| = 5
    expected = (fake_s - real_s + 0.001 * real_s ** 2 + 10 * gp).mean()
    assert torch.allclose(out.loss, expected, rtol=1e-6, atol=0)
    assert torch.equal(out.real_scores, real_s.detach())
    stats = col.reduce()
    assert stats["Loss/D/gp"] == pytest.approx(16.0)
    assert stats["Scores/real"] == pytest.approx(real_s.mean().item())
    out.loss.backward()
    assert D.w.grad is not None and G.scale.grad is None        # fakes are detached for D


def test_g_loss_and_acgan_class_terms():
    G, D, mb = PixelG(), LinearD(num_classes=2), make_batch(num_classes=2)
    cfg = LossConfig(kind="logistic-r1", acgan_weight=0.5)
    loss = GANLoss(cfg, num_classes=2, cond_d="acgan")
    g_phase = make_phases(cfg)[-1]
    out = loss.phase_loss(g_phase, mb, G, lambda x, c, a: D(x, c, a), contextlib.nullcontext)
    fake = mb.z.reshape(-1, 1, 2, 2) * 0.5
    scores = (fake * D.w).flatten(1).sum(1)
    logits = fake.flatten(1).sum(1, keepdim=True) * D.k
    ce = torch.nn.functional.cross_entropy(logits, mb.real_c, reduction="none")
    expected = (torch.nn.functional.softplus(-scores) + 0.5 * ce).mean()
    assert torch.allclose(out.loss, expected, rtol=1e-6, atol=0)
    out.loss.backward()
    assert G.scale.grad is not None


def test_lazy_r1_phase_scales_by_interval():
    G, D, mb = PixelG(), LinearD(), make_batch()
    cfg = LossConfig(kind="logistic-r1", r1_gamma=2.0, r1_interval=4)
    reg = make_phases(cfg)[1]
    assert reg == Phase("D_reg", "D", 4, 4.0, adversarial=False, r1=True)
    out = GANLoss(cfg).phase_loss(reg, mb, G, lambda x, c, a: D(x, c, a),
                                  contextlib.nullcontext)
    # gamma / 2 * |w|^2 * gain = 1 * 25 * 4
    assert out.loss.item() == pytest.approx(100.0, rel=1e-6)
    assert out.real_scores is None
